"""The `shapes` dataset: coloured geometric shapes rendered in-process, anti-aliased, at any (height, width).

Example i is a pure function of (seed, split, i, image size): its random parameters come from a
counter-based hash (SplitMix64) of those numbers, so the first examples do not depend on how many
are asked for. Labels cycle through the classes, so every class has the same count (+-1). Edges are
anti-aliased with analytic coverage: clamp(0.5 - signed distance in pixels, 0, 1).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from diffusers_cli.data.base import LUMA, ImageSize, tensor_dataset
from diffusers_cli.data import fixed_names
from diffusers_cli.data.spec import DataError, Loaded, LoadRequest, parse_image_size

#: Label k is CLASS_NAMES[k].
CLASS_NAMES: tuple[str, ...] = fixed_names.SHAPES
DEFAULT_SIZE = 10_000

#: Each shape fits the square [-1, 1]^2 in units of its half-extent r; these are their areas in r^2.
AREAS: dict[str, float] = {
    "circle": math.pi,
    "square": (2 * 0.75) ** 2,
    "triangle": 0.5 * 2.0 * 1.8,
    "cross": 2 * (2.0 * 0.6) - 0.6**2,
    "ring": math.pi * (1.0 - 0.5**2),
}

#: Half-extent r as a fraction of the image's shorter side, and the gap kept to the border in pixels.
SIZE_RANGE = (0.2, 0.38)
BORDER_PX = 1.0
#: Least luma difference between shape and background (in [0, 1]), so shapes stay visible in greyscale too.
MIN_CONTRAST = 0.4

_STREAMS = {"train": 0, "all": 0, "test": 1}
_FIELDS = 10  # size, x, y, background rgb, foreground rgb, contrast direction
#: Pixels rendered at a time: large enough to vectorise, small enough to stay in cache.
_CHUNK_PIXELS = 1 << 20
_MASK64 = (1 << 64) - 1


# ---- signed distances of unit shapes (negative inside) --------------------------------
# x is [N, 1, S] and y is [N, S, 1]: the terms in one coordinate stay small and only their
# combination is image-sized, which is most of the rendering speed. The distances need to be exact
# only within half a pixel of an edge, where coverage is anti-aliased; elsewhere only their sign counts.


def _box(x: Tensor, y: Tensor, hx: float, hy: float) -> Tensor:
    # Chebyshev box distance: exact along the edges, short of the true distance only off the corners.
    return torch.maximum(x.abs() - hx, y.abs() - hy)


def _circle(x: Tensor, y: Tensor) -> Tensor:
    return torch.sqrt(x * x + y * y) - 1.0


def _square(x: Tensor, y: Tensor) -> Tensor:
    return _box(x, y, 0.75, 0.75)


def _half_planes(vertices: tuple[tuple[float, float], ...]) -> list[tuple[float, float, float]]:
    # (nx, ny, c) with unit outward normals, so that side = x nx + y ny - c is a signed distance.
    planes = []
    for (ax, ay), (bx, by) in zip(vertices, vertices[1:] + vertices[:1]):
        nx, ny = by - ay, ax - bx
        norm = math.hypot(nx, ny)
        planes.append((nx / norm, ny / norm, (ax * nx + ay * ny) / norm))
    return planes


# Apex up at y = -1 (image rows grow downwards), base at y = 0.8 from x = -1 to 1; clockwise on screen.
_TRIANGLE = _half_planes(((0.0, -1.0), (1.0, 0.8), (-1.0, 0.8)))


def _triangle(x: Tensor, y: Tensor) -> Tensor:
    # The intersection of three half-planes is the largest of their signed distances; the bounding
    # box joins them because off a vertex the half-planes alone fall short of the true distance.
    d = _box(x, y + 0.1, 1.0, 0.9)
    for nx, ny, c in _TRIANGLE:
        d = torch.maximum(d, (x * nx - c) + y * ny)
    return d


def _cross(x: Tensor, y: Tensor) -> Tensor:
    return torch.minimum(_box(x, y, 1.0, 0.3), _box(x, y, 0.3, 1.0))


def _ring(x: Tensor, y: Tensor) -> Tensor:
    return (torch.sqrt(x * x + y * y) - 0.75).abs_() - 0.25


SDFS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "cross": _cross,
    "ring": _ring,
}


# ---- counter-based randomness ----------------------------------------------------------


def _splitmix64(z: np.ndarray) -> np.ndarray:
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def uniforms(seed: int, stream: int, indices: np.ndarray, fields: int) -> np.ndarray:
    """Uniform [0, 1) numbers [len(indices), fields], each a hash of (seed, stream, index, field)."""
    key = _splitmix64(np.array([seed & _MASK64], dtype=np.uint64))
    key = _splitmix64(key ^ np.uint64(stream & _MASK64))
    counters = indices.astype(np.uint64)[:, None] * np.uint64(fields) + np.arange(fields, dtype=np.uint64)
    bits = _splitmix64(_splitmix64(counters + key))
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


# ---- rendering ------------------------------------------------------------------------


def shape_params(image_size: ImageSize, seed: int, split: str, indices: np.ndarray) -> dict[str, Tensor]:
    """Per-example label, centre (cx, cy), half-extent r (pixels) and colours (rgb in [0, 1])."""
    height, width = parse_image_size(image_size)
    u = torch.from_numpy(uniforms(seed, _STREAMS[split], indices, _FIELDS)).to(torch.float32)
    r = float(min(height, width)) * (SIZE_RANGE[0] + (SIZE_RANGE[1] - SIZE_RANGE[0]) * u[:, 0])
    # Centres are kept far enough in that the whole shape, and a border, lie inside the image.
    # (The same float operations as for one square side, so square images stay bit for bit as they were.)
    cx = r + BORDER_PX + (float(width) - 2 * (r + BORDER_PX)).clamp(min=0) * u[:, 1]
    cy = r + BORDER_PX + (float(height) - 2 * (r + BORDER_PX)).clamp(min=0) * u[:, 2]
    background = u[:, 3:6]
    foreground = _contrasting(u[:, 6:9], background, lighter=u[:, 9] < 0.5)
    labels = torch.from_numpy(indices.astype(np.int64) % len(CLASS_NAMES))
    return {"label": labels, "cx": cx, "cy": cy, "r": r, "background": background, "foreground": foreground}


def _luma(rgb: Tensor) -> Tensor:
    return rgb @ torch.tensor(LUMA, dtype=rgb.dtype)


def _contrasting(colour: Tensor, background: Tensor, lighter: Tensor) -> Tensor:
    # Pull a random colour towards black or white just far enough that its luma is MIN_CONTRAST
    # away from the background's: hue survives, and the shape stays visible in greyscale.
    lb = _luma(background)
    # Go the way that has room; a coin decides when both have.
    up_room, down_room = lb <= 1 - MIN_CONTRAST, lb >= MIN_CONTRAST
    up = torch.where(up_room & down_room, lighter, up_room)
    lc = _luma(colour).clamp(1e-6, 1 - 1e-6)
    target = torch.where(up, lb + MIN_CONTRAST, lb - MIN_CONTRAST)
    to_white = 1 - (1 - colour) * ((1 - target) / (1 - lc)).clamp(max=1).unsqueeze(1)
    to_black = colour * (target / lc).clamp(max=1).unsqueeze(1)
    return torch.where(up.unsqueeze(1), to_white, to_black)


def render_coverage(image_size: ImageSize, params: dict[str, Tensor]) -> Tensor:
    """Fraction of each pixel covered by its example's shape, float32 [N, H, W] in [0, 1]."""
    height, width = parse_image_size(image_size)
    columns = torch.arange(width, dtype=torch.float32) + 0.5
    rows = torch.arange(height, dtype=torch.float32) + 0.5
    cover = torch.empty(params["r"].shape[0], height, width)
    half = torch.tensor(0.5)
    for k, name in enumerate(CLASS_NAMES):
        mine = torch.nonzero(params["label"] == k).flatten()
        if mine.numel() == 0:
            continue
        # Each class on its own rows: every pixel evaluates one distance function, not all five.
        r = params["r"][mine].view(-1, 1, 1)
        x = (columns.view(1, 1, -1) - params["cx"][mine].view(-1, 1, 1)) / r
        y = (rows.view(1, -1, 1) - params["cy"][mine].view(-1, 1, 1)) / r
        # Unit-shape distances times r are distances in pixels; coverage = 0.5 - distance, clamped.
        cover.index_copy_(0, mine, torch.addcmul(half, SDFS[name](x, y), r, value=-1.0).clamp_(0.0, 1.0))
    return cover


