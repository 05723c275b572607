"""Datasets: generated shapes, MNIST, Fashion-MNIST, CIFAR-10, Stanford Cars and image folders, as [-1, 1] tensors.

Every dataset yields ``(x, label)`` with x float32 [C, S, S] in [-1, 1]. Datasets are deterministic;
the training loop applies ``random_flip``. Bad input raises ``DataError`` with a one-line fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from torch.utils.data import Dataset

from diffusers_cli.data import cars, cifar, folder, idx, shapes
from diffusers_cli.data.base import (
    DataError,
    DatasetInfo,
    ImageFileDataset,
    TensorImageDataset,
    random_flip,
    subset_indices,
    tensor_dataset,
)

__all__ = [
    "DATASETS",
    "DEFAULT_DATA_DIR",
    "DataError",
    "DatasetInfo",
    "ImageFileDataset",
    "TensorImageDataset",
    "class_index",
    "class_names",
    "list_datasets",
    "load_dataset",
    "random_flip",
    "resolve_name",
]

DATASETS: tuple[str, ...] = ("shapes", "mnist", "fashion-mnist", "cifar10", "cars", "folder")
SPLITS: tuple[str, ...] = ("train", "test", "all")
#: Where file-based datasets are looked for when no data_dir is given (relative to the working directory).
DEFAULT_DATA_DIR = Path("data")

_ALIASES = {
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "cifar_10": "cifar10",
    "stanford-cars": "cars",
    "stanford_cars": "cars",
    "stanfordcars": "cars",
    "images": "folder",
}

_DESCRIPTIONS = {
    "shapes": "coloured circles, squares, triangles, crosses and rings, generated in-process at any size (offline)",
    "mnist": "handwritten digits 0-9, 28x28 greyscale; IDX files in --data-dir (60k train, 10k test)",
    "fashion-mnist": "Zalando clothing, 10 classes, 28x28 greyscale; IDX files in --data-dir (60k train, 10k test)",
    "cifar10": "32x32 colour photos, 10 classes; the binary version in --data-dir (50k train, 10k test)",
    "cars": "Stanford Cars, 196 car models, colour photos; devkit layout or class subfolders in --data-dir",
    "folder": "any folder of images (png, jpg, bmp, webp, gif), recursive; subfolders are classes",
}

_NATURAL_CHANNELS = {"shapes": 3, "mnist": 1, "fashion-mnist": 1, "cifar10": 3, "cars": 3, "folder": 3}
_DOWNLOAD = {
    "shapes": "not needed",
    "mnist": "--download",
    "fashion-mnist": "--download",
    "cifar10": "--download",
    "cars": "by hand only",
    "folder": "not applicable",
}
#: Class counts known before reading files; None: read from the folder.
_FILE_CLASSES = {"cars": 196, "folder": None}


def list_datasets() -> list[dict[str, object]]:
    """One dict per dataset: name, description, natural channels, number of classes (None: from the files), download."""
    out = []
    for name in DATASETS:
        classes = _static_class_names(name)
        out.append({
            "name": name,
            "description": _DESCRIPTIONS[name],
            "channels": _NATURAL_CHANNELS[name],
            "num_classes": len(classes) if classes is not None else _FILE_CLASSES.get(name),
            "download": _DOWNLOAD[name],
        })
    return out


def resolve_name(name: str | Path) -> tuple[str, Path | None]:
    """(canonical dataset name, folder) for a name, an alias, or a path to a folder of images."""
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key in DATASETS:
        return key, None
    if Path(name).is_dir():
        return "folder", Path(name)
    raise DataError(f"unknown dataset {str(name)!r}: use one of {', '.join(DATASETS)}, or a path to a folder of images")


def _static_class_names(name: str) -> tuple[str, ...] | None:
    return {
        "shapes": shapes.CLASS_NAMES,
        "mnist": idx.DIGITS,
        "fashion-mnist": idx.FASHION_CLASSES,
        "cifar10": cifar.CLASSES,
    }.get(name)


def class_names(name: str | Path, data_dir: str | Path | None = None) -> tuple[str, ...]:
    """Class names of a dataset; cars and folders (and CIFAR-10's batches.meta.txt, if there) read ``data_dir``."""
    key, path = resolve_name(name)
    root = Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR
    if key == "cifar10":
        found = cifar.find_folder(root)
        return cifar.read_class_names(found) if found is not None else cifar.CLASSES
    static = _static_class_names(key)
    if static is not None:
        return static
    if key == "cars":
        return cars.cars_class_names(root)
    return folder.folder_class_names(_folder_root(path, data_dir))


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


def _folder_root(path: Path | None, data_dir: str | Path | None) -> Path:
    if path is not None:
        return path
    if data_dir is None:
        raise DataError("the folder dataset needs a folder: pass --data-dir DIR, or the folder's path as the dataset")
    return Path(data_dir)


def _check_args(image_size: int, split: str, channels: int | None) -> None:
    if not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise DataError(f"image size must be a positive integer, got {image_size!r}")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    if channels not in (None, 1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels!r}")


def load_dataset(
    name: str | Path,
    image_size: int,
    data_dir: str | Path | None = None,
    split: str = "train",
    seed: int = 0,
    num_examples: int | None = None,
    channels: int | None = None,
    download: bool = False,
    crop_boxes: bool = False,
) -> tuple[Dataset, DatasetInfo]:
    """A dataset of (float32 [C, S, S] in [-1, 1], label) and its info; DataError on bad input.

    ``name`` is a dataset name or a path to a folder of images. ``seed`` drives the shapes and the
    choice of a ``num_examples`` subset of file datasets. Folders have no splits (``split`` is
    ignored); shapes treats "all" as "train". ``crop_boxes`` crops Stanford Cars to its boxes.
    """
    key, path = resolve_name(name)
    _check_args(image_size, split, channels)
    c = channels if channels is not None else _NATURAL_CHANNELS[key]
    root = Path(data_dir).expanduser() if data_dir is not None else DEFAULT_DATA_DIR
    ds: Dataset
    if key == "shapes":
        n = shapes.DEFAULT_SIZE if num_examples is None else num_examples
        if n < 1:
            raise DataError(f"num_examples must be at least 1, got {n}")
        images, labels = shapes.make_shapes(image_size, seed, split, n)
        ds, names = tensor_dataset(images, labels, image_size, c, None, seed, key), shapes.CLASS_NAMES
    elif key in ("mnist", "fashion-mnist"):
        images, labels = idx.load_idx_dataset(key, root, split, download)
        ds = tensor_dataset(images, labels, image_size, c, num_examples, seed, f"{key} {split}")
        names = _static_class_names(key) or ()
    elif key == "cifar10":
        images, labels, names = cifar.load_cifar10(root, split, download)
        ds = tensor_dataset(images, labels, image_size, c, num_examples, seed, f"cifar10 {split}")
    elif key == "cars":
        if download:
            raise DataError(cars.not_found_message(root, "Stanford Cars cannot be downloaded"))
        files, names = cars.load_cars(root, split, image_size, c, crop_boxes)
        ds = files.subset(subset_indices(len(files), num_examples, seed, f"cars {split}"))
    else:
        files, names = folder.folder_dataset(_folder_root(path, data_dir), image_size, c)
        ds = files.subset(subset_indices(len(files), num_examples, seed, "the folder"))
    info = DatasetInfo(name=key, channels=c, num_classes=len(names), class_names=tuple(names), size=len(ds))
    return ds, info

