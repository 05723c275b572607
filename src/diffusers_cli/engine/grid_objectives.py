"""What a tuned time grid minimises: distances between a sampler's batch and an accurate solve of the same noise.

Each objective is a *view* of a batch (the pixels, a fixed network's features, the model's own
denoising of it) and a *distance* between two views. Splitting them lets ``held_out`` resample
rows of the views (a paired bootstrap) without recomputing a view, so every objective also has
a standard error, which the tuner's "never worse" check needs.

- ``path``: the RMS difference image by image (pure discretisation error; deterministic samplers
  only, as a stochastic sampler's path leaves the ODE's by design). It rewards the blur of a long
  last step: a blurred image is close to every sharp image it could have been.
- ``moments``: the per-element 2-Wasserstein distance between the moment-matched Gaussians of the
  two batches; blur shows as missing spread.
- ``mmd``: the squared maximum mean discrepancy of a Gaussian kernel on pixels (bandwidth: the
  median distance within the reference), sensitive to the whole distribution, not two moments.
- ``features``: ``moments`` on the features of a fixed random convolutional network (edges and
  blobs at two scales): a Frechet-like distance with no downloaded weights, which sees blur as
  missing edge energy.
- ``denoised``: the RMS difference, image by image, of the model's own denoising of both batches
  after the same noise at log-SNR 0: what the model makes of each image's coarse content.

Which one ranks grids as a judge of the pictures does is measured by ``benchmarks/grid_objectives.py``
(its table is in benchmarks/README.md); ``DEFAULT_OBJECTIVE`` is that study's pick.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where a distance is computed: the registry answers `diffuse tune --help` at once
    from torch import Tensor

    from diffusers_cli.engine.score import ScoreFn
    from diffusers_cli.engine.sde import SDE

#: Seed of the fixed random feature network and of the denoising noise: the same for every grid and model.
_FIXED_SEED = 20240


@dataclass(frozen=True)
class Context:
    """What a view may need besides the batch: the model's SDE and score (for ``denoised``)."""

    sde: SDE
    score_fn: ScoreFn


@dataclass(frozen=True)
class Objective:
    """One thing a grid can minimise: a view of a batch and a distance between two views (rows paired)."""

    name: str
    help: str
    per_sample: bool  # compares image i with reference image i: only meaningful for deterministic samplers
    view: Callable[[Tensor, Context], Tensor]  # batch -> [batch, features] float64
    distance: Callable[[Tensor, Tensor], float]  # (view of samples, view of reference) -> error

    def __call__(self, x: Tensor, ref: Tensor, ctx: Context) -> float:
        """The error of batch ``x`` against ``ref`` (same noise, row for row)."""
        return self.distance(self.view(x, ctx), self.view(ref, ctx))


def _pixels(x: Tensor, ctx: Context) -> Tensor:
    return x.detach().double().flatten(1)


def _rms(a: Tensor, b: Tensor) -> float:
    return float((a - b).pow(2).mean().sqrt())


def _moment_w2(a: Tensor, b: Tensor) -> float:
    d2 = (a.mean(0) - b.mean(0)) ** 2 + (a.std(0) - b.std(0)) ** 2
    return float(d2.mean().sqrt())


def _mmd(a: Tensor, b: Tensor) -> float:
    import torch

    # Biased (V-statistic) estimate: never negative, and its bias is the same for every grid compared on one reference.
    d_bb = torch.cdist(b, b)
    bandwidth = d_bb[d_bb > 0].median() if bool((d_bb > 0).any()) else torch.tensor(1.0, dtype=b.dtype)
    k = lambda d: torch.exp(-(d**2) / (2 * bandwidth**2))  # noqa: E731
    return float(k(torch.cdist(a, a)).mean() + k(d_bb).mean() - 2 * k(torch.cdist(a, b)).mean())


_feature_nets: dict[int, Any] = {}


def _feature_net(channels: int) -> Any:
    """A fixed random conv net (the same weights everywhere, from ``_FIXED_SEED``): 3x3 edges, then pooled blobs."""
    import torch
    from torch import nn

    if channels not in _feature_nets:
        gen = torch.Generator().manual_seed(_FIXED_SEED + channels)
        conv1, conv2 = nn.Conv2d(channels, 32, 3, padding=1), nn.Conv2d(32, 32, 3, stride=2, padding=1)
        with torch.no_grad():
            for conv in (conv1, conv2):
                fan_in = conv.weight[0].numel()
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) / fan_in**0.5)
                conv.bias.zero_()
        _feature_nets[channels] = nn.Sequential(conv1, nn.ReLU(), conv2, nn.ReLU(), nn.AdaptiveAvgPool2d(4)).double().eval()
    return _feature_nets[channels]


