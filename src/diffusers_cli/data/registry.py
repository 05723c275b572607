"""The datasets `diffuse` knows: one DatasetSpec each in DATASETS, importable without torch.

Each loader is a three-line trampoline that imports its dataset's module only when called, so that
listing datasets, resolving names and `--help` texts never import torch, numpy or PIL.
"""

from __future__ import annotations

from pathlib import Path

from diffusers_cli.data import fixed_names as names
from diffusers_cli.data.spec import DatasetSpec, Loaded, LoadRequest


def _load_shapes(request: LoadRequest) -> Loaded:
    from diffusers_cli.data import shapes

    return shapes.load(request)


def _load_idx(request: LoadRequest) -> Loaded:
    from diffusers_cli.data import idx

    return idx.load(request)


def _load_cifar10(request: LoadRequest) -> Loaded:
    from diffusers_cli.data import cifar

    return cifar.load(request)


def _cifar10_class_names(root: Path) -> tuple[str, ...]:
    from diffusers_cli.data import cifar

    return cifar.data_dir_class_names(root)


def _load_cars(request: LoadRequest) -> Loaded:
    from diffusers_cli.data import cars

    return cars.load(request)


def _cars_class_names(root: Path) -> tuple[str, ...]:
    from diffusers_cli.data import cars

    return cars.cars_class_names(root)


def _load_folder(request: LoadRequest) -> Loaded:
    from diffusers_cli.data import folder

    return folder.load(request)


def _folder_class_names(root: Path) -> tuple[str, ...]:
    from diffusers_cli.data import folder

    return folder.folder_class_names(root)


def _load_prepared(request: LoadRequest) -> Loaded:
    from diffusers_cli.data import prepared

    return prepared.load(request)


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
    loader=_load_shapes,
)
MNIST = DatasetSpec(
    name="mnist",
    description="handwritten digits 0-9, 28x28 greyscale; IDX files in --data-dir (60k train, 10k test)",
    channels=1,
    class_names=names.DIGITS,
    download="--download",
    loader=_load_idx,
)
FASHION_MNIST = DatasetSpec(
    name="fashion-mnist",
    aliases=("fashion_mnist", "fashionmnist"),
    description="Zalando clothing, 10 classes, 28x28 greyscale; IDX files in --data-dir (60k train, 10k test)",
    channels=1,
    class_names=names.FASHION_MNIST,
    download="--download",
    loader=_load_idx,
)
CIFAR10 = DatasetSpec(
    name="cifar10",
    aliases=("cifar-10", "cifar_10"),
    description="32x32 colour photos, 10 classes; the binary version in --data-dir (50k train, 10k test)",
    channels=3,
    class_names=names.CIFAR10,
    read_class_names=_cifar10_class_names,
    download="--download",
    loader=_load_cifar10,
)
CARS = DatasetSpec(
    name="cars",
    aliases=("stanford-cars", "stanford_cars", "stanfordcars"),
    description="Stanford Cars, 196 car models, colour photos; devkit layout or class subfolders in --data-dir",
    channels=3,
    num_classes=196,
    read_class_names=_cars_class_names,
    download="by hand only",
    loader=_load_cars,
)
FOLDER = DatasetSpec(
    name="folder",
    aliases=("images",),
    description="any folder of images (png, jpg, bmp, webp, gif), recursive; subfolders are classes",
    channels=3,
    read_class_names=_folder_class_names,
    download="not applicable",
    loader=_load_folder,
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
    loader=_load_prepared,
    from_path=True,
    path_suffix=".safetensors",
)

#: Every dataset by canonical name, in the order `diffuse datasets` lists them.
DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec for spec in (SHAPES, MNIST, FASHION_MNIST, CIFAR10, CARS, FOLDER, PREPARED)
}
