"""Imputation masks: generated kinds (the ``MASKS`` registry) and masks read from images.

Two conventions meet here, and this module is the only place that converts between them:

- **Mask images** (PNG files a user paints): WHITE (1, or 255) = pixel to FILL, black (0) =
  pixel to keep (``IMAGE_CONVENTION``); ``mask_from_image`` reads them, ``mask_to_image`` writes them.
- **Engine masks** (``imputation``, ``make_mask``'s output): 1 = KNOWN pixel, 0 = pixel to fill,
  shaped [B or 1, 1, H, W] and shared by all channels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from diffusers_cli.support.errors import UsageError

if TYPE_CHECKING:  # torch loads when a mask is made: the registry below is read by `--help` texts without it
    import torch
    from torch import Tensor

#: How a mask image reads; error messages quote it.
IMAGE_CONVENTION = "white = fill, black = keep"
HALF_SIDES: tuple[str, ...] = ("left", "right", "top", "bottom")


class MaskError(UsageError):
    """A mask that cannot be used: its message is one line saying what is wrong and how to fix it."""


def known_from_fill(fill: Tensor) -> Tensor:
    """Image convention (1 = fill) -> engine convention (1 = known); the same flip serves both directions."""
    return 1.0 - fill.float()


def check_mask(known: Tensor) -> None:
    """Raise MaskError unless every example of an engine mask [B, 1, H, W] has pixels to fill and pixels known."""
    flat = known.reshape(known.shape[0], -1)
    for i, row in enumerate(flat):
        where = f"mask {i}" if flat.shape[0] > 1 else "mask"
        if bool((row == 1).all()):
            raise MaskError(f"{where} fills no pixel ({IMAGE_CONVENTION}): paint the pixels to fill white")
        if bool((row == 0).all()):
            raise MaskError(f"{where} fills every pixel ({IMAGE_CONVENTION}), so nothing is known: keep some black")


def _batch_hw(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(B, H, W) from an image shape (H, W), (C, H, W) or (B, C, H, W)."""
    if len(shape) not in (2, 3, 4) or min(shape) < 1:
        raise MaskError(f"mask shape must be (H, W), (C, H, W) or (B, C, H, W), got {tuple(shape)}")
    return (shape[0] if len(shape) == 4 else 1), shape[-2], shape[-1]


def _fraction(value: float, what: str) -> float:
    if not 0.0 < value < 1.0:
        raise MaskError(f"{what} must lie strictly between 0 and 1, got {value}")
    return float(value)


def _centred_box(h: int, w: int, area: float) -> Tensor:
    """[H, W] bool: a centred box covering about ``area`` of the image (at least one pixel)."""
    import torch

    bh = min(h, max(1, round(h * math.sqrt(area))))
    bw = min(w, max(1, round(w * math.sqrt(area))))
    box = torch.zeros(h, w, dtype=torch.bool)
    top, left = (h - bh) // 2, (w - bw) // 2
    box[top : top + bh, left : left + bw] = True
    return box


