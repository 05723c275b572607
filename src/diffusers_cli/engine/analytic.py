"""Analytic data distributions with closed-form perturbed scores: diagonal Gaussians and their mixtures.

Under any SDE here, x_0 ~ N(mu, diag(v)) gives x_t ~ N(m mu, diag(m^2 v + s^2)), so the exact
score, log-density, class posterior p_t(y | x) and conditional given observed pixels are known.
They drive accuracy tests and benchmarks of samplers, likelihood, guidance and imputation.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffusers_cli.engine.score import ScoreFn
from diffusers_cli.engine.sde import SDE
from diffusers_cli.engine.utils import append_dims


class GaussianMixture:
    """sum_k w_k N(mu_k, diag(var_k)) on images of shape ``means.shape[1:]``; one component is a Gaussian."""

    def __init__(
        self,
        means: Tensor,  # [K, C, H, W] component means
        variances: Tensor,  # [K, C, H, W] per-pixel variances, or broadcastable to it
        weights: Tensor | None = None,  # [K] mixture weights (uniform if None)
    ) -> None:
        self.means = means.double()
        self.variances = torch.broadcast_to(variances.double(), means.shape).clone()
        k = means.shape[0]
        w = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else weights.double()
        if (self.variances <= 0).any() or (w <= 0).any():
            raise ValueError("variances and weights must be positive")
        self.log_weights = torch.log(w / w.sum())

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one sample."""
        return tuple(self.means.shape[1:])

    def _params_at(self, sde: SDE | None, t: Tensor | None, like: Tensor) -> tuple[Tensor, Tensor]:
        """Per-example component means and variances of p_t: [B, K, C, H, W] each."""
        mu = self.means.to(like.device)[None]
        var = self.variances.to(like.device)[None]
        if sde is None or t is None:
            return mu, var
        m, s = sde.marginal(t.double())
        m = append_dims(m, mu.ndim)
        s = append_dims(s, mu.ndim)
        return m * mu, m * m * var + s * s

    def component_log_probs(self, x: Tensor, sde: SDE | None = None, t: Tensor | None = None) -> Tensor:
        """log w_k + log N(x; component k of p_t), shaped [B, K] (t=None: the data distribution)."""
        mu, var = self._params_at(sde, t, x)
        xd = x.double()[:, None]
        ll = -0.5 * ((xd - mu) ** 2 / var + torch.log(2 * math.pi * var)).flatten(2).sum(-1)
        return ll + self.log_weights.to(x.device)

    def log_prob(self, x: Tensor, sde: SDE | None = None, t: Tensor | None = None) -> Tensor:
        """log p_t(x) per example [B], in nats."""
        return torch.logsumexp(self.component_log_probs(x, sde, t), dim=1)

    def class_posterior(self, x: Tensor, sde: SDE | None = None, t: Tensor | None = None) -> Tensor:
        """p_t(y = k | x) for each component k: the exact noise-aware classifier, [B, K]."""
        return torch.softmax(self.component_log_probs(x, sde, t), dim=1)

    def score(self, x: Tensor, t: Tensor, sde: SDE) -> Tensor:
        """grad_x log p_t(x), in x's dtype."""
        mu, var = self._params_at(sde, t, x)
        resp = self.class_posterior(x, sde, t)
        per_comp = -(x.double()[:, None] - mu) / var
        return (append_dims(resp, per_comp.ndim) * per_comp).sum(1).to(x.dtype)

    def score_fn(self, sde: SDE) -> ScoreFn:
        """The exact score of this distribution perturbed by ``sde``."""
        return lambda x, t: self.score(x, t, sde)

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """n exact draws and their component labels."""
        labels = torch.multinomial(self.log_weights.exp(), n, replacement=True, generator=generator)
        z = torch.randn((n, *self.shape), generator=generator, dtype=torch.float64)
        return (self.means[labels] + self.variances[labels].sqrt() * z).float(), labels

    def observed_posterior(self, x_obs: Tensor, mask: Tensor) -> Tensor:
        """p(y = k | observed pixels) for x_obs [C, H, W] known where mask == 1: the exact imputation weights [K]."""
        keep = mask.bool().expand(self.shape)
        mu = self.means[:, keep]
        var = self.variances[:, keep]
        xo = x_obs.double().expand(self.shape)[keep]
        ll = -0.5 * ((xo - mu) ** 2 / var + torch.log(2 * math.pi * var)).sum(-1)
        return torch.softmax(ll + self.log_weights, dim=0)


def gaussian(mean: Tensor, variance: Tensor) -> GaussianMixture:
    """A single diagonal Gaussian N(mean, diag(variance)) for an image shape ``mean.shape``."""
    return GaussianMixture(mean[None], torch.broadcast_to(variance, mean.shape)[None])


def imputation_problem(
    seed: int,
    size: int = 8,  # images are [1, size, size]
    known: int = 4,  # observed pixels, at random places
    weights: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4),  # mixture weights (one component per entry)
    sep: float = 1.0,  # how many stds apart the components' means are at the known pixels (about)
    var: float = 0.1,  # every pixel's variance within a component
    comp: int = 0,  # the component the observation is drawn from (0: the rarest by default)
) -> tuple[GaussianMixture, Tensor, Tensor]:
    """(mixture, x_known [1, 1, size, size], mask) for imputation: an observation the exact posterior can judge.

    Elsewhere than the known pixels the component means differ by about 0.5 / sqrt(var) stds per pixel,
    so a fill's component can be read off it (``component_log_probs(x).argmax(1)``).
    """
    g = torch.Generator().manual_seed(seed)
    k = len(weights)
    means = 0.5 * torch.randn(k, 1, size, size, generator=g)
    pos = torch.randperm(size * size, generator=g)[:known]
    means.view(k, -1)[:, pos] = sep * var**0.5 * torch.randn(k, known, generator=g)
    gm = GaussianMixture(means, torch.tensor(var), torch.tensor(weights))
    mask = torch.zeros(1, 1, size, size)
    mask.view(-1)[pos] = 1
    x = (means[comp] + var**0.5 * torch.randn(1, size, size, generator=g))[None] * mask
    return gm, x, mask
