"""Stanford Cars (Krause et al. 2013): the original devkit layout (.mat annotations), or one subfolder per class."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from diffusers_cli.data.base import DataError, ImageFileDataset, ImageSize, subset_indices
from diffusers_cli.data.folder import list_images
from diffusers_cli.data.spec import Loaded, LoadRequest

Box = tuple[int, int, int, int]  # x1, y1, x2, y2

_ROOTS = (".", "stanford_cars", "stanford-cars", "cars", "car_data/car_data", "car_data")
_TEST_ANNOS = "cars_test_annos_withlabels.mat"
_MIRROR = "https://www.kaggle.com/datasets/eduardo4jesus/stanford-cars-dataset"

HOW_TO_GET = (
    "Stanford Cars has no working download: get it by hand (e.g. " + _MIRROR + ") and put cars_train/, "
    "cars_test/, devkit/cars_meta.mat, devkit/cars_train_annos.mat and " + _TEST_ANNOS + " in {root}, "
    "or one subfolder per class under {root}/train/ and {root}/test/"
)


def not_found_message(data_dir: Path, what: str) -> str:
    """``what``, then how to obtain Stanford Cars and where to put it."""
    return f"{what}: " + HOW_TO_GET.format(root=data_dir / "stanford_cars")


def _load_mat(path: Path) -> dict[str, Any]:
    from scipy.io import loadmat

    try:
        return loadmat(str(path), squeeze_me=True)
    except Exception as err:  # scipy raises ValueError, TypeError, MatReadError... on a bad file
        raise DataError(f"cannot read {path} ({err}); fetch the Stanford Cars devkit again") from None


def _field(mat: dict[str, Any], path: Path, key: str) -> Any:
    if key not in mat:
        raise DataError(f"{path} has no '{key}' entry; is it the Stanford Cars devkit file?")
    return mat[key]


def read_meta(path: Path) -> tuple[str, ...]:
    """The class names of devkit/cars_meta.mat."""
    names = np.atleast_1d(_field(_load_mat(path), path, "class_names"))
    return tuple(str(n).strip() for n in names)


def read_annotations(path: Path, num_classes: int) -> tuple[list[str], list[int], list[Box] | None]:
    """File names, 0-based labels and (if present) bounding boxes x1, y1, x2, y2 of an annotations .mat."""
    annos = np.atleast_1d(_field(_load_mat(path), path, "annotations"))
    fields = annos.dtype.names or ()
    for key in ("fname", "class"):
        if key not in fields:
            raise DataError(f"{path} annotations have no '{key}' field; use {_TEST_ANNOS} for the test split")
    names = [str(v) for v in annos["fname"]]
    labels = [int(v) - 1 for v in annos["class"]]
    bad = [v for v in labels if not 0 <= v < num_classes]
    if bad:
        raise DataError(f"{path} has class {bad[0] + 1}, outside 1..{num_classes} of cars_meta.mat")
    box_keys = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")
    boxes = None
    if all(k in fields for k in box_keys):
        cols = [[int(v) for v in annos[k]] for k in box_keys]
        boxes = list(zip(*cols))
    return names, labels, boxes


def _devkit_root(data_dir: Path) -> Path | None:
    for sub in _ROOTS:
        if (data_dir / sub / "devkit" / "cars_meta.mat").is_file():
            return (data_dir / sub).resolve()
    return None


def _class_folder_root(data_dir: Path) -> Path | None:
    for sub in _ROOTS:
        root = data_dir / sub
        if any((root / s).is_dir() and any(p.is_dir() for p in (root / s).iterdir()) for s in ("train", "test")):
            return root.resolve()
    return None


def _annotations_file(root: Path, split: str) -> Path:
    if split == "train":
        path = root / "devkit" / "cars_train_annos.mat"
        if not path.is_file():
            raise DataError(f"Stanford Cars train labels missing: put cars_train_annos.mat in {root / 'devkit'}")
        return path
    for path in (root / _TEST_ANNOS, root / "devkit" / _TEST_ANNOS):
        if path.is_file():
            return path
    raise DataError(
        f"Stanford Cars test labels missing: put {_TEST_ANNOS} (e.g. from {_MIRROR}) in {root}, or use --split train"
    )


def _devkit_split(
    root: Path,
    split: str,
    num_classes: int,
) -> tuple[list[Path], list[int], list[Box] | None]:
    annos = _annotations_file(root, split)
    image_dir = root / f"cars_{split}"
    if not image_dir.is_dir():
        raise DataError(f"Stanford Cars {split} images missing: put the cars_{split}/*.jpg files in {image_dir}")
    files, labels, boxes = read_annotations(annos, num_classes)
    paths = [image_dir / f for f in files]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"{len(missing)} Stanford Cars images listed in {annos.name} are missing, e.g. {missing[0]}")
    return paths, labels, boxes


def _folder_names(root: Path) -> tuple[str, ...]:
    # The union over both splits, so that train and test labels agree.
    splits = [root / s for s in ("train", "test") if (root / s).is_dir()]
    return tuple(sorted({p.name for s in splits for p in s.iterdir() if p.is_dir()}))


def _folder_split(root: Path, split: str) -> tuple[list[Path], list[int], tuple[str, ...]]:
    splits = ["train", "test"] if split == "all" else [split]
    names = _folder_names(root)
    index = {n: i for i, n in enumerate(names)}
    paths: list[Path] = []
    labels: list[int] = []
    for s in splits:
        if not (root / s).is_dir():
            raise DataError(f"Stanford Cars {s} split missing: expected one subfolder per class in {root / s}")
        for p in list_images(root / s):
            rel = p.relative_to(root / s).parts
            if len(rel) >= 2:
                paths.append(p)
                labels.append(index[rel[0]])
    if not paths:
        raise DataError(f"no images in the class subfolders of {root}; " + HOW_TO_GET.format(root=root))
    return paths, labels, names


def load_cars(
    data_dir: Path,
    split: str,
    image_size: ImageSize,
    channels: int,
    crop_boxes: bool,
) -> tuple[ImageFileDataset, tuple[str, ...]]:
    """A lazily read Stanford Cars split and the 196 class names."""
    root = _devkit_root(data_dir)
    if root is not None:
        names = read_meta(root / "devkit" / "cars_meta.mat")
        splits = ["train", "test"] if split == "all" else [split]
        paths: list[Path] = []
        labels: list[int] = []
        boxes: list[Box] | None = []
        for s in splits:
            p, lab, b = _devkit_split(root, s, len(names))
            paths += p
            labels += lab
            boxes = None if boxes is None or b is None else boxes + b
        if crop_boxes and boxes is None:
            raise DataError("the Stanford Cars annotations have no bounding boxes; train without box cropping")
        # Devkit boxes are 1-based and inclusive; PIL's crop boxes are 0-based with exclusive ends.
        crops = [(x1 - 1, y1 - 1, x2, y2) for x1, y1, x2, y2 in boxes] if crop_boxes and boxes else None
        return ImageFileDataset(paths, labels, image_size, channels, crops), names
    root = _class_folder_root(data_dir)
    if root is not None:
        paths, labels, names = _folder_split(root, split)
        return ImageFileDataset(paths, labels, image_size, channels), names
    raise DataError(not_found_message(data_dir, f"Stanford Cars not found under {data_dir}"))


def cars_class_names(data_dir: Path) -> tuple[str, ...]:
    """The class names of Stanford Cars under ``data_dir``, read without listing the images."""
    root = _devkit_root(data_dir)
    if root is not None:
        return read_meta(root / "devkit" / "cars_meta.mat")
    root = _class_folder_root(data_dir)
    if root is not None:
        return _folder_names(root)
    raise DataError(not_found_message(data_dir, f"Stanford Cars not found under {data_dir}"))


def load(request: LoadRequest) -> Loaded:
    """The registry's loader: a lazily read split (or seeded subset of it) and the class names."""
    if request.download:
        raise DataError(not_found_message(request.root, "Stanford Cars cannot be downloaded"))
    files, names = load_cars(request.root, request.split, request.image_hw, request.channels, request.crop_boxes)
    keep = subset_indices(len(files), request.num_examples, request.seed, f"cars {request.split}")
    return files.subset(keep), names
