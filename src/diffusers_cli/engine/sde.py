"""Forward SDEs of score-based models (Song et al. 2021): VE, VP, subVP, and DDPM as a discrete VP.

Every SDE here has a Gaussian perturbation kernel x_t | x_0 ~ N(mean(t) x_0, std(t)^2 I),
so samplers need only ``drift_diffusion``, ``marginal`` and what is derived from them
(log-SNR, the exact transition between two times). No sampler asks which SDE it has.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor

from diffusers_cli.engine.schedules import REFERENCE_T, LinearSchedule, Schedule, TabulatedSchedule
from diffusers_cli.engine.rng import RNG, randn
from diffusers_cli.engine.utils import append_dims


class SDE(ABC):
    """dx = f(x, t) dt + g(t) dw on t in [0, T] with a Gaussian perturbation kernel."""

    T: float = 1.0
    #: Default end time of sampling and smallest training time (the score blows up at 0).
    eps: float = 1e-3
    #: Whether training may perturb data at any time in [eps, T] (EDM's log-normal times); a chain
    #: trained on its own discrete steps (DDPM) says False, and training always uses ``train_times``.
    continuous_time: bool = True

    @abstractmethod
    def drift_diffusion(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Forward drift f(x, t) shaped like x, and diffusion g(t) shaped [B]."""

    @abstractmethod
    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(mean coefficient, std) of x_t | x_0, each shaped like t."""

    @abstractmethod
    def log_snr(self, t: Tensor) -> Tensor:
        """lambda(t) = log(mean(t) / std(t)), strictly decreasing in t."""

    @abstractmethod
    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        """Inverse of ``log_snr``."""

    # Derived quantities: shared by every SDE, so no sampler needs an isinstance check.

    def prior_std(self) -> float:
        """Standard deviation of the prior N(0, std(T)^2 I) that sampling starts from."""
        return float(self.marginal(torch.tensor(self.T, dtype=torch.float64))[1])

    def prior_sample(
        self,
        shape: tuple[int, ...],
        generator: RNG = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """Draw x_T from the prior (per image if ``generator`` is an ImageGenerators)."""
        z = randn(shape, generator, device, dtype)
        return z * self.prior_std()

    def prior_logp(self, z: Tensor) -> Tensor:
        """Log-density of the prior at z, per example [B] (nats)."""
        s = self.prior_std()
        d = z[0].numel()
        sq = z.reshape(z.shape[0], -1).pow(2).sum(dim=1)
        return -0.5 * d * math.log(2 * math.pi * s * s) - 0.5 * sq / (s * s)

    def transition(self, s: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(a, b) with x_t = a x_s + b z exactly, for s < t: the kernel between two marginals."""
        m_s, std_s = self.marginal(s)
        m_t, std_t = self.marginal(t)
        a = m_t / m_s
        b2 = std_t**2 - (a * std_s) ** 2
        return a, torch.sqrt(torch.clamp(b2, min=0.0))

    def noise_label(self, t: Tensor) -> Tensor:
        """The scalar a network is conditioned on: -log-SNR / 4 (EDM's c_noise = ln(sigma) / 4)."""
        return -0.25 * self.log_snr(t)

    def train_times(self, batch: int, generator: torch.Generator | None, device: torch.device | str) -> Tensor:
        """Times at which training perturbs data: uniform on [eps, T]."""
        u = torch.rand(batch, generator=generator, device=device)
        return self.eps + (self.T - self.eps) * u

    def lognormal_times(
        self,
        batch: int,
        generator: torch.Generator | None,
        device: torch.device | str,
        p_mean: float = -1.2,  # EDM's log-normal over sigma = std / mean: where the loss can still be reduced
        p_std: float = 1.2,
    ) -> Tensor:
        """Training times with ln(std / mean) ~ N(p_mean, p_std^2) (Karras et al. 2022), kept in [eps, T]."""
        z = torch.randn(batch, generator=generator, device=device, dtype=torch.float64)
        t = self.t_from_log_snr(-(p_mean + p_std * z))
        return t.clamp(self.eps, self.T).to(torch.float32)

    def tweedie(self, x: Tensor, t: Tensor, score: Tensor) -> Tensor:
        """Posterior mean E[x_0 | x_t] = (x + std^2 score) / mean (Tweedie's formula)."""
        m, s = self.marginal(t)
        return (x + append_dims(s**2, x.ndim) * score) / append_dims(m, x.ndim)


