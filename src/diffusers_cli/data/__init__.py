"""Datasets: shapes, MNIST, Fashion-MNIST, CIFAR-10, Stanford Cars, image folders and prepared files, as [-1, 1] tensors.

Every dataset yields ``(x, label)`` with x float32 [C, H, W] in [-1, 1]. Datasets are deterministic;
the training loop applies ``random_flip``. Bad input raises ``DataError`` with a one-line fix.
Importing this package imports no torch: the registry answers `diffuse datasets` and `--help` at
once, and the torch-using names below are imported on first use (PEP 562).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from diffusers_cli.data.registry import DATASETS
from diffusers_cli.data.spec import (
    SPLITS,
    DataError,
    DatasetInfo,
    DatasetSpec,
    LoadRequest,
    parse_image_size,
)

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from diffusers_cli.data.base import ImageFileDataset, TensorImageDataset, random_flip

__all__ = [
    "DATASETS",
    "DEFAULT_DATA_DIR",
    "SPLITS",
    "DataError",
    "DatasetInfo",
    "DatasetSpec",
    "ImageFileDataset",
    "LoadRequest",
    "TensorImageDataset",
    "class_index",
    "class_names",
    "list_datasets",
    "load_dataset",
    "parse_image_size",
    "random_flip",
    "resolve_name",
]

#: Where file-based datasets are looked for when no data_dir is given (relative to the working directory).
DEFAULT_DATA_DIR = Path("data")

# Names that need torch, numpy or PIL: imported from base on first use.
_FROM_BASE = frozenset({"ImageFileDataset", "TensorImageDataset", "random_flip", "subset_indices", "tensor_dataset"})
_SUBMODULES = frozenset({"base", "cars", "cifar", "folder", "idx", "prepared", "prepared_file", "registry", "shapes", "spec"})


def __getattr__(name: str) -> Any:
    if name in _FROM_BASE:
        return getattr(importlib.import_module(f"{__name__}.base"), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def list_datasets() -> list[dict[str, object]]:
    """One dict per dataset: name, description, natural channels and classes (None: from the files), download, aliases."""
    return [
        {
            "name": spec.name,
            "description": spec.description,
            "channels": None if spec.read_channels is not None else spec.channels,
            "num_classes": spec.num_classes,
            "download": spec.download,
            "aliases": list(spec.aliases),
        }
        for spec in DATASETS.values()
    ]


def resolve_name(name: str | Path) -> tuple[str, Path | None]:
    """(canonical dataset name, path) for a name, an alias, a path (a folder of images, a prepared file) or NAME:PATH."""
    key = str(name).strip().lower()
    if key in DATASETS:
        return key, None
    for spec in DATASETS.values():
        if key in spec.aliases:
            return spec.name, None
    # NAME:PATH (prepared:cars64.safetensors, folder:photos): the dataset named, read from that path.
    prefix, sep, rest = str(name).strip().partition(":")
    named = DATASETS.get(prefix.lower())
    if sep and rest and named is not None and named.from_path:
        return named.name, Path(rest).expanduser()
    path = Path(name)
    for spec in DATASETS.values():
        # A missing file is still this dataset: its loader then says how to make the file.
        if spec.from_path and spec.path_suffix is not None and path.suffix.lower() == spec.path_suffix and not path.is_dir():
            return spec.name, path
    if path.is_dir():
        for spec in DATASETS.values():
            if spec.from_path and spec.path_suffix is None:
                return spec.name, path
    raise DataError(f"unknown dataset {str(name)!r}: use one of {', '.join(DATASETS)}, or a path to a folder of images"
                    f" or to a file of `diffuse prepare` ({_path_suffixes()})")


def _path_suffixes() -> str:
    return ", ".join(f"{s.path_suffix}" for s in DATASETS.values() if s.path_suffix is not None)


def class_names(name: str | Path, data_dir: str | Path | None = None) -> tuple[str, ...]:
    """Class names of a dataset; cars and folders (and CIFAR-10's batches.meta.txt, if there) read ``data_dir``."""
    key, path = resolve_name(name)
    spec = DATASETS[key]
    if spec.read_class_names is not None:
        return spec.read_class_names(_root(spec, path, data_dir))
    assert spec.class_names is not None  # DatasetSpec insists on one of the two
    return spec.class_names


def class_index(label: str | int, names: Sequence[str]) -> int:
    """The index of a class given by index ("3", 3) or by name (exact, then case-insensitive); DataError otherwise."""
    text = str(label).strip()
    if text.lstrip("-").isdigit():
        i = int(text)
        if 0 <= i < len(names):
            return i
        raise DataError(f"class {i} is out of range: this model has classes 0..{len(names) - 1}")
    if text in names:
        return list(names).index(text)
    folded = [i for i, n in enumerate(names) if n.casefold() == text.casefold()]
    if len(folded) == 1:
        return folded[0]
    shown = ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")
    raise DataError(f"unknown class {text!r}: use an index 0..{len(names) - 1} or one of {shown}")


def _root(spec: DatasetSpec, path: Path | None, data_dir: str | Path | None) -> Path:
    # A folder given as the dataset name wins; a folder dataset has no default place to look.
    if path is not None:
        return path
    if data_dir is not None:
        return Path(data_dir).expanduser()
    if spec.from_path and spec.path_suffix is not None:
        raise DataError(
            f"the {spec.name} dataset needs its file: pass --dataset FILE{spec.path_suffix} (or {spec.name}:FILE)"
        )
    if spec.from_path:
        raise DataError(
            f"the {spec.name} dataset needs a folder: pass --data-dir DIR, or the folder's path as the dataset"
        )
    return DEFAULT_DATA_DIR


def _check_args(split: str, channels: int | None, num_examples: int | None) -> None:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    if channels not in (None, 1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels!r}")
    if num_examples is not None and num_examples < 1:
        raise DataError(f"num_examples must be at least 1, got {num_examples}")


def load_dataset(
    name: str | Path,
    image_size: int | tuple[int, int],
    data_dir: str | Path | None = None,
    split: str = "train",
    seed: int = 0,
    num_examples: int | None = None,
    channels: int | None = None,
    download: bool = False,
    crop_boxes: bool = False,
) -> tuple[Dataset, DatasetInfo]:
    """A dataset of (float32 [C, H, W] in [-1, 1], label) and its info; DataError on bad input.

    ``name`` is a dataset name, an alias or a path to a folder of images. ``image_size`` is a side S
    (square items) or a (height, width) pair. ``seed`` drives the shapes and the choice of a
    ``num_examples`` subset of file datasets. Folders have no splits (``split`` is ignored); shapes
    treats "all" as "train". ``crop_boxes`` crops Stanford Cars to its boxes.
    """
    key, path = resolve_name(name)
    spec = DATASETS[key]
    image_hw = parse_image_size(image_size)
    _check_args(split, channels, num_examples)
    root = _root(spec, path, data_dir)
    if channels is None:
        channels = spec.read_channels(root) if spec.read_channels is not None else spec.channels
    request = LoadRequest(
        name=key,
        root=root,
        split=split,
        image_hw=image_hw,
        channels=channels,
        seed=seed,
        num_examples=num_examples,
        download=download,
        crop_boxes=crop_boxes,
    )
    ds, names = spec.loader(request)
    info = DatasetInfo(name=key, channels=request.channels, num_classes=len(names), class_names=tuple(names), size=len(ds))
    return ds, info