def _half(h: int, w: int, side: str) -> Tensor:
    """[H, W] bool: the half named ``side`` (rounding odd sizes down)."""
    import torch

    if side not in HALF_SIDES:
        raise MaskError(f"unknown side {side!r}; use one of {', '.join(HALF_SIDES)}")
    m = torch.zeros(h, w, dtype=torch.bool)
    if side == "left":
        m[:, : w // 2] = True
    elif side == "right":
        m[:, w - w // 2 :] = True
    elif side == "top":
        m[: h // 2] = True
    else:
        m[h - h // 2 :] = True
    return m


def _random_pixels(b: int, h: int, w: int, observed: float, generator: torch.Generator | None) -> Tensor:
    """[B, H, W] bool known: exactly round(observed * H * W) pixels (1 to H*W - 1) drawn per example."""
    import torch

    count = min(h * w - 1, max(1, round(observed * h * w)))
    scores = torch.rand((b, h * w), generator=generator)
    keep = torch.zeros(b, h * w, dtype=torch.bool)
    keep.scatter_(1, scores.argsort(dim=1)[:, :count], True)
    return keep.reshape(b, h, w)


@dataclass(frozen=True)
class MaskKind:
    """One generated mask kind: what it keeps, its options with their defaults, and its line of help."""

    known: Callable[..., "Tensor"]  # (b, h, w, generator, **options) -> bool [H, W] or [B, H, W], True = known
    options: dict[str, Any]         # option name -> default
    description: str


#: Every generated mask kind. `diffuse impute --mask`, the config, the Python face and the errors read this dict.
MASKS: dict[str, MaskKind] = {
    "box": MaskKind(lambda b, h, w, g, fraction: ~_centred_box(h, w, _fraction(fraction, "fraction")),
                    {"fraction": 0.25}, "fill a centred box of `fraction` of the area"),
    "outpaint": MaskKind(lambda b, h, w, g, fraction: _centred_box(h, w, _fraction(fraction, "fraction")),
                         {"fraction": 0.25}, "keep a centred box of `fraction` of the area, fill the border"),
    "half": MaskKind(lambda b, h, w, g, side: ~_half(h, w, side), {"side": "right"},
                     f"fill the half on `side` ({', '.join(HALF_SIDES)})"),
    "random-pixels": MaskKind(lambda b, h, w, g, fraction: _random_pixels(b, h, w, _fraction(fraction, "fraction"), g),
                              {"fraction": 0.2}, "keep a random `fraction` of the pixels, drawn per example"),
}


def make_mask(kind: str, shape: tuple[int, ...], generator: torch.Generator | None = None, **opts: Any) -> Tensor:
    """An engine mask [B, 1, H, W] (1 = known) of ``kind`` (a key of ``MASKS``) for images of ``shape``."""
    spec = MASKS.get(kind)
    if spec is None:
        raise MaskError(f"unknown mask kind {kind!r}; use one of {', '.join(MASKS)}")
    extra = sorted(set(opts) - set(spec.options))
    if extra:
        raise MaskError(f"mask kind {kind!r} takes no option {extra[0]!r}; it takes {', '.join(sorted(spec.options))}")
    b, h, w = _batch_hw(tuple(shape))
    known = spec.known(b, h, w, generator, **{**spec.options, **opts})
    known = known.float().expand(b, h, w)[:, None].contiguous()
    check_mask(known)
    return known


def mask_from_image(image: Tensor, like: Tensor | None = None, threshold: float = 0.5) -> Tensor:
    """Engine mask [1, 1, H, W] from a mask image (WHITE = fill), checked against the image ``like`` if given.

    ``image`` is [H, W], [C, H, W] or [1, C, H, W], float in [0, 1] or uint8; with colour channels
    their mean is used and an alpha channel (C = 2 or 4) is ignored.
    """
    img = image.detach().cpu()
    if img.ndim == 4 and img.shape[0] == 1:
        img = img[0]
    if img.ndim == 2:
        img = img[None]
    if img.ndim != 3 or img.shape[0] not in (1, 2, 3, 4):
        raise MaskError(f"a mask image must be [H, W] or [C, H, W] with C in 1..4, got {tuple(image.shape)}")
    img = img.float() / 255.0 if not img.is_floating_point() else img.float()
    colour = img[:1] if img.shape[0] in (1, 2) else img[:3]
    if like is not None and tuple(like.shape[-2:]) != tuple(colour.shape[-2:]):
        mh, mw = colour.shape[-2:]
        h, w = like.shape[-2:]
        raise MaskError(f"mask is {mh}x{mw} pixels but the image is {h}x{w}: make the mask the same size")
    fill = (colour.mean(dim=0) > threshold).float()  # white (bright) = fill
    known = known_from_fill(fill)[None, None]
    check_mask(known)
    return known


def mask_to_image(known: Tensor) -> Tensor:
    """A mask image [B, 1, H, W] in {0, 1} (white = fill) from an engine mask, for saving as PNG."""
    return known_from_fill(known)  # the flip is its own inverse


def __getattr__(name: str) -> tuple[str, ...]:
    """``MASK_KINDS``, the mask names as this module gave them before MASKS became a registry: read from it."""
    if name == "MASK_KINDS":  # code written before the refold imports it
        return tuple(MASKS)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
