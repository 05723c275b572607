"""Any folder of images, searched recursively; first-level subfolders are the classes when every image lies in one."""

from __future__ import annotations

from pathlib import Path

from diffusers_cli.data.base import DataError, ImageFileDataset, ImageSize, subset_indices
from diffusers_cli.data.spec import Loaded, LoadRequest
from diffusers_cli.support.image_files import ImageError, image_size

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif"})
SINGLE_CLASS = "all"


def list_images(root: Path) -> list[Path]:
    """Image files under ``root``, recursively, sorted; hidden files and folders are skipped."""
    found = []
    for path in root.rglob("*"):
        rel = path.relative_to(root).parts
        if path.suffix.lower() in IMAGE_SUFFIXES and not any(p.startswith(".") for p in rel) and path.is_file():
            found.append(path)
    return sorted(found)


def classes_of(root: Path, images: list[Path]) -> tuple[tuple[str, ...], list[int]]:
    """Class names (sorted first-level subfolders, or ("all",)) and each image's label."""
    tops = [p.relative_to(root).parts for p in images]
    if all(len(parts) >= 2 for parts in tops):
        names = tuple(sorted({parts[0] for parts in tops}))
        index = {n: i for i, n in enumerate(names)}
        return names, [index[parts[0]] for parts in tops]
    return (SINGLE_CLASS,), [0] * len(images)


def check_headers(images: list[Path]) -> None:
    """Read each file's header, so that a file that is not an image, or one over the pixel limit, fails now, by name.

    Pixel data is decoded only when an item is read: data cut short fails then (still naming the file), since
    decoding every file up front would double the reading of a large folder.
    """
    for path in images:
        try:
            image_size(path, what="dataset image")
        except ImageError as err:
            raise DataError(f"{err}; remove or replace the file") from None


def folder_dataset(
    root: Path,
    image_size: ImageSize,
    channels: int,
) -> tuple[ImageFileDataset, tuple[str, ...]]:
    """A lazily read dataset of every image under ``root`` and its class names."""
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist; pass an existing folder of images")
    images = list_images(root)
    if not images:
        suffixes = ", ".join(sorted(s.lstrip(".") for s in IMAGE_SUFFIXES))
        raise DataError(f"no images ({suffixes}) found under {root}; put images there, or in one subfolder per class")
    check_headers(images)
    names, labels = classes_of(root, images)
    return ImageFileDataset(images, labels, image_size, channels), names


def folder_class_names(root: Path) -> tuple[str, ...]:
    """Class names of an image folder without opening any image."""
    images = list_images(root)
    if not images:
        raise DataError(f"no images found under {root}; put images there, or in one subfolder per class")
    return classes_of(root, images)[0]


def load(request: LoadRequest) -> Loaded:
    """The registry's loader: every image under the folder (or a seeded subset); folders have no splits."""
    files, names = folder_dataset(request.root, request.image_hw, request.channels)
    return files.subset(subset_indices(len(files), request.num_examples, request.seed, "the folder")), names
