"""Shared pieces of the datasets that need torch: in-memory and lazy image datasets, resizing, transforms."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

# Re-exported: the loaders and older callers import them from here.
from diffusers_cli.data.spec import DataError, DatasetInfo, parse_image_size
from diffusers_cli.support.image_files import ImageError, open_image

__all__ = [
    "DataError",
    "DatasetInfo",
    "ImageFileDataset",
    "ImageSize",
    "TensorImageDataset",
    "convert_channels",
    "load_image",
    "random_flip",
    "resize_crop",
    "resize_crop_chunked",
    "square_or_hw",
    "subset_indices",
    "tensor_dataset",
    "to_unit_range",
]

#: Above this many bytes a resized copy of an in-memory dataset is not kept; items are resized when read.
EAGER_RESIZE_BYTES = 1 << 30

#: ITU-R 601 luma weights, the ones PIL's convert("L") uses.
LUMA = (0.299, 0.587, 0.114)

#: Names the pixels that decode + crop box + channel conversion + ``resize_crop`` make; prepared files record it
#: among their settings, so change it whenever a change to those functions moves a pixel.
TRANSFORM = "decode, box, luma, cover-resize antialiased bilinear, centre crop, round: v1"

#: An image size as callers give it: a side S (square) or (height, width).
ImageSize = int | tuple[int, int]


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


def square_or_hw(image_hw: tuple[int, int]) -> ImageSize:
    """The side S of a square (S, S), the (height, width) pair otherwise: what ``image_size`` attributes hold."""
    return image_hw[0] if image_hw[0] == image_hw[1] else image_hw


def resize_crop(x: Tensor, size: ImageSize) -> Tensor:
    """uint8 [N, C, h, w] -> [N, C, H, W]: scale to just cover (H, W) (antialiased bilinear), then a centre crop."""
    th, tw = parse_image_size(size)
    h, w = x.shape[-2:]
    if h == th and w == tw:
        return x
    # The larger of the two ratios covers both sides; for a square target it is size / shorter side.
    scale = max(th / h, tw / w)
    nh, nw = max(th, round(h * scale)), max(tw, round(w * scale))
    y = F.interpolate(x.to(torch.float32), size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (nh - th) // 2, (nw - tw) // 2
    y = y[..., top : top + th, left : left + tw]
    return y.round_().clamp_(0, 255).to(torch.uint8)


def resize_crop_chunked(x: Tensor, size: ImageSize, chunk: int = 2048) -> Tensor:
    """``resize_crop`` over a large uint8 batch, a chunk at a time so float copies stay small."""
    if tuple(x.shape[-2:]) == parse_image_size(size):
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
    """Images preloaded as uint8 [N, C, h, w]; items are (float32 [C, H, W] in [-1, 1], label).

    ``images`` holds them resized to (H, W) unless that copy would pass EAGER_RESIZE_BYTES; then
    they keep their native size and each item is resized when read.
    """

    def __init__(
        self,
        images: Tensor,             # uint8 [N, C, h, w], already in the wanted channels
        labels: Tensor,             # int64 [N]
        image_size: ImageSize,      # side S of square items, or their (height, width)
    ) -> None:
        if images.shape[0] != labels.shape[0]:
            raise DataError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        hw = parse_image_size(image_size)
        n, c = images.shape[:2]
        if tuple(images.shape[-2:]) != hw and n * c * hw[0] * hw[1] <= EAGER_RESIZE_BYTES:
            images = resize_crop_chunked(images, hw)
        self.images = images
        self.labels = labels.to(torch.int64)
        self.image_hw: tuple[int, int] = hw
        self.image_size: ImageSize = square_or_hw(hw)

    def __len__(self) -> int:
        return self.images.shape[0]

    def uint8_item(self, i: int) -> tuple[Tensor, int]:
        """Item ``i`` before the float conversion: (uint8 [C, H, W], label), what `diffuse prepare` stores."""
        x = self.images[i]
        if tuple(x.shape[-2:]) != self.image_hw:
            x = resize_crop(x.unsqueeze(0), self.image_hw)[0]
        return x, int(self.labels[i])

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        x, label = self.uint8_item(i)
        return to_unit_range(x), label


def load_image(path: Path, image_size: ImageSize, channels: int, box: tuple[int, int, int, int] | None = None) -> Tensor:
    """Decode one image file to uint8 [channels, H, W] (optionally cropped to ``box`` = x1, y1, x2, y2 first)."""
    height, width = parse_image_size(image_size)
    try:
        # Without a crop box, a JPEG much larger than needed decodes at a reduced scale (a JPEG feature);
        # draft keeps both sides at least the requested (width, height), so the crop still covers.
        # Alpha is composited over white, 16-bit grey scaled, palettes and CMYK expanded (diffusers_cli.images).
        rgb = open_image(path, "RGB", what="dataset image", draft=(width, height) if box is None else None)
    except ImageError as err:
        raise DataError(f"{err}; remove or replace the file") from None
    if box is not None:
        rgb = rgb.crop(box)
    x = torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1).unsqueeze(0)
    return resize_crop(convert_channels(x, channels), (height, width))[0]


class ImageFileDataset(Dataset):
    """Images read lazily from files with PIL; items are (float32 [C, H, W] in [-1, 1], label)."""

    def __init__(
        self,
        paths: Sequence[str | Path],                            # image files
        labels: Sequence[int],                                  # one label per file
        image_size: ImageSize,                                  # side S of square items, or (height, width)
        channels: int,                                          # 1 or 3
        boxes: Sequence[tuple[int, int, int, int]] | None = None,  # optional crop box per file
    ) -> None:
        if len(paths) != len(labels):
            raise DataError(f"{len(paths)} image files but {len(labels)} labels")
        # Plain lists of str and int: cheap to send to DataLoader workers.
        self.paths = [str(p) for p in paths]
        self.labels = [int(v) for v in labels]
        self.image_hw: tuple[int, int] = parse_image_size(image_size)
        self.image_size: ImageSize = square_or_hw(self.image_hw)
        self.channels = channels
        self.boxes = None if boxes is None else [tuple(int(v) for v in b) for b in boxes]

    def __len__(self) -> int:
        return len(self.paths)

    def uint8_item(self, i: int) -> tuple[Tensor, int]:
        """Item ``i`` decoded, cropped and resized but not yet converted to float: (uint8 [C, H, W], label).

        The one training transform of file datasets: ``__getitem__`` and `diffuse prepare` both go through it,
        so a prepared file holds exactly the pixels that training on the files would see.
        """
        box = None if self.boxes is None else self.boxes[i]
        return load_image(Path(self.paths[i]), self.image_hw, self.channels, box), self.labels[i]

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        x, label = self.uint8_item(i)
        return to_unit_range(x), label

    def subset(self, indices: Tensor | None) -> "ImageFileDataset":
        """The dataset restricted to ``indices`` (all of it for None)."""
        if indices is None:
            return self
        keep = indices.tolist()
        boxes = None if self.boxes is None else [self.boxes[i] for i in keep]
        return ImageFileDataset(
            [self.paths[i] for i in keep], [self.labels[i] for i in keep], self.image_hw, self.channels, boxes
        )


def tensor_dataset(
    images: Tensor,
    labels: Tensor,
    image_size: ImageSize,
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
