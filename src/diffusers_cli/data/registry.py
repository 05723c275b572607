"""The datasets `diffuse` knows: one DatasetSpec each in DATASETS, importable without torch.

Each loader is named by its module and function (``_lazy``) and imported only when called, so that listing
datasets, resolving names and `--help` texts never import torch, numpy or PIL.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable

from diffusers_cli.data import fixed_names as names
from diffusers_cli.data.spec import DatasetSpec


def _lazy(module: str, function: str) -> Callable[..., Any]:
    """``diffusers_cli.data.<module>.<function>``, imported when first called (the module may import torch)."""

    def call(*args: Any) -> Any:
        return getattr(importlib.import_module(f"diffusers_cli.data.{module}"), function)(*args)

    call.__name__ = call.__qualname__ = f"{module}.{function}"
    return call


def _prepared_class_names(path: Path) -> tuple[str, ...]:
    from diffusers_cli.data import prepared_file

    return prepared_file.read_header(path).class_names


def _prepared_channels(path: Path) -> int:
    from diffusers_cli.data import prepared_file

    return prepared_file.read_header(path).channels


SHAPES = DatasetSpec(
    name="shapes",
    description="coloured circles, squares, triangles, crosses and rings, generated in-process at any size (offline)",
    channels=3,
    class_names=names.SHAPES,
    download="not needed",
    loader=_lazy("shapes", "load"),
)
MNIST = DatasetSpec(
    name="mnist",
    description="handwritten digits 0-9, 28x28 greyscale; IDX files in --data-dir (60k train, 10k test)",
    channels=1,
    class_names=names.DIGITS,
    download="--download",
    loader=_lazy("idx", "load"),
)
FASHION_MNIST = DatasetSpec(
    name="fashion-mnist",
    aliases=("fashion_mnist", "fashionmnist"),
    description="Zalando clothing, 10 classes, 28x28 greyscale; IDX files in --data-dir (60k train, 10k test)",
    channels=1,
    class_names=names.FASHION_MNIST,
    download="--download",
    loader=_lazy("idx", "load"),
)
CIFAR10 = DatasetSpec(
    name="cifar10",
    aliases=("cifar-10", "cifar_10"),
    description="32x32 colour photos, 10 classes; the binary version in --data-dir (50k train, 10k test)",
    channels=3,
    class_names=names.CIFAR10,
    read_class_names=_lazy("cifar", "data_dir_class_names"),
    download="--download",
    loader=_lazy("cifar", "load"),
)
CARS = DatasetSpec(
    name="cars",
    aliases=("stanford-cars", "stanford_cars", "stanfordcars"),
    description="Stanford Cars, 196 car models, colour photos; devkit layout or class subfolders in --data-dir",
    channels=3,
    num_classes=196,
    read_class_names=_lazy("cars", "cars_class_names"),
    download="by hand only",
    loader=_lazy("cars", "load"),
)
FOLDER = DatasetSpec(
    name="folder",
    aliases=("images",),
    description="any folder of images (png, jpg, bmp, webp, gif), recursive; subfolders are classes",
    channels=3,
    read_class_names=_lazy("folder", "folder_class_names"),
    download="not applicable",
    loader=_lazy("folder", "load"),
    from_path=True,
)
PREPARED = DatasetSpec(
    name="prepared",
    description="a file of `diffuse prepare`: any dataset above decoded once to uint8 at one size "
                "(--dataset FILE.safetensors or prepared:FILE)",
    channels=3,
    read_channels=_prepared_channels,
    read_class_names=_prepared_class_names,
    download="not applicable",
    loader=_lazy("prepared", "load"),
    from_path=True,
    path_suffix=".safetensors",
)

#: Every dataset by canonical name, in the order `diffuse datasets` lists them.
DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec for spec in (SHAPES, MNIST, FASHION_MNIST, CIFAR10, CARS, FOLDER, PREPARED)
}
