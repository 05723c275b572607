"""Inception features of image folders and image batches, read the way pytorch-fid reads them (PIL RGB, ToTensor).

One difference, for files pytorch-fid misreads: alpha is composited over white (it drops alpha) and 16-bit grey
is scaled to 8 bits (it clips); RGB, grey, palette and CMYK files read exactly alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms.functional import to_tensor

from diffusers_cli.engine.metrics.errors import MetricsError
from diffusers_cli.engine.metrics.inception import INPUT_SIZE
from diffusers_cli.support.image_files import ImageError, open_image

#: pytorch-fid's IMAGE_EXTENSIONS (matched here regardless of case).
IMAGE_EXTENSIONS = frozenset({"bmp", "jpg", "jpeg", "pgm", "png", "ppm", "tif", "tiff", "webp"})
#: pytorch-fid's default batch size.
BATCH_SIZE = 50

#: Called with the number of images done so far, after each batch.
Progress = Callable[[int], None]


def folder_images(path: str | Path, recursive: bool = False) -> list[Path]:
    """The sorted image files of a folder (pytorch-fid's extensions; top level only unless ``recursive``)."""
    path = Path(path)
    if not path.is_dir():
        raise MetricsError(f"image folder {path} does not exist or is not a folder")
    pattern = "**/*" if recursive else "*"
    files = sorted(p for p in path.glob(pattern) if p.is_file() and p.suffix[1:].lower() in IMAGE_EXTENSIONS)
    if not files:
        where = "in or below" if recursive else "in"
        raise MetricsError(f"no images {where} {path} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return files


def load_image(path: Path) -> Tensor:
    """One image as pytorch-fid loads it: PIL, converted to RGB, ToTensor -> float32 [3, H, W] in [0, 1]."""
    try:
        return to_tensor(open_image(path, "RGB", what="image"))
    except ImageError as err:  # too large, corrupt or unconvertible: the one line, as a metrics error
        raise MetricsError(str(err)) from None


def stack_images(images: list[Tensor]) -> Tensor:
    """Stack [3, H, W] images; if sizes differ, first resize each to 299x299 with the network's own bilinear resize.

    The network resizes every input to 299x299 anyway and a 299->299 bilinear resize is the identity,
    so mixed sizes give each image the features it would get alone (pytorch-fid fails on them instead).
    """
    if len({tuple(im.shape) for im in images}) > 1:
        images = [
            F.interpolate(im[None], size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)[0]
            for im in images
        ]
    return torch.stack(images)


def image_batches(files: list[Path], batch_size: int = BATCH_SIZE) -> Iterator[Tensor]:
    """Batches [B, 3, H, W] in [0, 1] of the given image files, in order."""
    if batch_size < 1:
        raise MetricsError(f"batch size must be at least 1, got {batch_size}")
    for start in range(0, len(files), batch_size):
        yield stack_images([load_image(p) for p in files[start : start + batch_size]])


@torch.no_grad()
def extract_features(
    model: nn.Module,
    batches: Iterable[Tensor],
    progress: Progress | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Run image batches ([B, C, H, W], float in [0, 1] or uint8) through the Inception; (pool3 [N, 2048], logits [N, 1008]) in float64."""
    device = next(model.parameters()).device
    pools, logits, done = [], [], 0
    for batch in batches:
        x = _as_unit_float(batch).to(device)
        pool, logit = model(x)
        # pytorch-fid collects float32 activations into a float64 array; statistics are then float64.
        pools.append(pool.cpu().numpy().astype(np.float64))
        logits.append(logit.cpu().numpy().astype(np.float64))
        done += x.shape[0]
        if progress is not None:
            progress(done)
    if not pools:
        raise MetricsError("no images to compute Inception features of")
    return np.concatenate(pools), np.concatenate(logits)


def _as_unit_float(batch: Tensor) -> Tensor:
    """uint8 images -> [0, 1] floats (as ToTensor does); float images must already lie in [0, 1]."""
    if batch.dtype == torch.uint8:
        return batch.float() / 255
    if not batch.is_floating_point():
        raise MetricsError(f"images must be float in [0, 1] or uint8; got dtype {batch.dtype}")
    lo, hi = float(batch.min()), float(batch.max())
    if not (0.0 <= lo and hi <= 1.0):
        raise MetricsError(
            f"images for Inception must lie in [0, 1]; got values in [{lo:.3g}, {hi:.3g}] "
            f"(map [-1, 1] samples with (x + 1) / 2 and clamp to [0, 1])"
        )
    return batch


def folder_features(
    model: nn.Module,
    path: str | Path,
    batch_size: int = BATCH_SIZE,
    recursive: bool = False,
    progress: Progress | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Inception features (pool3 [N, 2048], logits [N, 1008]) of every image in a folder, as pytorch-fid computes them."""
    files = folder_images(path, recursive=recursive)
    return extract_features(model, image_batches(files, batch_size), progress=progress)
