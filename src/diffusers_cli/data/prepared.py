"""Prepared datasets: writing a dataset's uint8 pixels once (`diffuse prepare`), reading them as a memory map, and the
one-line hint that a dataset which decodes files would train faster prepared."""

from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from diffusers_cli.data.base import (
    DataError,
    ImageFileDataset,
    ImageSize,
    square_or_hw,
    subset_indices,
    to_unit_range,
)
from diffusers_cli.data.prepared_file import PreparedHeader, encode_header, read_header, size_text
from diffusers_cli.data.spec import Loaded, LoadRequest, parse_image_size
from diffusers_cli.support.files import atomic_path
from diffusers_cli.support.progress import Reporter, SilentReporter

#: Examples decoded per chunk while preparing: a chunk's pixels are written before the next is decoded.
CHUNK = 256


class PreparedDataset(Dataset):
    """A prepared file's images as a uint8 [N, C, H, W] tensor over a memory map; items are (float32 in [-1, 1], label).

    ``images`` and ``image_hw`` make training index it like a preloaded dataset (a batch is ``images[idx]``, no
    DataLoader), but pages are read only when a batch touches them: a file larger than memory trains as well.
    A ``num_examples`` subset is copied into memory (it is the size the user asked for).
    """

    def __init__(self, header: PreparedHeader, keep: Tensor | None = None) -> None:
        n, c, (h, w) = header.count, header.channels, header.image_hw
        # Copy-on-write ("c"): a private, writable mapping, so torch does not warn, and the file is never written.
        pixels = np.memmap(header.path, dtype=np.uint8, mode="c", offset=header.images_offset, shape=(n, c, h, w))
        labels = np.fromfile(header.path, dtype="<i8", count=n, offset=header.labels_offset).astype(np.int64)
        bad = np.flatnonzero((labels < 0) | (labels >= len(header.class_names)))
        if bad.size:
            raise DataError(f"{header.path} is a damaged prepared dataset (example {int(bad[0])} has label "
                            f"{int(labels[bad[0]])} of {len(header.class_names)} classes); prepare it again with `diffuse prepare`")
        self.images = torch.from_numpy(pixels)
        self.labels = torch.from_numpy(labels)
        if keep is not None:
            self.images, self.labels = self.images[keep], self.labels[keep]
        self.header = header
        self.keep = keep
        self.image_hw: tuple[int, int] = header.image_hw
        self.image_size: ImageSize = square_or_hw(header.image_hw)

    def __len__(self) -> int:
        return self.images.shape[0]

    def uint8_item(self, i: int) -> tuple[Tensor, int]:
        """Item ``i`` as stored: (uint8 [C, H, W], label)."""
        return self.images[i], int(self.labels[i])

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        x, label = self.uint8_item(i)
        return to_unit_range(x), label

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers that spawn get the header and reopen the map, not a pickled copy of every pixel.
        return {"header": self.header, "keep": self.keep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["header"], state["keep"])  # type: ignore[misc]


def load(request: LoadRequest) -> Loaded:
    """The registry's loader: the file at ``request.root``, checked against the size and channels asked for."""
    header = read_header(request.root)
    path = header.path
    if header.image_hw != request.image_hw:
        (h, w), want = header.image_hw, size_text(request.image_hw)
        raise DataError(f"{path} holds {h}x{w} images but --image-size is {want}; train with --image-size "
                        f"{size_text(header.image_hw)}, or prepare its source ({header.source}) again with "
                        f"`diffuse prepare ... --image-size {want}`")
    if header.channels != request.channels:
        raise DataError(f"{path} holds {header.channels}-channel images but --channels is {request.channels}; drop "
                        f"--channels, or prepare it again with --channels {request.channels}")
    keep = subset_indices(header.count, request.num_examples, request.seed, f"the prepared file {path.name}")
    return PreparedDataset(header, keep), header.class_names


