"""Per-image random streams (EDM's StackedRandomGenerator): image i's noise depends on its own seed alone.

A batch drawn with ``ImageGenerators`` gives every image the same noise whatever the batch
size or the number of processes, because each image's rows come from that image's generator.
Every random draw of the samplers and imputation methods goes through ``randn`` / ``rand`` /
``multinomial`` here, which accept a plain ``torch.Generator`` (one stream for the batch), an
``ImageGenerators`` (one stream per image) or None (torch's global stream).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import torch
from torch import Tensor

#: Golden-ratio multiplier: spreads (seed, index) pairs over the 63-bit seed space without collisions in practice.
_MIX = 0x9E3779B97F4A7C15


def image_seed(seed: int, index: int) -> int:
    """The seed of image ``index`` of a job run with ``seed``: a pure function of the two (63-bit, non-negative)."""
    return ((seed & (2**64 - 1)) * _MIX + index * 0xBF58476D1CE4E5B9 + 1) % (2**63 - 1)


class ImageGenerators:
    """One torch.Generator per image; a tensor of B * k rows gives rows [i k, (i + 1) k) to generator i."""

    def __init__(self, generators: Sequence[torch.Generator]) -> None:
        if not generators:
            raise ValueError("ImageGenerators needs at least one generator")
        self.generators = list(generators)

    @classmethod
    def for_images(cls, seed: int, start: int, count: int, device: torch.device | str = "cpu") -> "ImageGenerators":
        """Generators of images start .. start + count - 1 of a job seeded with ``seed``."""
        dev = torch.device(device)
        return cls([torch.Generator(device=dev).manual_seed(image_seed(seed, start + i)) for i in range(count)])

    def __len__(self) -> int:
        return len(self.generators)

    @property
    def device(self) -> torch.device:
        """The device the generators draw on."""
        return self.generators[0].device

    def _rows(self, rows: int) -> int:
        k = len(self.generators)
        if rows % k:
            raise ValueError(f"{rows} rows cannot be split among {k} per-image generators")
        return rows // k

    def draw(self, fn: str, shape: Sequence[int], device: torch.device | str | None, dtype: torch.dtype) -> Tensor:
        """torch.randn or torch.rand of ``shape``, each generator drawing its own block of rows."""
        per = self._rows(int(shape[0]))
        op = getattr(torch, fn)
        return torch.cat([op((per, *shape[1:]), generator=g, device=device, dtype=dtype) for g in self.generators])


#: What every random draw in the engine accepts.
RNG = Union[torch.Generator, ImageGenerators, None]


def randn(shape: Sequence[int], generator: RNG, device: torch.device | str | None = None,
          dtype: torch.dtype = torch.float32) -> Tensor:
    """Standard normal noise of ``shape`` from ``generator`` (per image if it is an ImageGenerators)."""
    if isinstance(generator, ImageGenerators):
        return generator.draw("randn", shape, device, dtype)
    return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)


def rand(shape: Sequence[int], generator: RNG, device: torch.device | str | None = None,
         dtype: torch.dtype = torch.float32) -> Tensor:
    """Uniform [0, 1) noise of ``shape`` from ``generator`` (per image if it is an ImageGenerators)."""
    if isinstance(generator, ImageGenerators):
        return generator.draw("rand", shape, device, dtype)
    return torch.rand(tuple(shape), generator=generator, device=device, dtype=dtype)


def multinomial(weights: Tensor, num: int, generator: RNG, replacement: bool = True) -> Tensor:
    """torch.multinomial over the rows of ``weights`` [G, P]; with ImageGenerators, row block i draws from generator i."""
    if isinstance(generator, ImageGenerators):
        per = generator._rows(weights.shape[0])
        return torch.cat([torch.multinomial(weights[i * per : (i + 1) * per], num, replacement=replacement, generator=g)
                          for i, g in enumerate(generator.generators)])
    return torch.multinomial(weights, num, replacement=replacement, generator=generator)