class VESDE(SDE):
    """Variance exploding: sigma(t) = sigma_min (sigma_max / sigma_min)^t, no drift (SMLD / NCSN)."""

    eps = 1e-5

    def __init__(
        self,
        sigma_min: float = 0.01,  # noise std at t = 0
        sigma_max: float = 50.0,  # noise std at t = T; about the largest pairwise data distance
    ) -> None:
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)

    def _sigma(self, t: Tensor) -> Tensor:
        return self.sigma_min * torch.exp(t * self._log_ratio)

    def drift_diffusion(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        return torch.zeros_like(x), self._sigma(t) * math.sqrt(2 * self._log_ratio)

    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return torch.ones_like(t), self._sigma(t)

    def log_snr(self, t: Tensor) -> Tensor:
        return -torch.log(self._sigma(t))

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        return (-lam - math.log(self.sigma_min)) / self._log_ratio

    def __repr__(self) -> str:
        return f"VESDE(sigma_min={self.sigma_min}, sigma_max={self.sigma_max})"


class VPSDE(SDE):
    """Variance preserving: dx = -beta(t) x / 2 dt + sqrt(beta(t)) dw (DDPM in continuous time)."""

    eps = 1e-3

    def __init__(self, schedule: Schedule | None = None) -> None:
        self.schedule = schedule if schedule is not None else LinearSchedule()

    def drift_diffusion(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        beta = self.schedule.beta(t)
        return -0.5 * append_dims(beta, x.ndim) * x, torch.sqrt(beta)

    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        b = self.schedule.integral(t)
        return torch.exp(-0.5 * b), torch.sqrt(-torch.expm1(-b))

    def log_snr(self, t: Tensor) -> Tensor:
        b = self.schedule.integral(t)
        return -0.5 * b - 0.5 * torch.log(-torch.expm1(-b))

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        # alpha_bar = sigmoid(2 lambda)  =>  B = -log sigmoid(2 lambda) = softplus(-2 lambda).
        return self.schedule.inverse_integral(torch.nn.functional.softplus(-2.0 * lam))

    def __repr__(self) -> str:
        return f"VPSDE({self.schedule!r})"


class SubVPSDE(VPSDE):
    """Sub-VP: the VP drift with diffusion sqrt(beta (1 - exp(-2 B(t)))); std(t) = 1 - alpha_bar(t)."""

    def drift_diffusion(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        beta = self.schedule.beta(t)
        b = self.schedule.integral(t)
        return -0.5 * append_dims(beta, x.ndim) * x, torch.sqrt(beta * -torch.expm1(-2.0 * b))

    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        b = self.schedule.integral(t)
        return torch.exp(-0.5 * b), -torch.expm1(-b)

    def log_snr(self, t: Tensor) -> Tensor:
        b = self.schedule.integral(t)
        return -0.5 * b - torch.log(-torch.expm1(-b))

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        # With u = exp(-B/2): u / (1 - u^2) = e^lam, the positive root written without cancellation.
        e = torch.exp(lam)
        u = 2.0 * e / (1.0 + torch.sqrt(1.0 + 4.0 * e * e))
        return self.schedule.inverse_integral(-2.0 * torch.log(u))

    def __repr__(self) -> str:
        return f"SubVPSDE({self.schedule!r})"


class DiscreteSchedule(TabulatedSchedule):
    """The T-step DDPM chain of a schedule: its discrete betas as a table, B(i / T) = -log prod_{j<i} (1 - beta_j), linear between."""

    def __init__(self, base: Schedule, num_steps: int = REFERENCE_T) -> None:
        self.base = base
        super().__init__(base.discrete_betas(int(num_steps)))

    def __repr__(self) -> str:
        return f"DiscreteSchedule({self.base!r}, num_steps={self.num_steps})"


class DDPM(VPSDE):
    """DDPM (Ho et al. 2020): the VP process observed at t = i / T, trained on integer steps i."""

    continuous_time = False

    def __init__(self, schedule: Schedule | None = None, num_steps: int = REFERENCE_T) -> None:
        super().__init__(DiscreteSchedule(schedule if schedule is not None else LinearSchedule(), num_steps))
        self.num_steps = int(num_steps)
        self.eps = 1.0 / self.num_steps  # x_1 is the last noisy state; x_0 is its posterior mean

    def train_times(self, batch: int, generator: torch.Generator | None, device: torch.device | str) -> Tensor:
        i = torch.randint(1, self.num_steps + 1, (batch,), generator=generator, device=device)
        return i.to(torch.float32) / self.num_steps

    def __repr__(self) -> str:
        return f"DDPM({self.schedule.base!r}, num_steps={self.num_steps})"
