"""Samplers of the reverse process (Song et al. 2021; Ho et al. 2020): each a plain function over any ScoreFn.

A sampler has the signature ``fn(sde, score_fn, x, ts, *, generator, callback, **options)``:
``x`` is the prior draw at ``ts[0] = T``, ``ts`` a decreasing time grid (see ``grids``), and
it returns x at ``ts[-1]``. ``sample`` builds the grid, draws the prior, runs the sampler and
applies the final denoising step. A new sampler is one function plus one line in SAMPLERS.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Protocol

import torch
from torch import Tensor

from diffusers_cli.engine.grids import time_grid
from diffusers_cli.engine.score import ScoreFn
from diffusers_cli.engine.sde import SDE
from diffusers_cli.engine.utils import append_dims, batch_norm, randn_like

#: Receives {"x", "i", "t", "denoised"} after each step: progress bars, previews, trajectories hang off it.
#: It may return a tensor to replace x (imputation re-imposes the known pixels this way), or None.
Callback = Callable[[dict[str, Any]], "Tensor | None"]


class Sampler(Protocol):
    """The signature every entry of SAMPLERS has."""

    def __call__(
        self,
        sde: SDE,
        score_fn: ScoreFn,
        x: Tensor,
        ts: Tensor,
        *,
        generator: torch.Generator | None = None,
        callback: Callback | None = None,
        **options: Any,
    ) -> Tensor: ...


def notify(callback: Callback | None, x: Tensor, i: int, t: float, denoised: Tensor) -> Tensor:
    """Call the callback after step i (x now at time t) and return x, or the tensor it returned instead."""
    if callback is None:
        return x
    out = callback({"x": x, "i": i, "t": t, "denoised": denoised})
    return x if out is None else out


def _vec(t: Tensor, x: Tensor) -> Tensor:
    """A grid time as a per-example vector [B] in x's dtype and device."""
    return torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)


# Predictor steps: (sde, score_fn, x, t, s, generator) -> (x at s, score at t), with s < t.


