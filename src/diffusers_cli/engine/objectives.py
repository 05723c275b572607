"""Training objectives as small callables (after EDM's ``EDMLoss``): denoising score matching and a noise-aware classifier.

An objective has two parts, so that distributed training and exact resumption keep working:
``draw`` spends the run's generator on the GLOBAL batch (times, noise, label dropout), and the
loop then gives each rank its slice; ``forward`` computes the per-example loss of a slice and
is the module DistributedDataParallel wraps. Drawing globally is what makes any world size see
the same examples, and drawing only from the run's generator is what lets a saved generator
resume the run bit for bit.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from diffusers_cli.engine.losses import classifier_loss, dsm_loss
from diffusers_cli.engine.weightings import DEFAULT_WEIGHTING
from diffusers_cli.engine.choices import TimeSampling, names
from diffusers_cli.engine.score import ScoreModel
from diffusers_cli.engine.sde import SDE

#: Per-example tensors [B, ...]: the keyword arguments of an objective's ``forward``.
Batch = dict[str, Tensor]
#: Accuracy of a classifier is logged per noise level in these bins of t.
T_BINS = (0.0, 0.25, 0.5, 0.75, 1.0001)
TIME_SAMPLINGS = names(TimeSampling)


def lognormal_importance_weights(sde: SDE, t: Tensor, p_mean: float, p_std: float, widen: float) -> Tensor:
    """p / q at times drawn with ln(sigma) ~ q = N(p_mean, (widen p_std)^2): weighted, they estimate the p = N(p_mean, p_std^2) objective."""
    # Inside (eps, T) the ratio of the two normals' densities: widen * exp(-z^2 (1 - 1 / widen^2) / 2), z in p's
    # units. The draws that lognormal_times clamps to eps or T stand for a whole tail, so theirs is the ratio of
    # the tails' masses: then every moment of the clamped p is matched, the ends included.
    def z_of(time: Tensor) -> Tensor:
        return (-sde.log_snr(time.double()) - p_mean) / p_std

    z = z_of(t)
    w = widen * torch.exp(-0.5 * z**2 * (1.0 - 1.0 / widen**2))
    ends = z_of(torch.tensor([sde.eps, sde.T], dtype=t.dtype, device=t.device))
    lo, hi = torch.special.ndtr(ends[0]), torch.special.ndtr(-ends[1])  # p's mass below eps and above T ...
    qlo, qhi = torch.special.ndtr(ends[0] / widen), torch.special.ndtr(-ends[1] / widen)  # ... and q's
    w = torch.where(t <= sde.eps, lo / qlo, torch.where(t >= sde.T, hi / qhi, w))
    return w.to(t.dtype)


class Objective(nn.Module):
    """A training loss: ``draw`` its randomness for a global batch, then ``forward(**batch)`` -> (loss [B], statistics)."""

    def draw(self, x: Tensor, y: Tensor, generator: torch.Generator | None) -> Batch:
        """The inputs of ``forward`` for the global batch (images x, labels y), randomness from ``generator``."""
        raise NotImplementedError

    def observe(self, batch: Batch, stats: dict[str, Tensor]) -> None:
        """Accumulate one step's statistics (a rank's slice) for the next log record; nothing by default."""

    def report(self) -> dict[str, Any]:
        """Fields for the log record of the steps observed since the last report, which it resets."""
        return {}


class ScoreObjective(Objective):
    """Denoising score matching (``dsm_loss``) of a score model, at log-normal or uniform times, with label dropout.

    "importance" draws ln(sigma) from a log-normal ``importance_widen`` times wider and weights each loss by the
    density ratio: the same objective as "lognormal", with less gradient noise from the rare noise levels whose
    gradients are largest (benchmarks/time_importance.py measures how much).
    """

    def __init__(
        self,
        model: ScoreModel,  # the preconditioned score model being trained
        weighting: str = DEFAULT_WEIGHTING,  # lambda(t) of ``dsm_loss``: a name in engine.weightings.WEIGHTINGS
        time_sampling: str = "lognormal",  # "lognormal" (EDM) where the SDE trains at continuous times; "uniform": its own
        lognormal_mean: float = -1.2,  # ln(sigma) ~ N(mean, std^2), sigma = std(t) / mean(t)
        lognormal_std: float = 1.2,
        conditional: bool = False,  # the net takes class labels
        label_dropout: float = 0.1,  # probability a label becomes "no class" (-1), so the net also learns p(x)
        min_snr_gamma: float = 5.0,  # gamma of the "min-snr" weighting
        importance_widen: float = 1.5,  # "importance": the drawing log-normal's std over lognormal_std
    ) -> None:
        super().__init__()
        if min_snr_gamma <= 0:
            raise ValueError(f"min_snr_gamma must be positive, got {min_snr_gamma}")
        if importance_widen < 1:
            raise ValueError(f"importance_widen must be at least 1, got {importance_widen}")
        self.importance_widen = importance_widen
        self.min_snr_gamma = min_snr_gamma
        if time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"unknown time sampling {time_sampling!r}; use one of {', '.join(TIME_SAMPLINGS)}")
        self.model = model
        self.weighting = weighting
        self.time_sampling = time_sampling
        self.lognormal_mean = lognormal_mean
        self.lognormal_std = lognormal_std
        self.conditional = conditional
        self.label_dropout = label_dropout

    def draw(self, x: Tensor, y: Tensor, generator: torch.Generator | None) -> Batch:
        # The order of the draws (t, eps, dropout) is part of every saved run: resuming replays it.
        sde, n = self.model.sde, x.shape[0]
        lognormal = self.time_sampling in ("lognormal", "importance") and sde.continuous_time
        widen = self.importance_widen if self.time_sampling == "importance" else 1.0
        if lognormal:
            t = sde.lognormal_times(n, generator, x.device, self.lognormal_mean, widen * self.lognormal_std)
        else:  # the SDE's own: uniform on [eps, T], or DDPM's integer steps
            t = sde.train_times(n, generator, x.device)
        eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        if self.conditional:
            y = torch.where(torch.rand(n, generator=generator, device=x.device) < self.label_dropout, -1, y)
        batch = {"x": x, "y": y, "t": t, "eps": eps}
        if lognormal and widen != 1.0:
            batch["w"] = lognormal_importance_weights(sde, t, self.lognormal_mean, self.lognormal_std, widen)
        return batch

    def forward(self, x: Tensor, y: Tensor, t: Tensor, eps: Tensor, w: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """(per-example DSM loss [B], times the importance weights w if any; no statistics)."""
        loss = dsm_loss(self.model, x, None, self.weighting, y if self.conditional else None, t, eps, self.min_snr_gamma)
        return (loss if w is None else loss * w), {}


class ClassifierObjective(Objective):
    """Cross-entropy of a noise-aware classifier (``classifier_loss``) at the SDE's training times; accuracy per bin of t."""

    def __init__(
        self,
        classifier: nn.Module,  # (x_in, c_noise) -> logits
        sde: SDE,  # the process whose perturbed data it must recognise
        bins: tuple[float, ...] = T_BINS,  # edges of the bins of t its accuracy is reported in
    ) -> None:
        super().__init__()
        self.net = classifier
        self.sde = sde
        self.bins = bins
        self._counts = torch.zeros(len(bins) - 1, 2)  # (correct, seen) per bin, since the last report

    def draw(self, x: Tensor, y: Tensor, generator: torch.Generator | None) -> Batch:
        # Guidance asks the classifier at every noise level: it keeps the SDE's times, never log-normal ones.
        t = self.sde.train_times(x.shape[0], generator, x.device)
        eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return {"x": x, "y": y, "t": t, "eps": eps}

    def forward(self, x: Tensor, y: Tensor, t: Tensor, eps: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """(per-example cross-entropy [B], {"correct": [B] bool})."""
        loss, correct, _ = classifier_loss(self.net, self.sde, x, y, None, t, eps)
        return loss, {"correct": correct}

    def observe(self, batch: Batch, stats: dict[str, Tensor]) -> None:
        b = torch.bucketize(batch["t"].float().cpu(), torch.tensor(self.bins[1:-1]))
        self._counts.index_put_((b, torch.zeros_like(b)), stats["correct"].float().cpu(), accumulate=True)
        self._counts.index_put_((b, torch.ones_like(b)), torch.ones_like(b, dtype=torch.float), accumulate=True)

    def report(self) -> dict[str, Any]:
        edges = self.bins
        acc = {f"{edges[i]:.2f}-{min(edges[i + 1], 1):.2f}": round(float(a / max(c, 1)), 4)
               for i, (a, c) in enumerate(self._counts.tolist())}
        self._counts.zero_()
        return {"accuracy_by_t": acc}
