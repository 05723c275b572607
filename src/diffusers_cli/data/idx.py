"""MNIST and Fashion-MNIST (LeCun et al. 1998; Xiao et al. 2017) from IDX files, gzipped or not, parsed with numpy."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from diffusers_cli.data.base import DataError, tensor_dataset
from diffusers_cli.data import fixed_names
from diffusers_cli.data.spec import Loaded, LoadRequest

FASHION_CLASSES: tuple[str, ...] = fixed_names.FASHION_MNIST
DIGITS: tuple[str, ...] = fixed_names.DIGITS

#: Where the files may lie under --data-dir (the first with any of them wins), where to get them, and
#: their checksums (as torchvision lists them).
SOURCES: dict[str, dict[str, object]] = {
    "mnist": {
        "classes": DIGITS,
        "dirs": (".", "mnist", "MNIST/raw", "MNIST"),
        "url": "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "mirrors": ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        "md5": {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    },
    "fashion-mnist": {
        "classes": FASHION_CLASSES,
        "dirs": (".", "fashion-mnist", "fashion_mnist", "FashionMNIST/raw", "FashionMNIST"),
        "url": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "mirrors": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        "md5": {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    },
}

_PREFIX = {"train": "train", "test": "t10k"}
_UBYTE = 0x08


def file_names(split: str) -> tuple[str, str]:
    """The IDX (images, labels) base names of a split, without ".gz"."""
    p = _PREFIX[split]
    return f"{p}-images-idx3-ubyte", f"{p}-labels-idx1-ubyte"


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes with ``ndim`` dimensions as a uint8 array; DataError if it is not one."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path} is corrupt or truncated ({err}); delete it and fetch it again") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _UBYTE or raw[3] != ndim:
        raise DataError(
            f"{path} is not an IDX file of {ndim}-d unsigned bytes (magic {raw[:4].hex() or 'missing'}, "
            f"expected 0000080{ndim}); delete it and fetch it again"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated inside its header; delete it and fetch it again")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    want = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != want:
        raise DataError(
            f"{path} is truncated or corrupt: its header {dims} needs {want} bytes of data, "
            f"found {len(raw) - header}; delete it and fetch it again"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def find_file(folder: Path, base: str) -> Path | None:
    """``base`` or ``base.gz`` in ``folder``, whichever exists."""
    for name in (base, base + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def find_folder(name: str, data_dir: Path) -> Path | None:
    """The first candidate folder under ``data_dir`` holding any of the dataset's IDX files."""
    for sub in SOURCES[name]["dirs"]:  # type: ignore[union-attr]
        folder = (data_dir / str(sub)).resolve()
        if any(find_file(folder, base) for split in _PREFIX for base in file_names(split)):
            return folder
    return None


def read_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels uint8 [N]) of one split in ``folder``."""
    img_base, lab_base = file_names(split)
    img_path, lab_path = find_file(folder, img_base), find_file(folder, lab_base)
    assert img_path is not None and lab_path is not None
    images, labels = read_idx(img_path, 3), read_idx(lab_path, 1)
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{img_path} has {images.shape[0]} images but {lab_path} has {labels.shape[0]} labels")
    if labels.size and int(labels.max()) > 9:
        raise DataError(f"{lab_path} has label {int(labels.max())}; labels must be 0-9")
    return images, labels


def _has_split(folder: Path, split: str) -> bool:
    return all(find_file(folder, base) is not None for base in file_names(split))


def _missing_message(name: str, data_dir: Path, split: str, folder: Path | None) -> str:
    url = SOURCES[name]["url"]
    wanted = ["train", "test"] if split == "all" else [split]
    files = ", ".join(f"{b}[.gz]" for s in wanted for b in file_names(s))
    where = folder if folder is not None else data_dir / str(SOURCES[name]["dirs"][1])  # type: ignore[index]
    present = [s for s in ("train", "test") if folder is not None and _has_split(folder, s)]
    hint = f"; only the {present[0]} split is there: use --split {present[0]}" if present else "; or pass --download"
    return f"{name} {split} split not found: put {files} (from {url}) in {where}{hint}"


def fetch_file(url: str, folder: Path, filename: str, md5: str) -> None:
    """torchvision's checked download of one file, imported only when needed (it is slow to import)."""
    from torchvision.datasets.utils import download_url

    download_url(url, root=str(folder), filename=filename, md5=md5)


def download(name: str, data_dir: Path) -> Path:
    """Fetch the dataset's four gzipped IDX files into data_dir/<name>; DataError on failure."""
    source = SOURCES[name]
    target = data_dir / str(source["dirs"][1])  # type: ignore[index]
    for filename, md5 in source["md5"].items():  # type: ignore[union-attr]
        if (target / filename).is_file():
            continue
        errors = []
        for mirror in source["mirrors"]:  # type: ignore[union-attr]
            try:
                fetch_file(mirror + filename, target, filename, md5)
                break
            except Exception as err:  # network errors come in many types (URLError, HTTPError, OSError...)
                errors.append(f"{mirror}: {err}")
        else:
            raise DataError(
                f"could not download {name} ({'; '.join(errors)}); put the four IDX files from "
                f"{source['url']} in {target} by hand"
            )
    return target


def load_idx_dataset(name: str, data_dir: Path, split: str, download_ok: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [N, 1, 28, 28] and int64 labels [N] of MNIST or Fashion-MNIST."""
    folder = find_folder(name, data_dir)
    wanted = ["train", "test"] if split == "all" else [split]
    if (folder is None or not all(_has_split(folder, s) for s in wanted)) and download_ok:
        folder = download(name, data_dir)
    if folder is None or not all(_has_split(folder, s) for s in wanted):
        raise DataError(_missing_message(name, data_dir, split, folder))
    parts = [read_split(folder, s) for s in wanted]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def load(request: LoadRequest) -> Loaded:
    """The registry's loader for every dataset in SOURCES: the split, subset, converted and resized."""
    images, labels = load_idx_dataset(request.name, request.root, request.split, request.download)
    what = f"{request.name} {request.split}"
    ds = tensor_dataset(images, labels, request.image_hw, request.channels, request.num_examples, request.seed, what)
    return ds, tuple(SOURCES[request.name]["classes"])  # type: ignore[arg-type]
