"""Shared pieces of the datasets: the error type, dataset info, in-memory and lazy image datasets, transforms."""

from __future__ import annotations

from diffusers_cli.errors import UsageError

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

#: Above this many bytes a resized copy of an in-memory dataset is not kept; items are resized when read.
EAGER_RESIZE_BYTES = 1 << 30

#: ITU-R 601 luma weights, the ones PIL's convert("L") uses.
LUMA = (0.299, 0.587, 0.114)


class DataError(UsageError):
    """Bad data input: a missing, corrupt or unknown dataset. The message is one line saying how to fix it."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a loaded dataset holds."""

    name: str                       # canonical dataset name ("folder" for a directory of images)
    channels: int                   # 1 (greyscale) or 3 (RGB), after any forced conversion
    num_classes: int                # number of labels
    class_names: tuple[str, ...]    # label index -> name
    size: int                       # number of examples


def to_unit_range(x: Tensor) -> Tensor:
    """uint8 [.., C, H, W] in [0, 255] -> float32 in [-1, 1]."""
    return x.to(torch.float32) / 127.5 - 1.0


def convert_channels(x: Tensor, channels: int) -> Tensor:
    """uint8 [N, C, H, W] with C in {1, 3} -> ``channels`` channels (luma for RGB -> grey, repeat for grey -> RGB)."""
    have = x.shape[1]
    if have == channels:
        return x
    if channels == 3:
        return x.expand(-1, 3, -1, -1).contiguous()
    weights = torch.tensor(LUMA, dtype=torch.float32).view(1, 3, 1, 1)
    grey = (x.to(torch.float32) * weights).sum(dim=1, keepdim=True)
    return grey.round_().clamp_(0, 255).to(torch.uint8)


def resize_crop(x: Tensor, size: int) -> Tensor:
    """uint8 [N, C, h, w] -> [N, C, size, size]: shorter side to ``size`` (antialiased bilinear), then a centre crop."""
    h, w = x.shape[-2:]
    if h == size and w == size:
        return x
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    y = F.interpolate(x.to(torch.float32), size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (nh - size) // 2, (nw - size) // 2
    y = y[..., top : top + size, left : left + size]
    return y.round_().clamp_(0, 255).to(torch.uint8)


def resize_crop_chunked(x: Tensor, size: int, chunk: int = 2048) -> Tensor:
    """``resize_crop`` over a large uint8 batch, a chunk at a time so float copies stay small."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return torch.cat([resize_crop(x[i : i + chunk], size) for i in range(0, x.shape[0], chunk)])


def subset_indices(n: int, num_examples: int | None, seed: int, what: str) -> Tensor | None:
    """Sorted seeded random choice of ``num_examples`` of ``n`` indices; None means all of them."""
    if num_examples is None:
        return None
    if num_examples < 1:
        raise DataError(f"num_examples must be at least 1, got {num_examples}")
    if num_examples > n:
        raise DataError(f"asked for {num_examples} examples but {what} has only {n}; lower --num-examples")
    if num_examples == n:
        return None
    # A random subset, not the first ones: folders list their images class by class.
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:num_examples].sort().values


class TensorImageDataset(Dataset):
    """Images preloaded as uint8 [N, C, h, w]; items are (float32 [C, S, S] in [-1, 1], label)."""

    def __init__(
        self,
        images: Tensor,             # uint8 [N, C, h, w], already in the wanted channels
        labels: Tensor,             # int64 [N]
        image_size: int,            # side S of the square items
    ) -> None:
        if images.shape[0] != labels.shape[0]:
            raise DataError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        n, c = images.shape[:2]
        if tuple(images.shape[-2:]) != (image_size, image_size) and n * c * image_size**2 <= EAGER_RESIZE_BYTES:
            images = resize_crop_chunked(images, image_size)
        self.images = images
        self.labels = labels.to(torch.int64)
        self.image_size = image_size

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        x = self.images[i]
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = resize_crop(x.unsqueeze(0), self.image_size)[0]
        return to_unit_range(x), int(self.labels[i])


def load_image(path: Path, image_size: int, channels: int, box: tuple[int, int, int, int] | None = None) -> Tensor:
    """Decode one image file to uint8 [channels, S, S] (optionally cropped to ``box`` = x1, y1, x2, y2 first)."""
    try:
        with Image.open(path) as img:
            if box is None and img.format == "JPEG":
                # Decode at a reduced scale (a JPEG feature) when the image is much larger than needed.
                img.draft(None, (image_size, image_size))
            img.load()
            rgb = _flatten_alpha(img)
    except (OSError, ValueError, SyntaxError) as err:
        raise DataError(f"cannot read image {path} ({err}); remove or replace the file") from None
    if box is not None:
        rgb = rgb.crop(box)
    x = torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1).unsqueeze(0)
    return resize_crop(convert_channels(x, channels), image_size)[0]


def _flatten_alpha(img: Image.Image) -> Image.Image:
    # Transparent pixels are undefined colour underneath; on white they look as a viewer shows them.
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


class ImageFileDataset(Dataset):
    """Images read lazily from files with PIL; items are (float32 [C, S, S] in [-1, 1], label)."""

    def __init__(
        self,
        paths: Sequence[str | Path],                            # image files
        labels: Sequence[int],                                  # one label per file
        image_size: int,                                        # side S of the square items
        channels: int,                                          # 1 or 3
        boxes: Sequence[tuple[int, int, int, int]] | None = None,  # optional crop box per file
    ) -> None:
        if len(paths) != len(labels):
            raise DataError(f"{len(paths)} image files but {len(labels)} labels")
        # Plain lists of str and int: cheap to send to DataLoader workers.
        self.paths = [str(p) for p in paths]
        self.labels = [int(v) for v in labels]
        self.image_size = image_size
        self.channels = channels
        self.boxes = None if boxes is None else [tuple(int(v) for v in b) for b in boxes]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        box = None if self.boxes is None else self.boxes[i]
        x = load_image(Path(self.paths[i]), self.image_size, self.channels, box)
        return to_unit_range(x), self.labels[i]

    def subset(self, indices: Tensor | None) -> "ImageFileDataset":
        """The dataset restricted to ``indices`` (all of it for None)."""
        if indices is None:
            return self
        keep = indices.tolist()
        boxes = None if self.boxes is None else [self.boxes[i] for i in keep]
        return ImageFileDataset(
            [self.paths[i] for i in keep], [self.labels[i] for i in keep], self.image_size, self.channels, boxes
        )


def tensor_dataset(
    images: Tensor,
    labels: Tensor,
    image_size: int,
    channels: int,
    num_examples: int | None,
    seed: int,
    what: str,
) -> TensorImageDataset:
    """An in-memory dataset from native uint8 images: subset, channel conversion, resize."""
    keep = subset_indices(images.shape[0], num_examples, seed, what)
    if keep is not None:
        images, labels = images[keep], labels[keep]
    return TensorImageDataset(convert_channels(images, channels), labels, image_size)


def random_flip(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Mirror each image of a batch [B, C, H, W] left-right with probability 1/2, coins drawn from ``generator``."""
    device = generator.device if generator is not None else torch.device("cpu")
    coins = torch.rand(x.shape[0], generator=generator, device=device) < 0.5
    coins = coins.to(x.device).view(-1, *([1] * (x.ndim - 1)))
    return torch.where(coins, x.flip(-1), x)
