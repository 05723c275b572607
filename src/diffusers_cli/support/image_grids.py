"""Image tensors as pixels: uint8 conversion, PIL images, tiled grids, and PNG files written atomically."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from diffusers_cli.support.files import atomic_path, check_image_output

if TYPE_CHECKING:  # torch and PIL load only when an image is written, so `diffuse --help` stays instant
    from PIL import Image
    from torch import Tensor


def to_uint8(x: Tensor) -> Tensor:
    """Images in [-1, 1] -> uint8 [B, C, H, W] (clamped, rounded)."""
    import torch

    return ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def to_pil(img: Tensor) -> Image.Image:
    """One uint8 image [C, H, W] (1 or 3 channels) as a PIL image."""
    from PIL import Image

    arr = img.permute(1, 2, 0).numpy()
    return Image.fromarray(arr[..., 0], "L") if arr.shape[2] == 1 else Image.fromarray(arr, "RGB")


def make_grid(x: Tensor, nrow: int | None = None, padding: int = 2) -> Tensor:
    """Tile images in [-1, 1] into one uint8 image [C, H', W'] with ``nrow`` per row (square by default)."""
    import torch

    imgs = to_uint8(x)
    b, c, h, w = imgs.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(b)))
    rows = math.ceil(b / nrow)
    grid = torch.zeros(c, rows * (h + padding) + padding, nrow * (w + padding) + padding, dtype=torch.uint8)
    for i in range(b):
        r, col = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top : top + h, left : left + w] = imgs[i]
    return grid


def upscaled(img: Tensor, factor: int) -> Tensor:
    """A uint8 image [C, H, W] enlarged ``factor`` times by nearest neighbour: each pixel a factor x factor block."""
    if factor == 1:
        return img
    return img.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def save_png(img: Tensor, path: Path, upscale: int = 1) -> None:
    """Write one uint8 image [C, H, W] as PNG (``upscale`` times larger), atomically; any other extension is refused."""
    check_image_output(path, flag=None)
    with atomic_path(path) as tmp:
        to_pil(upscaled(img, upscale)).save(tmp, format="PNG")


def save_grid(x: Tensor, path: Path, nrow: int | None = None, upscale: int = 1) -> None:
    """Write images in [-1, 1] as one grid PNG (``upscale`` times larger)."""
    save_png(make_grid(x, nrow), path, upscale)


def save_individual(x: Tensor, path: Path, first: int = 0, upscale: int = 1) -> list[Path]:
    """Write image i as ``<stem>_<first + i>.png`` beside ``path`` (its index in the job); returns the paths."""
    check_image_output(path, flag=None, individual=True)
    out = []
    for i, img in enumerate(to_uint8(x)):
        p = path.with_name(f"{path.stem}_{first + i:05d}.png")
        save_png(img, p, upscale)
        out.append(p)
    return out


def write_images(x: Tensor, out: Path, individual: bool, first: int = 0, upscale: int = 1) -> list[Path]:
    """Write images in [-1, 1] as one grid PNG at ``out``, or one PNG each beside it (numbered from ``first``),
    ``upscale`` times larger (nearest neighbour, so a 16x16 or 28x28 image is visible and no pixel is invented)."""
    if individual:
        return save_individual(x, out, first, upscale)
    save_grid(x, out, upscale=upscale)
    return [out]
