"""Tiny tensor helpers shared by the engine: broadcasting per-example scalars and seeded noise."""

from __future__ import annotations

import torch
from torch import Tensor

from diffusers_cli.engine.rng import RNG, randn


def append_dims(v: Tensor, ndim: int) -> Tensor:
    """Reshape a per-example vector [B] to [B, 1, ..., 1] with ``ndim`` dimensions in all."""
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def time_vector(t: Tensor | float, x: Tensor) -> Tensor:
    """A grid time as a per-example vector [B] in x's dtype and device."""
    return torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)


def randn_like(x: Tensor, generator: RNG) -> Tensor:
    """Standard normal noise shaped like ``x``, drawn from ``generator`` (same seed, same noise; per image if it is ImageGenerators)."""
    return randn(x.shape, generator, x.device, x.dtype)


def batch_norm(x: Tensor) -> Tensor:
    """Per-example L2 norm of a batch [B, ...] -> [B]."""
    return torch.linalg.vector_norm(x.reshape(x.shape[0], -1), dim=1)
