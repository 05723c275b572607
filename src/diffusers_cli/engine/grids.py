"""Time grids for samplers: pure functions from (sde, steps, eps) to a decreasing tensor t_0 = T > ... > t_N = eps."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import torch
from torch import Tensor

from diffusers_cli.engine.options import Opt, OptionError, registry_entry, validate_options
from diffusers_cli.engine.sde import SDE

#: ``grid(sde, steps, eps, **options) -> ts``; keyword-only parameters are the grid's options (engine.options).
Grid = Callable[..., Tensor]


def uniform_time(sde: SDE, steps: int, eps: float) -> Tensor:
    """Equal steps in t (score_sde's default)."""
    return torch.linspace(sde.T, eps, steps + 1, dtype=torch.float64)


def quadratic_time(sde: SDE, steps: int, eps: float) -> Tensor:
    """Equal steps in sqrt(t): finer near the data (DPM-Solver's time_quadratic)."""
    return _pin_ends(torch.linspace(sde.T**0.5, eps**0.5, steps + 1, dtype=torch.float64) ** 2, sde.T, eps)


def uniform_log_snr(sde: SDE, steps: int, eps: float) -> Tensor:
    """Equal steps in log-SNR lambda(t) (DPM-Solver's logSNR grid)."""
    ends = sde.log_snr(torch.tensor([sde.T, eps], dtype=torch.float64))
    lam = torch.linspace(float(ends[0]), float(ends[1]), steps + 1, dtype=torch.float64)
    return _pin_ends(sde.t_from_log_snr(lam), sde.T, eps)


def karras(
    sde: SDE,
    steps: int,
    eps: float,
    *,
    rho: Annotated[float, Opt("Karras' rho: larger puts more steps near the data (EDM: 7)", gt=0)] = 7.0,
) -> Tensor:
    """Karras et al. (2022): equal steps in sigma^(1/rho), sigma = std / mean = exp(-lambda)."""
    ends = torch.exp(-sde.log_snr(torch.tensor([sde.T, eps], dtype=torch.float64)))
    ramp = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    sigma = (ends[0] ** (1 / rho) + ramp * (ends[1] ** (1 / rho) - ends[0] ** (1 / rho))) ** rho
    return _pin_ends(sde.t_from_log_snr(-torch.log(sigma)), sde.T, eps)


def _pin_ends(t: Tensor, start: float, end: float) -> Tensor:
    # Round trips through log-SNR lose a few ulps; the ends must be exactly where sampling starts and stops.
    t = t.clone()
    t[0], t[-1] = start, end
    return t


GRIDS: dict[str, Grid] = {
    "uniform": uniform_time,
    "quadratic": quadratic_time,
    "logsnr": uniform_log_snr,
    "karras": karras,
}


#: The name of a grid tuned to one model (``engine.grid_tuning.tune_grid``): not a function of the SDE, so the caller passes its times.
TUNED = "tuned"


def check_grid(kind: str) -> Grid:
    """The grid function named ``kind``; OptionError listing the grids otherwise."""
    if kind == TUNED:
        raise OptionError("the 'tuned' grid belongs to one model: pass its times (from engine.grid_tuning.tune_grid) as the grid")
    return registry_entry(GRIDS, kind, "time grid")


def check_times(sde: SDE, ts: Tensor, steps: int) -> Tensor:
    """An explicit grid as float64 after checking it: 1-D, steps + 1 finite times, strictly decreasing, inside (0, T]."""
    t = torch.as_tensor(ts).detach().to("cpu", torch.float64)
    if t.ndim != 1 or t.numel() != steps + 1:
        raise OptionError(f"a grid of {steps} steps has {steps + 1} times, got a tensor of shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise OptionError("the grid's times must be finite")
    if not bool((t[1:] < t[:-1]).all()):
        raise OptionError(f"the grid's times must decrease strictly (from T = {sde.T} towards 0), got {t.tolist()}")
    # A few ulps above T come from round trips through log-SNR; anything more is outside the process.
    if float(t[0]) > sde.T * (1 + 1e-9) or float(t[-1]) <= 0:
        raise OptionError(f"the grid's times must lie in (0, {sde.T}], got {float(t[0])} .. {float(t[-1])}")
    return t


def time_grid(sde: SDE, steps: int, kind: str = "uniform", eps: float | None = None, **options: Any) -> Tensor:
    """The grid named ``kind`` with ``steps`` intervals from T down to ``eps`` (the SDE's default if None)."""
    fn = check_grid(kind)
    if steps < 1:
        raise OptionError(f"steps must be at least 1, got {steps}")
    end = sde.eps if eps is None else float(eps)
    if not 0 < end < sde.T:
        raise OptionError(f"eps must lie in (0, {sde.T}), got {end}")
    return fn(sde, steps, end, **validate_options(fn, options, f"grid {kind!r}"))
