"""Training-step pieces: exponential moving average with warm-up, learning-rate warm-up, and the data order."""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn


class EMA:
    """Exponential moving average of a module's weights; decay min(decay, (1 + n) / (10 + n)) while warming up."""

    def __init__(
        self,
        module: nn.Module,  # the online network (its current weights start the average)
        decay: float = 0.999,  # long-run decay per update
        warmup: bool = True,  # smaller decay early, so the average is not stuck at the random init
    ) -> None:
        self.module = copy.deepcopy(module).eval().requires_grad_(False)
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0

    def current_decay(self) -> float:
        """The decay the next update will use."""
        if not self.warmup:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """Move the average toward ``module``'s weights; buffers are copied."""
        d = self.current_decay()
        for avg, cur in zip(self.module.parameters(), module.parameters()):
            avg.lerp_(cur.detach(), 1.0 - d)
        for avg_b, cur_b in zip(self.module.buffers(), module.buffers()):
            avg_b.copy_(cur_b)
        self.num_updates += 1


def warmup_lr(step: int, base_lr: float, warmup: int, decay: str = "none", total: int = 0) -> float:
    """Linear warm-up from base_lr / warmup to base_lr over ``warmup`` steps, then constant or decaying.

    ``decay`` "cosine" or "linear" anneals from base_lr after the warm-up to 0 at step ``total``:
    on short runs annealing gives a lower final loss than a constant rate (EMA alone cannot
    remove the noise of a large step). "none" keeps base_lr, for runs that will be resumed longer.
    """
    lr = base_lr if warmup <= 0 else base_lr * min(1.0, (step + 1) / warmup)
    if decay == "none" or total <= warmup or step < warmup:
        return lr
    frac = min(1.0, (step - warmup) / (total - warmup))
    if decay == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * frac))
    if decay == "linear":
        return lr * (1.0 - frac)
    raise ValueError(f"unknown learning-rate decay {decay!r}; use none, cosine or linear")


def batch_indices(num_examples: int, batch_size: int, seed: int, step: int) -> Tensor:
    """Indices of the global batch at ``step``: a fresh seeded permutation each epoch, a pure function of step.

    Being a function of (seed, step) alone is what makes resumption exact and lets every
    rank of a distributed run agree on the global batch without communication.
    """
    start = step * batch_size
    out: list[Tensor] = []
    while sum(len(o) for o in out) < batch_size:
        epoch, offset = divmod(start, num_examples)
        perm = torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        take = perm[offset : offset + batch_size - sum(len(o) for o in out)]
        out.append(take)
        start += len(take)
    return torch.cat(out)
