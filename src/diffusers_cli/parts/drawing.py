"""Drawing images from a score model: per-image seeds, batches sharded across ranks, classifier-free guidance plans.

Shared by the sample, condition and evaluate jobs and by training's preview and evaluation hooks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from diffusers_cli.checkpoints.card import ModelCard
from diffusers_cli.config.schema import SamplerConfig
from diffusers_cli.data import class_index
from diffusers_cli.config.defaults import DEFAULT_GUIDANCE
from diffusers_cli.support.distributed import World, all_gather
from diffusers_cli.engine.guidance import classifier_free, cycle_labels
from diffusers_cli.engine.rng import ImageGenerators
from diffusers_cli.engine.samplers import sample
from diffusers_cli.engine.score import NFECounter, ScoreFn, ScoreModel
from diffusers_cli.engine.sde import SDE
from diffusers_cli.support.errors import UsageError
from diffusers_cli.support.progress import Reporter
from diffusers_cli.support.image_grids import make_grid

#: Columns of the --trajectory strip (x_t at evenly spaced steps, plus the result).
TRAJECTORY_FRAMES = 10


def guidance_plan(card: ModelCard, label: str | None, guidance: float | None, path: Path) -> tuple[int | None, float | None]:
    """(one class or None for all in turn, guidance scale) for a class-conditional model; (None, None) otherwise."""
    if not card.class_conditional:
        if label is not None or guidance is not None:
            raise UsageError(f"{path} is an unconditional model, so --class and --guidance do not apply; train with "
                             "--class-conditional, or steer this model with `diffuse condition --classifier RUN`")
        return None, None
    index = class_index(label, card.class_names) if label is not None else None
    return index, DEFAULT_GUIDANCE if guidance is None else guidance


def guided_score_fns(model: ScoreModel, num_classes: int, label: int | None, scale: float,
                     device: torch.device) -> Callable[[int, int], ScoreFn]:
    """For ``draw``: the guided score of samples start .. start + size - 1 (one class, or sample i of class i mod K)."""

    def score_fn_for(start: int, size: int) -> ScoreFn:
        return classifier_free(model, label if label is not None else cycle_labels(start, size, num_classes, device), scale)

    return score_fn_for


def draw(
    sde: SDE,
    score_fn: ScoreFn,
    shape: tuple[int, ...],
    n: int,
    batch_size: int,
    seed: int,
    s: SamplerConfig,
    device: torch.device,
    world: World,
    reporter: Reporter,
    callback_for: Callable[[int], Any] | None = None,
    score_fn_for: Callable[[int, int], ScoreFn] | None = None,
    first: int = 0,
    times: Tensor | None = None,
) -> tuple[Tensor, int]:
    """n samples in batches split across ranks; returns (images, NFE per sample).

    Sample i draws all its noise from its own generator, seeded by (seed, i) (``engine.rng``), so
    it is the same image whatever the batch size or the number of processes. ``score_fn_for(start,
    size)``, when given, replaces ``score_fn`` for the batch of samples start .. start + size - 1
    (e.g. a conditional score with those samples' labels). ``first`` offsets the indices: the samples are
    images first .. first + n - 1 of the job, so any one of them can be made again alone. ``times``
    replaces ``s.grid`` with explicit times (``--grid tuned``: ``tuned_grids.tuned_times``).
    """
    n_batches = -(-n // batch_size)
    mine = [b for b in range(n_batches) if b % world.size == world.rank]
    reporter.start(len(mine), f"sampling {n} images with {s.name}")
    parts: dict[int, Tensor] = {}
    nfe_per_batch = 0
    for b in mine:
        size = min(batch_size, n - b * batch_size)
        counter = NFECounter(score_fn_for(first + b * batch_size, size) if score_fn_for else score_fn)
        gens = ImageGenerators.for_images(seed, first + b * batch_size, size, device)
        x = sample(sde, counter, (size, *shape), s.name, s.steps, gens, device=device,
                   grid=s.grid if times is None else times, eps=s.eps, final_denoise=s.final_denoise,
                   callback=callback_for(b) if callback_for else None, **s.options)
        nfe_per_batch = counter.nfe
        parts[b] = x.float().cpu()
        reporter.advance(1, nfe=nfe_per_batch)
    reporter.finish()
    if not world.distributed:
        return torch.cat([parts[b] for b in sorted(parts)]), nfe_per_batch
    # Batches went round-robin: rank k made batches k, k + size, ... Every rank pads its share to
    # full batches, all ranks gather, and the batches are put back in order with their true sizes.
    rounds = -(-n_batches // world.size)
    mine_padded = torch.zeros((rounds, batch_size, *shape), device=device)
    for r in range(rounds):
        b = r * world.size + world.rank
        if b in parts:
            mine_padded[r, : parts[b].shape[0]] = parts[b].to(device)
    everyone = all_gather(mine_padded, world)
    ordered = [everyone[b % world.size][b // world.size, : min(batch_size, n - b * batch_size)] for b in range(n_batches)]
    return torch.cat(ordered).cpu(), nfe_per_batch


class Trajectory:
    """Collects x_t of the first images at evenly spaced steps for the --trajectory strip."""

    def __init__(self, steps: int, rows: int = 8) -> None:
        self.every = max(1, steps // TRAJECTORY_FRAMES)
        self.rows = rows
        self.frames: list[Tensor] = []
        self.marks: list[tuple[int, float]] = []  # (steps taken, time t) of each frame: the --labels captions

    def __call__(self, info: dict[str, Any]) -> None:
        if info["i"] % self.every == 0:
            self.frames.append(info["x"][: self.rows].float().cpu())
            self.marks.append((int(info["i"]) + 1, float(info["t"])))

    def strip(self, final: Tensor, captions: list[str] | None = None) -> Tensor:
        """Rows = samples, columns = time (noise on the left, the result on the right), as a uint8 grid.

        ``captions`` (one per column, e.g. ``self.captions(sde)``) go under the columns (``grid_labels``).
        """
        frames = [f.clamp(-1, 1) for f in self.frames] + [final[: self.rows]]
        stacked = torch.stack(frames, dim=1)  # [rows, frames, C, H, W]
        if captions is not None:
            from diffusers_cli.support.labelled_grids import labelled_grid

            return labelled_grid(stacked.flatten(0, 1), nrow=len(frames), column_captions=captions)
        return make_grid(stacked.flatten(0, 1), nrow=len(frames))

    def captions(self, sde: SDE) -> list[str]:
        """One per column: the steps taken and the noise level sigma = std / mean = exp(-lambda(t)) there, then "result"."""
        ts = torch.tensor([t for _, t in self.marks], dtype=torch.float64)
        sigmas = torch.exp(-sde.log_snr(ts)).tolist() if self.marks else []  # engine lambda is log(mean / std)
        return [f"step {i}\nsigma {s:.3g}" for (i, _), s in zip(self.marks, sigmas)] + ["result"]
