"""Noise schedules beta(t) on t in [0, 1]: linear (Ho et al. 2020), cosine (Nichol & Dhariwal 2021), and tabulated betas.

A schedule is continuous: ``beta(t)`` is the instantaneous rate and ``integral(t)`` is
``B(t) = int_0^t beta(s) ds = -log alpha_bar(t)``. The discrete DDPM view (``T`` steps,
``betas[i]``) is derived from the same functions, so there is one source of truth.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor

# Nichol & Dhariwal clip every discrete beta at 0.999 so the last step is not singular;
# in continuous time that is the rate -T log(1 - 0.999) for the reference T = 1000.
COSINE_BETA_CLIP = 0.999
REFERENCE_T = 1000


class Schedule(ABC):
    """A noise-rate schedule beta(t) on t in [0, 1] with its integral B(t) = -log alpha_bar(t)."""

    @abstractmethod
    def beta(self, t: Tensor) -> Tensor:
        """Instantaneous rate beta(t)."""

    @abstractmethod
    def integral(self, t: Tensor) -> Tensor:
        """B(t) = int_0^t beta(s) ds, so that alpha_bar(t) = exp(-B(t))."""

    @abstractmethod
    def inverse_integral(self, b: Tensor) -> Tensor:
        """The t with B(t) = b (B is strictly increasing)."""

    def alpha_bar(self, t: Tensor) -> Tensor:
        """alpha_bar(t) = exp(-B(t)): the squared signal coefficient of the VP marginal."""
        return torch.exp(-self.integral(t))

    @abstractmethod
    def discrete_betas(self, num_steps: int = REFERENCE_T) -> Tensor:
        """The DDPM view: betas[i], i = 0..T-1, of a T-step discrete chain (float64)."""

    def discrete_alpha_bars(self, num_steps: int = REFERENCE_T) -> Tensor:
        """Cumulative products prod_{j<=i} (1 - betas[j]) of the discrete chain (float64)."""
        return torch.cumprod(1.0 - self.discrete_betas(num_steps), dim=0)


class LinearSchedule(Schedule):
    """beta(t) = beta_min + t (beta_max - beta_min); discretised, betas = linspace(beta_min/T, beta_max/T)."""

    def __init__(
        self,
        beta_min: float = 0.1,  # rate at t = 0 (DDPM's 1e-4 times T = 1000)
        beta_max: float = 20.0,  # rate at t = 1 (DDPM's 0.02 times T = 1000)
    ) -> None:
        if not 0 < beta_min < beta_max:
            raise ValueError(f"need 0 < beta_min < beta_max, got {beta_min}, {beta_max}")
        self.beta_min = float(beta_min)
        self.beta_max = float(beta_max)

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def integral(self, t: Tensor) -> Tensor:
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def inverse_integral(self, b: Tensor) -> Tensor:
        # Solve 0.5 d t^2 + beta_min t - b = 0 for t >= 0, in the cancellation-free form.
        d = self.beta_max - self.beta_min
        return 2.0 * b / (self.beta_min + torch.sqrt(self.beta_min**2 + 2.0 * d * b))

    def discrete_betas(self, num_steps: int = REFERENCE_T) -> Tensor:
        t = torch.linspace(0.0, 1.0, num_steps, dtype=torch.float64)
        return self.beta(t) / num_steps

    def __repr__(self) -> str:
        return f"LinearSchedule(beta_min={self.beta_min}, beta_max={self.beta_max})"


class CosineSchedule(Schedule):
    """alpha_bar(t) = f(t) / f(0), f(t) = cos(pi/2 (t + s) / (1 + s))^2, with the rate clipped near t = 1."""

    def __init__(
        self,
        s: float = 0.008,  # small offset so beta(0) is not too small (Nichol & Dhariwal)
        beta_clip: float = COSINE_BETA_CLIP,  # largest discrete beta of the T = 1000 chain
    ) -> None:
        if not 0 <= s < 1 or not 0 < beta_clip < 1:
            raise ValueError(f"need 0 <= s < 1 and 0 < beta_clip < 1, got {s}, {beta_clip}")
        self.s = float(s)
        self.beta_clip = float(beta_clip)
        # Continuous rate cap equivalent to the discrete clip at the reference T.
        self.rate_cap = -REFERENCE_T * math.log1p(-self.beta_clip)
        # The cap is hit where pi/(1+s) tan(phi) = rate_cap; past t_cap the rate is constant.
        phi_cap = math.atan(self.rate_cap * (1 + self.s) / math.pi)
        self.t_cap = min(1.0, phi_cap * 2 * (1 + self.s) / math.pi - self.s)
        self._b_cap = self._b_unclipped(torch.tensor(self.t_cap, dtype=torch.float64)).item()

    def _phi(self, t: Tensor) -> Tensor:
        return 0.5 * math.pi * (t + self.s) / (1 + self.s)

    def _b_unclipped(self, t: Tensor) -> Tensor:
        log_f0 = 2 * math.log(math.cos(0.5 * math.pi * self.s / (1 + self.s)))
        return log_f0 - 2 * torch.log(torch.cos(self._phi(t)))

    def beta(self, t: Tensor) -> Tensor:
        rate = math.pi / (1 + self.s) * torch.tan(self._phi(torch.clamp(t, max=self.t_cap)))
        return torch.where(t < self.t_cap, rate, torch.full_like(rate, self.rate_cap))

    def integral(self, t: Tensor) -> Tensor:
        # Rounding can make B(0) a hair below zero, and std = sqrt(1 - e^-B) would be NaN there.
        inside = self._b_unclipped(torch.clamp(t, max=self.t_cap)).clamp_min(0.0)
        return torch.where(t < self.t_cap, inside, self._b_cap + self.rate_cap * (t - self.t_cap))

    def inverse_integral(self, b: Tensor) -> Tensor:
        log_f0 = 2 * math.log(math.cos(0.5 * math.pi * self.s / (1 + self.s)))
        # cos(phi)^2 = exp(log_f0 - b)  =>  phi = arccos(exp((log_f0 - b) / 2)).
        phi = torch.arccos(torch.exp(0.5 * (log_f0 - torch.clamp(b, max=self._b_cap))))
        inside = phi * 2 * (1 + self.s) / math.pi - self.s
        return torch.where(b < self._b_cap, inside, self.t_cap + (b - self._b_cap) / self.rate_cap)

    def discrete_betas(self, num_steps: int = REFERENCE_T) -> Tensor:
        t = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
        f = torch.cos(self._phi(t)) ** 2
        betas = 1.0 - f[1:] / f[:-1]
        return torch.clamp(betas, max=self.beta_clip)

    def __repr__(self) -> str:
        return f"CosineSchedule(s={self.s}, beta_clip={self.beta_clip})"


class TabulatedSchedule(Schedule):
    """A T-step chain given by its betas (e.g. a diffusers scheduler's table), continuous in t between the steps.

    B(i / T) = -log prod_{j<i} (1 - betas[j]) exactly, and B is linear on each [i / T, (i + 1) / T]
    (so log alpha is, as in DPM-Solver's discrete-time noise schedule).
    """

    def __init__(self, betas: Sequence[float] | Tensor) -> None:
        table = torch.as_tensor(betas, dtype=torch.float64).detach().cpu().clone()
        if table.ndim != 1 or table.numel() < 1 or not bool(((table > 0) & (table < 1)).all()):
            raise ValueError("betas must be a non-empty 1-D table of values in (0, 1)")
        self.betas = table
        self.num_steps = int(table.numel())
        self._rates = -torch.log1p(-table) * self.num_steps  # slope of B on each interval
        self._knots = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(-torch.log1p(-table), 0)])

    def _index(self, t: Tensor) -> Tensor:
        return torch.clamp((t.detach() * self.num_steps).floor().long(), 0, self.num_steps - 1).cpu()

    def beta(self, t: Tensor) -> Tensor:
        return self._rates[self._index(t)].to(device=t.device, dtype=t.dtype)

    def integral(self, t: Tensor) -> Tensor:
        i = self._index(t)
        k = self._knots[i].to(device=t.device, dtype=t.dtype)
        return k + self._rates[i].to(device=t.device, dtype=t.dtype) * (t - i.to(t.device, t.dtype) / self.num_steps)

    def inverse_integral(self, b: Tensor) -> Tensor:
        knots = self._knots.to(device=b.device, dtype=b.dtype)
        i = torch.clamp(torch.searchsorted(knots, b.contiguous(), right=True) - 1, 0, self.num_steps - 1)
        rates = self._rates.to(device=b.device, dtype=b.dtype)
        return i.to(b.dtype) / self.num_steps + (b - knots[i]) / rates[i]

    def discrete_betas(self, num_steps: int = REFERENCE_T) -> Tensor:
        if num_steps != self.num_steps:
            raise ValueError(f"this table has {self.num_steps} steps, not {num_steps}")
        return self.betas.clone()

    def __repr__(self) -> str:
        return f"TabulatedSchedule({self.num_steps} betas, {float(self.betas[0]):.4g}..{float(self.betas[-1]):.4g})"