def _features(x: Tensor, ctx: Context) -> Tensor:
    import torch

    with torch.no_grad():
        return _feature_net(x.shape[1])(x.detach().double().cpu()).flatten(1)


def _denoised(x: Tensor, ctx: Context) -> Tensor:
    # Noise at log-SNR 0 (as much noise as signal), the same noise for every batch of this shape, then the model's
    # posterior mean of the clean image (Tweedie's formula).
    import torch

    lam = torch.zeros(x.shape[0], dtype=torch.float64)
    t = ctx.sde.t_from_log_snr(lam).to(x.device, x.dtype)
    mean, std = (v.view(-1, *[1] * (x.ndim - 1)) for v in ctx.sde.marginal(t))
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(_FIXED_SEED), dtype=x.dtype).to(x.device)
    x_t = mean * x + std * z
    with torch.no_grad():
        x0 = ctx.sde.tweedie(x_t, t, ctx.score_fn(x_t, t))
    return x0.detach().double().flatten(1).cpu()


#: The objectives, by name (`diffuse tune --objective` lists these).
OBJECTIVES: dict[str, Objective] = {o.name: o for o in (
    Objective("path", "each image's RMS error against an accurate solve of the same noise (deterministic samplers)",
              True, _pixels, _rms),
    Objective("moments", "2-Wasserstein distance of the batch's per-pixel mean and spread to the accurate solve's",
              False, _pixels, _moment_w2),
    Objective("mmd", "maximum mean discrepancy (Gaussian kernel on pixels) between the batch and the accurate solve",
              False, _pixels, _mmd),
    Objective("features", "mean-and-spread distance on a fixed random conv net's features (edges, blobs)",
              False, _features, _moment_w2),
    Objective("denoised", "each image's RMS error after noising to log-SNR 0 and the model's denoising (deterministic samplers)",
              True, _denoised, _rms),
)}

#: The objective `diffuse tune` minimises unless told otherwise (the study's pick; see the module docstring).
DEFAULT_OBJECTIVE = "mmd"


def check_objective(name: str, stochastic: bool) -> Objective:
    """The objective named ``name``; ValueError naming the choices (a per-sample one needs a deterministic sampler)."""
    if name not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {name!r}")
    objective = OBJECTIVES[name]
    if stochastic and objective.per_sample:
        allowed = ", ".join(n for n, o in OBJECTIVES.items() if not o.per_sample)
        raise ValueError(f"the {name!r} objective compares image by image, which needs a deterministic sampler; "
                         f"for a stochastic one use {allowed}")
    return objective


@dataclass(frozen=True)
class HeldOut:
    """A tuned grid against the default on noise the search never saw."""

    batch: int
    default: float  # the objective at the default grid
    tuned: float  # the objective at the tuned grid
    se: float  # standard error of (default - tuned), paired bootstrap over images
    kept: bool  # whether the tuned grid beat the default by more than ``se``


def held_out(objective: Objective, tuned: Tensor, default: Tensor, ref: Tensor, ctx: Context,
             resamples: int = 200, seed: int = 0) -> HeldOut:
    """Compare two batches of samples (same noise as ``ref``, row for row) under ``objective``, with a paired bootstrap SE."""
    import torch

    vt, vd, vr = objective.view(tuned, ctx), objective.view(default, ctx), objective.view(ref, ctx)
    err_t, err_d = objective.distance(vt, vr), objective.distance(vd, vr)
    gen = torch.Generator().manual_seed(seed)
    n = vr.shape[0]
    gaps = []
    for _ in range(resamples):
        # The same images on both sides of each resample: the SE of the difference, not of each error alone.
        idx = torch.randint(0, n, (n,), generator=gen)
        gaps.append(objective.distance(vd[idx], vr[idx]) - objective.distance(vt[idx], vr[idx]))
    se = float(torch.tensor(gaps, dtype=torch.float64).std())
    return HeldOut(n, err_d, err_t, se, err_d - err_t > se)
