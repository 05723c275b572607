"""CIFAR-10 (Krizhevsky 2009) from its binary version only (records of 1 label + 3072 pixel bytes); never unpickled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from diffusers_cli.data.base import DataError, tensor_dataset
from diffusers_cli.data import fixed_names
from diffusers_cli.data.spec import Loaded, LoadRequest

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
BIN_DIR = "cifar-10-batches-bin"
PY_DIR = "cifar-10-batches-py"
#: The standard ten, written in the registry entry; batches.meta.txt may rename them.
CLASSES: tuple[str, ...] = fixed_names.CIFAR10
RECORD = 1 + 3 * 32 * 32
FILES = {"train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test": ("test_batch.bin",)}

_PARENTS = (".", "cifar10", "cifar-10")


def find_folder(data_dir: Path) -> Path | None:
    """The folder with the binary batches: data_dir itself, or a cifar-10-batches-bin below it."""
    for parent in _PARENTS:
        for folder in (data_dir / parent / BIN_DIR, data_dir / parent):
            if any((folder / f).is_file() for files in FILES.values() for f in files):
                return folder.resolve()
    return None


def _find_pickled(data_dir: Path) -> Path | None:
    for parent in _PARENTS:
        folder = data_dir / parent / PY_DIR
        if folder.is_dir():
            return folder
    return None


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 3, 32, 32], labels uint8 [N]) of one binary batch file."""
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise DataError(f"cannot read {path} ({err}); fetch {URL} again") from None
    if raw.size == 0 or raw.size % RECORD:
        raise DataError(
            f"{path} is truncated or corrupt: {raw.size} bytes is not a whole number of "
            f"{RECORD}-byte records; fetch {URL} again"
        )
    records = raw.reshape(-1, RECORD)
    labels = records[:, 0]
    if int(labels.max()) > 9:
        raise DataError(f"{path} has label {int(labels.max())}; labels must be 0-9 (is this the CIFAR-100 file?)")
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def read_class_names(folder: Path) -> tuple[str, ...]:
    """Names from batches.meta.txt when it is there and lists ten; the standard ten otherwise."""
    meta = folder / "batches.meta.txt"
    if meta.is_file():
        names = tuple(line.strip() for line in meta.read_text(errors="replace").splitlines() if line.strip())
        if len(names) == len(CLASSES):
            return names
    return CLASSES


def data_dir_class_names(data_dir: Path) -> tuple[str, ...]:
    """The class names for ``data_dir``: its batches.meta.txt if the batches are there, the standard ten otherwise."""
    folder = find_folder(data_dir)
    return read_class_names(folder) if folder is not None else CLASSES


def fetch_archive(url: str, folder: Path, md5: str) -> None:
    """torchvision's checked download and unpacking, imported only when needed (it is slow to import)."""
    from torchvision.datasets.utils import download_and_extract_archive

    download_and_extract_archive(url, download_root=str(folder), md5=md5)


def download(data_dir: Path) -> None:
    """Fetch and unpack the binary archive into data_dir; DataError on failure."""
    try:
        fetch_archive(URL, data_dir, MD5)
    except Exception as err:  # URLError, HTTPError, OSError, a failed checksum...
        raise DataError(
            f"could not download CIFAR-10 ({err}); get {URL} by hand and unpack it in {data_dir} "
            f"so that {data_dir / BIN_DIR / 'data_batch_1.bin'} exists"
        ) from None


def _missing_message(data_dir: Path, split: str, folder: Path | None) -> str:
    wanted = ["train", "test"] if split == "all" else [split]
    names = ", ".join(f for s in wanted for f in FILES[s])
    where = folder if folder is not None else data_dir / BIN_DIR
    present = [s for s in ("train", "test") if folder is not None and _has_split(folder, s)]
    if present:
        hint = f"; only the {present[0]} split is there: use --split {present[0]}"
    else:
        hint = f" (unpack {URL} in {data_dir}), or pass --download"
    return f"cifar10 {split} split not found: expected {names} in {where}{hint}"


def _has_split(folder: Path, split: str) -> bool:
    return all((folder / f).is_file() for f in FILES[split])


def load_cifar10(
    data_dir: Path,
    split: str,
    download_ok: bool,
) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """uint8 images [N, 3, 32, 32], int64 labels [N] and the class names of CIFAR-10."""
    wanted = ["train", "test"] if split == "all" else [split]
    folder = find_folder(data_dir)
    if (folder is None or not all(_has_split(folder, s) for s in wanted)) and download_ok:
        download(data_dir)
        folder = find_folder(data_dir)
    if folder is None:
        pickled = _find_pickled(data_dir)
        if pickled is not None:
            raise DataError(
                f"found the python version of CIFAR-10 at {pickled}, which is pickled and never read here "
                f"(unpickling runs code); get the binary version {URL} and unpack it in {data_dir}"
            )
    if folder is None or not all(_has_split(folder, s) for s in wanted):
        raise DataError(_missing_message(data_dir, split, folder))
    parts = [read_batch(folder / f) for s in wanted for f in FILES[s]]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64)), read_class_names(folder)


def load(request: LoadRequest) -> Loaded:
    """The registry's loader: the split, subset, converted and resized, and its class names."""
    images, labels, names = load_cifar10(request.root, request.split, request.download)
    what = f"cifar10 {request.split}"
    ds = tensor_dataset(images, labels, request.image_hw, request.channels, request.num_examples, request.seed, what)
    return ds, names