def uint8_item(dataset: Any, i: int) -> tuple[Tensor, int]:
    """Item ``i`` of any dataset as uint8 [C, H, W] and label: its own ``uint8_item``, else its float item rounded back."""
    own = getattr(dataset, "uint8_item", None)
    if own is not None:
        return own(i)
    x, label = dataset[i]
    # Exact for items made by to_unit_range: its float error is far below half a level.
    return ((x + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8), int(label)


class _Rows(Dataset):
    """A dataset's uint8 items, for the DataLoader (and its workers) that decodes while preparing."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return uint8_item(self.dataset, i)


def write_prepared(
    dataset: Any,                       # items (x, label); uint8_item(i) where the dataset has it
    out: Path,                          # the .safetensors file (written atomically)
    channels: int,                      # C of every item
    image_hw: tuple[int, int],          # (H, W) of every item
    metadata: dict[str, str],           # from prepared_file.metadata
    num_workers: int = 0,               # DataLoader processes that decode (0: this one)
    reporter: Reporter | None = None,   # progress, in examples
) -> int:
    """Decode every item once, in order, into ``out``; returns the bytes written. Memory holds one chunk at a time."""
    reporter = reporter or SilentReporter()
    n = len(dataset)
    head = encode_header(n, channels, image_hw, metadata)
    labels = np.empty(n, dtype="<i8")
    loader = DataLoader(_Rows(dataset), batch_size=CHUNK, shuffle=False, num_workers=num_workers)
    with atomic_path(out, durable=True) as tmp:
        with open(tmp, "wb") as f:
            f.write(head)
            f.seek(len(head) + 8 * n)  # the labels go first, once all are known
            reporter.start(n, f"preparing {out.name}")
            done = 0
            for x, y in loader:
                if tuple(x.shape[1:]) != (channels, *image_hw):
                    raise DataError(f"example {done} is {tuple(x.shape[1:])}, not {(channels, *image_hw)}; "
                                    f"the dataset's loader does not resize (report this)")
                f.write(x.contiguous().numpy().tobytes())
                labels[done : done + len(y)] = y.numpy()
                done += len(y)
                reporter.advance(len(y))
            reporter.finish()
            f.seek(len(head))
            f.write(labels.tobytes())
        size = tmp.stat().st_size
    return size


class DataSettings(Protocol):
    """What the hint needs of a training run's data settings (config.schema.DataConfig has it)."""

    dataset: str
    data_dir: Path | None
    image_size: Any
    split: str
    channels: int | None


def advise_prepare(dataset: Any, first: Tensor, data: DataSettings, say: Callable[[str], None]) -> None:
    """For a dataset that decodes files, say in one line how much faster `diffuse prepare` would make its epochs.

    Measured on the first batch (``first``, its indices): the seconds to decode it as training reads a lazy
    dataset, against indexing the same rows of a uint8 tensor as training reads a prepared (or preloaded) one.
    Datasets in memory say nothing.
    """
    if not isinstance(dataset, ImageFileDataset) or len(first) == 0:
        return
    idx = [int(i) for i in first]
    t0 = time.perf_counter()
    rows = [dataset.uint8_item(i) for i in idx]
    torch.stack([to_unit_range(x) for x, _ in rows])  # what __getitem__ and the batch's stack add to the decoding
    decode = time.perf_counter() - t0
    table = torch.stack([x for x, _ in rows])
    where = torch.arange(len(idx))
    table[where].float()  # once untimed: the first call of an op pays for torch's lazy set-up
    index = float("inf")
    for _ in range(5):  # the best of a few: microseconds, where one timer tick or a page fault would dominate
        t0 = time.perf_counter()
        table[where].float().div_(127.5).sub_(1.0)
        index = min(index, time.perf_counter() - t0)
    hw = parse_image_size(data.image_size)
    name = Path(str(data.dataset)).stem or "data"
    out = f"{name}-{size_text(hw)}.safetensors"
    command = ["diffuse", "prepare", str(data.dataset)]
    if data.data_dir is not None:
        command += ["--data-dir", str(data.data_dir)]
    if data.split != "train":
        command += ["--split", data.split]
    if data.channels is not None:
        command += ["--channels", str(data.channels)]
    command += ["--image-size", size_text(hw), "--out", out]
    ratio = decode / max(index, 1e-9)
    say(f"data: {data.dataset} is decoded at every step: the first batch of {len(idx)} took {decode * 1e3:.0f} ms to "
        f"decode in one process and {index * 1e3:.2f} ms to index as uint8 rows ({ratio:,.{0 if ratio >= 10 else 1}f}x "
        f"faster); decode it once with `{shlex.join(command)}` and train with --dataset {shlex.quote(out)}")
