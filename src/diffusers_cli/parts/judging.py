"""Reading images with an independent judge (`builtin:mnist-judge`): which class each is, and how sure it is.

A lesson or benchmark asks "how many samples are recognisable digits?" here rather than of the classifier that
steered them, which would grade its own guidance. The judge is a plain CNN of clean images
(``engine.networks.judge``); its card carries its recipe and held-out accuracy.

The same judge decides between two time grids (``judged_gap``, ``grid_check``): the share of samples it recognises
and the Frechet distance of its features to real images, each with the paired standard error of the gap.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from diffusers_cli.checkpoints.card import ModelCard
from diffusers_cli.config.schema import SamplerConfig
from diffusers_cli.engine.grid_tuning import GridCheck
from diffusers_cli.engine.metrics.fid import frechet_distance
from diffusers_cli.engine.networks.judge import Judge, class_probabilities, judge_images
from diffusers_cli.engine.rng import ImageGenerators
from diffusers_cli.engine.samplers import sample
from diffusers_cli.engine.score import ScoreModel, make_score_fn
from diffusers_cli.models import resolve_model_path
from diffusers_cli.models.ours import load_net
from diffusers_cli.parts.drawing import guided_score_fns
from diffusers_cli.support.errors import UsageError

#: The judge used when none is named.
DEFAULT_JUDGE = "builtin:mnist-judge"
#: The job seed of the noise a tuned grid is judged on is this plus the tuning seed: never a sampling job's 0..255
#: nor the benchmarks' seed 0, so the judged targets are measured on noise the check never saw.
CHECK_SEED = 1_000_003


@lru_cache(maxsize=4)
def load_judge(model: str | Path = DEFAULT_JUDGE) -> tuple[Judge, ModelCard]:
    """The judge network (float32, eval mode) and its card, read once per process: ``builtin:NAME`` or a file.

    CheckpointError (a UsageError: exit 2, one line) when the file is missing, damaged, or holds no judge.
    """
    path = resolve_model_path(str(model))
    if path.is_dir():
        raise UsageError(f"{model} is a folder; a judge is one .safetensors file (e.g. {DEFAULT_JUDGE})")
    net, card = load_net(path, "judge")
    assert isinstance(net, Judge)  # the card's arch "judge" builds a Judge (models.ours.NETWORKS)
    return net.float(), card


def judge(images: Tensor, model: str | Path = DEFAULT_JUDGE) -> tuple[Tensor, Tensor]:
    """(classes [n], confidence [n]) the judge gives images [n, C, H, W] in [-1, 1], as ``dc.sample`` returns them.

    A class is an index into the judge's ``card.class_names``; the last one is "none" (not plainly any class).
    The benchmarks and lessons count an image as recognised when its class is not "none" and confidence >= 0.9.
    """
    net, card = load_judge(model)
    if images.dim() != 4 or tuple(images.shape[1:]) != card.image_shape:
        raise UsageError(f"{model} reads images [n, {', '.join(map(str, card.image_shape))}]; got {list(images.shape)}")
    with torch.no_grad():
        p = class_probabilities(net, images.detach().to("cpu", torch.float32))
    confidence, classes = p.max(dim=1)
    return classes, confidence


def judged_gap(x_tuned: Tensor, x_default: Tensor, judge_net: nn.Module, real: Tensor, resamples: int = 50) -> dict[str, Any]:
    """The judge's view of two batches drawn from the same noise (row for row): recognised shares, judge FDs against
    ``real`` images, and the paired standard error of each gap (per image for the share, a bootstrap for the FD)."""
    ok_t = judge_images(judge_net, x_tuned)[1].double()
    ok_d = judge_images(judge_net, x_default)[1].double()
    with torch.no_grad():
        # Unclamped, as benchmarks/shapes_quality.py takes a judge FD: an overshoot is part of what is measured.
        f_t, f_d, f_r = (judge_net.features(x.float()).double() for x in (x_tuned, x_default, real))
    mu_r, cov_r = f_r.mean(0).numpy(), torch.cov(f_r.T).numpy()

    def fd(a: Tensor) -> float:
        return frechet_distance(a.mean(0).numpy(), torch.cov(a.T).numpy(), mu_r, cov_r)

    gen = torch.Generator().manual_seed(0)
    gaps = []
    for _ in range(resamples):  # the same images on both sides of each resample: the SE of the gap, not of each FD
        idx = torch.randint(0, len(f_t), (len(f_t),), generator=gen)
        gaps.append(fd(f_t[idx]) - fd(f_d[idx]))
    n = len(ok_t)
    return {"n": n, "recognised": round(ok_t.mean().item(), 4), "default_recognised": round(ok_d.mean().item(), 4),
            "recognised_gap_se": round(float((ok_t - ok_d).std() / n**0.5), 4),
            "judge_fd": round(fd(f_t), 2), "default_judge_fd": round(fd(f_d), 2),
            "judge_fd_gap_se": round(float(torch.tensor(gaps).std()), 2)}


def lost(gap: dict[str, Any]) -> bool:
    """Whether the tuned grid of a ``judged_gap`` loses: a lower recognised share or a higher judge FD, either by
    more than the standard error of its gap (the measure the judged targets and the shipped grids are held to)."""
    return (gap["default_recognised"] - gap["recognised"] > gap["recognised_gap_se"]
            or gap["judge_fd"] - gap["default_judge_fd"] > gap["judge_fd_gap_se"])


def wins(gap: dict[str, Any]) -> bool:
    """Whether a tuned grid may replace the default (``grid_check``'s rule): better by more than its standard error on
    one measure, and not ``lost`` on the other.

    A clear win is asked for, not merely no loss: the default grid is what a user gets without tuning, so a grid
    that is only level with it on this noise buys nothing and risks a loss on other noise. The other measure is held
    to the targets' own criterion (a loss is a gap beyond its SE) so that a large gain in one is not thrown away for
    a dip inside the noise of the other.
    """
    share = gap["recognised"] - gap["default_recognised"]
    fd = gap["default_judge_fd"] - gap["judge_fd"]
    return (fd > gap["judge_fd_gap_se"] or share > gap["recognised_gap_se"]) and not lost(gap)


def real_images(dataset: str, image_size: int, channels: int, n: int, data_dir: str | Path | None = None,
                seed: int = 7) -> Tensor:
    """``n`` real images of ``dataset`` in [-1, 1] from its test split (a seeded subset): what a judge FD is taken to."""
    from diffusers_cli.data import load_dataset

    ds, _ = load_dataset(dataset, image_size, data_dir, "test", seed, n, channels, False)
    return torch.stack([ds[i][0] for i in range(min(n, len(ds)))])


def grid_check(model: ScoreModel, card: ModelCard, sampler: SamplerConfig, judge_net: nn.Module, real: Tensor,
               n: int = 256, seed: int = 0, guidance: float | None = None, device: torch.device | str = "cpu") -> GridCheck:
    """``engine.grid_tuning.tune``'s last gate: draw ``n`` images with each grid as `diffuse sample` draws them (every
    class in turn, guided at ``guidance``), on per-image noise of job seed ``CHECK_SEED + seed``, and keep the tuned
    grid only if it ``wins`` under the judge."""
    scale = guidance
    fns = guided_score_fns(model, card.num_classes, None, scale, torch.device(device)) if scale is not None else None
    score_fn = fns(0, n) if fns is not None else make_score_fn(model)

    def check(tuned: Tensor, default: Tensor) -> tuple[bool, dict[str, Any]]:
        with torch.no_grad():
            x_t, x_d = (sample(model.sde, score_fn, (n, *card.image_shape), sampler.name, sampler.steps,
                               ImageGenerators.for_images(CHECK_SEED + seed, 0, n, device), device=device, grid=times,
                               eps=sampler.eps, final_denoise=sampler.final_denoise, **sampler.options)
                        for times in (tuned, default))
        gap = judged_gap(x_t.cpu(), x_d.cpu(), judge_net, real)
        return wins(gap), {**gap, "seed": CHECK_SEED + seed}

    return check