def render_shapes(image_size: ImageSize, seed: int, split: str, indices: np.ndarray) -> tuple[Tensor, Tensor]:
    """uint8 images [N, 3, H, W] and int64 labels [N] of the given example indices."""
    params = shape_params(image_size, seed, split, indices)
    cover = render_coverage(image_size, params).unsqueeze(1)
    bg = params["background"].view(-1, 3, 1, 1) * 255
    fg = params["foreground"].view(-1, 3, 1, 1) * 255
    # Colours lie in [0, 255], so the blend needs no clamp; the + 0.5 makes the truncating cast round.
    return torch.addcmul(bg + 0.5, cover, fg - bg).to(torch.uint8), params["label"]


def make_shapes(image_size: ImageSize, seed: int, split: str, num_examples: int) -> tuple[Tensor, Tensor]:
    """The first ``num_examples`` examples of a split, rendered a chunk at a time to bound memory."""
    height, width = parse_image_size(image_size)
    images = torch.empty(num_examples, 3, height, width, dtype=torch.uint8)
    labels = torch.empty(num_examples, dtype=torch.int64)
    chunk = max(1, _CHUNK_PIXELS // (height * width))
    for start in range(0, num_examples, chunk):
        stop = min(start + chunk, num_examples)
        images[start:stop], labels[start:stop] = render_shapes((height, width), seed, split, np.arange(start, stop))
    return images, labels


def load(request: LoadRequest) -> Loaded:
    """The registry's loader: ``num_examples`` (default DEFAULT_SIZE) shapes at (H, W), "all" read as "train"."""
    n = DEFAULT_SIZE if request.num_examples is None else request.num_examples
    if n < 1:
        raise DataError(f"num_examples must be at least 1, got {n}")
    images, labels = make_shapes(request.image_hw, request.seed, request.split, n)
    # Rendered at (H, W) already: tensor_dataset only converts the channels.
    ds = tensor_dataset(images, labels, request.image_hw, request.channels, None, request.seed, request.name)
    return ds, CLASS_NAMES