def reverse_diffusion_step(
    sde: SDE, score_fn: ScoreFn, x: Tensor, t: Tensor, s: Tensor, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """score_sde's reverse-diffusion predictor, on the SDE's exact kernel x_t = a x_s + b z."""
    score = score_fn(x, t)
    a, b = sde.transition(s, t)
    a, b = append_dims(a, x.ndim), append_dims(b, x.ndim)
    # Undo the forward increment f = (a - 1) x and add the discretised reverse drift G^2 score.
    x_mean = (2.0 - a) * x + b * b * score
    return x_mean + b * randn_like(x, generator), score


def euler_maruyama_step(
    sde: SDE, score_fn: ScoreFn, x: Tensor, t: Tensor, s: Tensor, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """One Euler-Maruyama step of the reverse SDE dx = [f - g^2 score] dt + g dw."""
    score = score_fn(x, t)
    drift, g = sde.drift_diffusion(x, t)
    g = append_dims(g, x.ndim)
    dt = append_dims(s - t, x.ndim)  # negative: time runs backwards
    x_mean = x + (drift - g * g * score) * dt
    return x_mean + g * torch.sqrt(-dt) * randn_like(x, generator), score


def ancestral_step(
    sde: SDE, score_fn: ScoreFn, x: Tensor, t: Tensor, s: Tensor, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """DDPM's ancestral step: draw x_s from q(x_s | x_t, x_0 = Tweedie estimate), for any Gaussian-kernel SDE."""
    score = score_fn(x, t)
    x0 = sde.tweedie(x, t, score)
    m_s, std_s = sde.marginal(s)
    _, std_t = sde.marginal(t)
    a, b = sde.transition(s, t)
    nd = x.ndim
    coef_x = append_dims(a * std_s**2 / std_t**2, nd)
    coef_x0 = append_dims(m_s * b**2 / std_t**2, nd)
    std = append_dims(std_s * b / std_t, nd)  # DDPM's beta-tilde variance
    return coef_x * x + coef_x0 * x0 + std * randn_like(x, generator), score


PREDICTORS: dict[str, Callable[..., tuple[Tensor, Tensor]]] = {
    "reverse-diffusion": reverse_diffusion_step,
    "euler-maruyama": euler_maruyama_step,
    "ancestral": ancestral_step,
}


def langevin_step(
    sde: SDE, score_fn: ScoreFn, x: Tensor, t: Tensor, alpha: Tensor, snr: float, generator: torch.Generator | None
) -> Tensor:
    """score_sde's Langevin corrector: step size 2 alpha (snr ||z|| / ||score||)^2, norms averaged over the batch."""
    score = score_fn(x, t)
    z = randn_like(x, generator)
    # Batch-averaged norms, as score_sde: a per-example ratio makes the step depend on x itself,
    # which biases the chain (variance +30 % on a 16-d Gaussian); the batch mean is nearly constant.
    ratio = snr * batch_norm(z).mean() / batch_norm(score).mean().clamp_min(1e-12)
    step = append_dims(2.0 * alpha * ratio**2, x.ndim)
    return x + step * score + torch.sqrt(2.0 * step) * z


def _run_predictor(
    step_fn: Callable[..., tuple[Tensor, Tensor]],
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    ts: Tensor,
    generator: torch.Generator | None,
    callback: Callback | None,
    corrector: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None,
) -> Tensor:
    for i in range(len(ts) - 1):
        t, s = _vec(ts[i], x), _vec(ts[i + 1], x)
        if corrector is not None:
            x = corrector(x, t, s)
        x_t = x
        x, score = step_fn(sde, score_fn, x_t, t, s, generator)
        if callback is not None:  # the Tweedie estimate costs a little; skip it when nobody listens
            x = notify(callback, x, i, float(ts[i + 1]), sde.tweedie(x_t, t, score))
    return x


def sample_em(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    ts: Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """Euler-Maruyama on the reverse-time SDE (1 NFE a step)."""
    return _run_predictor(euler_maruyama_step, sde, score_fn, x, ts, generator, callback)


def sample_pc(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    ts: Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    snr: float = 0.16,  # Langevin signal-to-noise ratio (score_sde: 0.16 for CIFAR-10)
    corrector_steps: int = 1,  # Langevin steps at each time; 0 makes PC its bare predictor
    predictor: str = "reverse-diffusion",  # or "euler-maruyama", "ancestral"
) -> Tensor:
    """Predictor-corrector (score_sde): Langevin correction at t_i, then a predictor step to t_{i+1}."""
    if predictor not in PREDICTORS:
        raise ValueError(f"unknown predictor {predictor!r}; use one of {sorted(PREDICTORS)}")
    if snr <= 0 or corrector_steps < 0:
        raise ValueError(f"need snr > 0 and corrector_steps >= 0, got {snr}, {corrector_steps}")

    def correct(x: Tensor, t: Tensor, s: Tensor) -> Tensor:
        # alpha_i = 1 - beta_i of the step ahead for VP-type SDEs and 1 for VE: the squared kernel scale.
        alpha = sde.transition(s, t)[0] ** 2
        for _ in range(corrector_steps):
            x = langevin_step(sde, score_fn, x, t, alpha, snr, generator)
        return x

    return _run_predictor(PREDICTORS[predictor], sde, score_fn, x, ts, generator, callback, correct)


def sample_ddpm(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    ts: Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """DDPM ancestral sampling (Ho et al. 2020), on any grid and any of the SDEs (1 NFE a step)."""
    return _run_predictor(ancestral_step, sde, score_fn, x, ts, generator, callback)


SAMPLERS: dict[str, Sampler] = {
    "em": sample_em,
    "pc": sample_pc,
    "ddpm": sample_ddpm,
}

#: Grid each sampler uses unless told otherwise.
DEFAULT_GRIDS: dict[str, str] = {
    "em": "uniform",
    "pc": "uniform",
    "ddpm": "uniform",
}


def sampler_options(name: str) -> dict[str, Any]:
    """The keyword options (with defaults) that sampler ``name`` accepts beyond the common ones."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; use one of {sorted(SAMPLERS)}")
    common = {"sde", "score_fn", "x", "ts", "generator", "callback"}
    params = inspect.signature(SAMPLERS[name]).parameters
    return {k: p.default for k, p in params.items() if k not in common and p.kind is p.KEYWORD_ONLY}


def denoise(sde: SDE, score_fn: ScoreFn, x: Tensor, t: float) -> Tensor:
    """The final denoising step: Tweedie's posterior mean E[x_0 | x_t] at the last grid time (1 NFE)."""
    tv = _vec(torch.tensor(t), x)
    return sde.tweedie(x, tv, score_fn(x, tv))


def sample(
    sde: SDE,
    score_fn: ScoreFn,
    shape: tuple[int, ...],
    sampler: str = "pc",
    steps: int = 1000,
    generator: torch.Generator | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    grid: str | None = None,  # None: the sampler's default grid
    eps: float | None = None,  # end time; None: the SDE's default
    final_denoise: bool = True,  # finish with Tweedie's x_0 estimate (1 extra NFE)
    x_init: Tensor | None = None,  # start from this x_T instead of a prior draw
    callback: Callback | None = None,
    **options: Any,
) -> Tensor:
    """Draw samples of ``shape`` by integrating the reverse process of ``sde`` driven by ``score_fn``."""
    allowed = sampler_options(sampler)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"sampler {sampler!r} takes no option {unknown[0]!r}; it takes {sorted(allowed) or 'none'}")
    ts = time_grid(sde, steps, grid or DEFAULT_GRIDS.get(sampler, "uniform"), eps)
    with torch.no_grad():
        x = sde.prior_sample(shape, generator, device, dtype) if x_init is None else x_init
        x = SAMPLERS[sampler](sde, score_fn, x, ts, generator=generator, callback=callback, **options)
        if final_denoise:
            x = denoise(sde, score_fn, x, float(ts[-1]))
    return x
