"""Imputation (inpainting) on top of any sampler: replacement, RePaint, SMC (MCGdiff) and twisted SMC (TDS).

Inputs: ``x_known`` [B, C, H, W] in data space and ``mask`` [B or 1, C or 1, H, W] with
**1 = known (observed) pixel, 0 = pixel to fill**. (PNG masks use the opposite convention,
white = fill; ``masks.mask_from_image`` converts, in one place.) Every method returns one
draw per image, and the known pixels of every output equal ``x_known`` exactly.

Methods:

- ``replacement`` (Song et al. 2021, appendix I): after each step of *any* sampler, through
  its callback, set the known pixels to a fresh draw of the forward marginal
  mean(s) x_known + std(s) z. Cheap (the sampler's NFE) but biased: the missing pixels only
  see the known ones through heavily noised copies, so once the missing pixels commit to a
  mode the known ones barely pull them back. A few informative pixels are nearly ignored
  (on a 3-component mixture its draws follow the prior's component weights more than the
  posterior's; see tests/test_imputation.py and benchmarks/controllable.py).
- ``repaint`` (Lugmayr et al. 2022): replacement plus resampling: after reaching some
  times, jump back up ``jump_length`` steps with the exact forward transition and redo
  them, ``resample`` times in all, so that known and generated content harmonise. About
  ``steps * resample`` NFE. Less biased than replacement, still not exact.
- ``smc``: sequential Monte Carlo over the reverse chain, as MCGdiff (Cardoso et al. 2023) does
  for noiseless linear observations (inpainting is the case where the SVD is trivial).
  ``particles`` chains per image target p(x_{t_k}) N(x_obs; mean(t_k) x_known, std(t_k)^2),
  which at the last time is the posterior given the known pixels. The observed coordinates
  are drawn from the optimal (Gaussian product) proposal that bridges them toward the
  noised observation, the weights are the marginal likelihoods of the observation under
  each particle's predicted mean, and particles are resampled (systematic by default)
  when the effective sample size falls below ``ess_threshold * particles``. One particle
  is drawn from the final weighted set. Asymptotically exact, but its potentials see only the
  known pixels: the missing ones commit to a mode blind to the observation, so few particles
  are not enough when the observation favours what the prior finds rare.
- ``twisted`` (what ``auto`` runs for few known pixels): twisted SMC (TDS, Wu et al. 2023). The
  potential is h_t(x) = N(x_known; E[x_0 | x_t] on the known pixels, r_t^2), with r_t^2 the variance
  of x_0 given x_t for pixels of std ``twist_scale``; each move is the ancestral kernel with its mean
  moved by std^2 grad log h_t (one backward pass through the score per step), weighted by
  p h_s / (q h_t). The gradient steers every pixel toward fills that explain the observation while
  the image is still undecided, so a handful of particles does what SMC needs dozens for. Exact in
  the limit of particles (any positive twist keeps it so); ``twist_scale`` only sets how well few
  particles do: the conditional std of a pixel given what the image is (benchmarks/README.md has the
  measured range). Cost: particles x (1 forward + 1 backward) per step.

``impute(..., n=4)`` runs a particle system per draw, so draws are independent (never copies
of one surviving particle).

The default, ``auto``, picks by the mask: ``twisted`` when at most ``SMC_MAX_KNOWN_PIXELS`` pixels
are known, ``repaint`` otherwise. With few informative known pixels only the SMC methods are right
(replacement and RePaint stay far from the exact posterior at any NFE). With many known pixels the
measurement goes the other way (RePaint keeps a hidden half-shape's class more often than SMC or
replacement): the known region then constrains the rest strongly, and RePaint's repeated passes
harmonise it. ``replacement`` is the cheap option (the sampler's NFE), for any sampler.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from typing import Annotated, Any

import torch
from torch import Tensor

from diffusers_cli.engine.grids import time_grid
from diffusers_cli.engine.options import (
    Opt,
    OptionError,
    OptionSpec,
    option_specs,
    registry_entry,
    validate_options,
)
from diffusers_cli.engine.rng import RNG, multinomial, rand
from diffusers_cli.engine.samplers import (
    PREDICTORS,
    SAMPLERS,
    Callback,
    ancestral_kernel,
    check_sampler,
    denoise,
    notify,
    sample,
)
from diffusers_cli.engine.score import ScoreFn
from diffusers_cli.engine.sde import SDE
from diffusers_cli.engine.utils import append_dims, randn_like, time_vector

#: The method ``impute`` uses unless told otherwise: "auto" picks twisted or repaint by the mask (see ``choose_method``).
DEFAULT_METHOD = "auto"
#: "auto" uses twisted up to this many known pixels per image, repaint above: smc wins on one observed pixel and
#: repaint on a known half-image (the measured ends are in benchmarks/README.md); in between is unmeasured, so
#: 32 pixels is a judgement, not a tuned value.
SMC_MAX_KNOWN_PIXELS = 32
RESAMPLING = ("systematic", "multinomial")
# The options the particle methods share (each method sets its own default for particles).
ParticlesOpt = Annotated[int, Opt("chains per image, evaluated as one batch of B * particles", ge=1)]
EssOpt = Annotated[float, Opt("resample when the ESS falls below this fraction of particles", ge=0, le=1)]
ResamplingOpt = Annotated[str, Opt("how ancestors are drawn", choices=RESAMPLING)]
#: Methods that run several chains per draw (their ``particles`` option).
PARTICLE_METHODS = ("twisted", "smc")


def prepare(x_known: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Check shapes and values; return (x_known, known mask as 0/1 in x's dtype, expanded to x's shape)."""
    if x_known.ndim != 4 or not x_known.is_floating_point():
        raise ValueError(f"x_known must be a float tensor [B, C, H, W], got {x_known.dtype} {tuple(x_known.shape)}")
    b, c, h, w = x_known.shape
    if mask.ndim != 4 or mask.shape[0] not in (1, b) or mask.shape[1] not in (1, c) or mask.shape[2:] != (h, w):
        raise ValueError(
            f"mask must be [{b} or 1, {c} or 1, {h}, {w}] for x_known {tuple(x_known.shape)}, got {tuple(mask.shape)}"
        )
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("mask must hold only 0 (fill) and 1 (known)")
    return x_known, mask.to(device=x_known.device, dtype=x_known.dtype).expand_as(x_known)


def paste(x: Tensor, values: Tensor, known: Tensor) -> Tensor:
    """x with its known pixels replaced by ``values`` (exactly, not by a blend)."""
    return torch.where(known.bool(), values, x)


def _noised(sde: SDE, x0: Tensor, t: Tensor | float, generator: RNG) -> Tensor:
    """A fresh draw of the forward marginal x_t | x_0 (t: a grid time or a vector [B])."""
    tv = t.to(x0.dtype) if isinstance(t, Tensor) and t.ndim == 1 else time_vector(t, x0)
    m, s = sde.marginal(tv)
    return append_dims(m, x0.ndim) * x0 + append_dims(s, x0.ndim) * randn_like(x0, generator)


def impute_replacement(
    sde: SDE,
    score_fn: ScoreFn,
    x_known: Tensor,
    mask: Tensor,
    *,
    steps: int = 1000,
    sampler: Annotated[str, Opt("the sampler replacement rides on (any of `diffuse samplers`)", choices=SAMPLERS)] = "pc",
    generator: RNG = None,
    grid: str | None = None,  # None: the sampler's default grid
    eps: float | None = None,  # end time; None: the SDE's default
    callback: Callback | None = None,  # sees x after the known pixels were replaced
    **sampler_options: Any,
) -> Tensor:
    """Replacement imputation (score_sde): re-impose the noised known pixels after every step of any sampler."""
    x_known, known = prepare(x_known, mask)
    check_sampler(sampler)

    def replace(info: dict[str, Any]) -> Tensor:
        x = paste(info["x"], _noised(sde, x_known, info["t"], generator), known)
        if callback is None:
            return x
        out = callback({**info, "x": x})  # forward whatever else the sampler reports
        return x if out is None else out

    with torch.no_grad():
        x_T = sde.prior_sample(tuple(x_known.shape), generator, x_known.device, x_known.dtype)
        x_T = paste(x_T, _noised(sde, x_known, sde.T, generator), known)
    out = sample(
        sde, score_fn, tuple(x_known.shape), sampler, steps, generator,
        device=x_known.device, dtype=x_known.dtype, grid=grid, eps=eps, x_init=x_T,
        callback=replace, **sampler_options,
    )  # fmt: skip
    return paste(out, x_known, known)


def repaint_schedule(steps: int, jump_length: int, resample: int) -> list[int]:
    """Grid indices RePaint visits, from 0 (time T) to ``steps`` (the end): +1 is a reverse step, -1 a jump back."""
    if steps < 1 or jump_length < 1 or resample < 1:
        raise ValueError(f"need steps, jump_length, resample >= 1, got {steps}, {jump_length}, {resample}")
    # Lugmayr et al.'s get_schedule_jump, on levels counted up from the end (level 0 = last grid time).
    jumps = {j: resample - 1 for j in range(0, steps - jump_length, jump_length)}
    level, levels = steps, [steps]
    while level >= 1:
        level -= 1
        levels.append(level)
        if jumps.get(level, 0) > 0:
            jumps[level] -= 1
            for _ in range(jump_length):
                level += 1
                levels.append(level)
    return [steps - lv for lv in levels]


def impute_repaint(
    sde: SDE,
    score_fn: ScoreFn,
    x_known: Tensor,
    mask: Tensor,
    *,
    steps: int = 250,
    jump_length: Annotated[int, Opt("how many steps each jump goes back up", ge=1)] = 10,
    resample: Annotated[int, Opt("how many times each jumped segment is traversed (RePaint's U); 1 = replacement", ge=1)] = 10,
    predictor: Annotated[str, Opt("the reverse step", choices=PREDICTORS)] = "ancestral",
    generator: RNG = None,
    grid: str = "uniform",
    eps: float | None = None,
    callback: Callback | None = None,  # called after every reverse step; i counts moves
) -> Tensor:
    """RePaint (Lugmayr et al. 2022): replacement with jumps back through the exact forward transition."""
    x_known, known = prepare(x_known, mask)
    if predictor not in PREDICTORS:
        raise OptionError(f"unknown predictor {predictor!r}; use one of {', '.join(PREDICTORS)}")
    step_fn = PREDICTORS[predictor]
    ts = time_grid(sde, steps, grid, eps)
    path = repaint_schedule(steps, jump_length, resample)
    with torch.no_grad():
        x = sde.prior_sample(tuple(x_known.shape), generator, x_known.device, x_known.dtype)
        x = paste(x, _noised(sde, x_known, sde.T, generator), known)
        for move, (i, j) in enumerate(pairwise(path)):
            t, s = time_vector(ts[i], x), time_vector(ts[j], x)
            if j > i:  # Reverse step, then re-impose the known pixels at the new time.
                x_t = x
                x, score = step_fn(sde, score_fn, x_t, t, s, generator)
                x = paste(x, _noised(sde, x_known, s, generator), known)
                if callback is not None:
                    x = notify(callback, x, move, float(ts[j]), sde.tweedie(x_t, t, score))
            else:  # Jump back: x_s = a x_t + b z with the exact forward kernel (here ts[j] > ts[i]).
                a, b = sde.transition(t, s)
                x = append_dims(a, x.ndim) * x + append_dims(b, x.ndim) * randn_like(x, generator)
        x = denoise(sde, score_fn, x, float(ts[-1]))
    return paste(x, x_known, known)


def _propose(
    mean: Tensor, std: Tensor, target: Tensor, var: Tensor, known: Tensor, generator: RNG
) -> Tensor:
    """Draw N(mean, std^2) on missing pixels and N(mean, std^2) x N(target, var), normalised, on known ones."""
    nd = mean.ndim
    std2, var = append_dims(std**2, nd), append_dims(var, nd)
    prec = 1.0 / std2 + 1.0 / var
    bridge = (mean / std2 + target / var) / prec
    loc = torch.where(known.bool(), bridge, mean)
    scale = torch.where(known.bool(), torch.rsqrt(prec), torch.sqrt(std2)).expand_as(mean)
    return loc + scale * randn_like(mean, generator)


def _log_normal_known(x: Tensor, loc: Tensor, var: Tensor, known: Tensor) -> Tensor:
    """sum over known pixels of log N(x; loc, var) up to a constant shared by the batch, [B]."""
    sq = (x - loc) ** 2 / append_dims(var, x.ndim)
    return -0.5 * (sq * known).flatten(1).sum(1)


def resample_indices(log_w: Tensor, method: str, generator: RNG) -> Tensor:
    """Ancestor indices [G, P] within each group of P particles, drawn from the normalised weights exp(log_w) [G, P]."""
    w = torch.softmax(log_w.double(), dim=1)
    g, p = w.shape
    if method == "multinomial":
        return multinomial(w, p, generator, replacement=True)
    if method == "systematic":
        u = rand((g, 1), generator, w.device, torch.float64)
        positions = (u + torch.arange(p, dtype=torch.float64, device=w.device)) / p
        cdf = torch.cumsum(w, dim=1)
        cdf[:, -1] = 1.0  # rounding must not push the last position past the end
        return torch.searchsorted(cdf, positions).clamp_max(p - 1)
    raise OptionError(f"unknown resampling {method!r}; use one of {', '.join(RESAMPLING)}")


def _particle_system(sde: SDE, x_known: Tensor, mask: Tensor, particles: int, ess_threshold: float, resampling: str,
                     steps: int, grid: str, eps: float | None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """What both particle methods start from: the checked observation and its mask, both repeated per particle
    [B * P, ...], the time grid, and each image's first particle's row [B, 1]."""
    x_known, known = prepare(x_known, mask)
    _check_particles(particles, ess_threshold, resampling)
    b, p = x_known.shape[0], particles
    y = x_known.repeat_interleave(p, dim=0)
    known_p = known.repeat_interleave(p, dim=0)
    ts = time_grid(sde, steps, grid, eps)
    return x_known, known, y, known_p, ts, (torch.arange(b, device=y.device) * p)[:, None]


def _check_particles(particles: int, ess_threshold: float, resampling: str) -> None:
    """OptionError unless the particle options of smc / twisted are valid."""
    if particles < 1 or not 0.0 <= ess_threshold <= 1.0:
        raise OptionError(f"need particles >= 1 and ess_threshold in [0, 1], got {particles}, {ess_threshold}")
    if resampling not in RESAMPLING:
        raise OptionError(f"unknown resampling {resampling!r}; use one of {', '.join(RESAMPLING)}")


def effective_sample_size(log_w: Tensor) -> Tensor:
    """ESS = 1 / sum w_i^2 of each group's normalised weights, [G]."""
    w = torch.softmax(log_w.double(), dim=1)
    return 1.0 / (w * w).sum(dim=1)


def resample_low(log_w: Tensor, threshold: float, resampling: str, generator: RNG, offsets: Tensor) -> tuple[Tensor | None, Tensor]:
    """Resample the images whose particles' ESS fell below ``threshold`` x particles (log_w is [B, particles]).

    Returns the flat indices [B * particles] that pick each particle's ancestor (the others keep their own), or None
    when no image needs it, and the log weights after: zero (uniform) where an image was resampled.
    """
    b, p = log_w.shape
    low = effective_sample_size(log_w) < threshold * p
    if not bool(low.any()):
        return None, log_w
    idx = resample_indices(log_w, resampling, generator)
    keep = torch.arange(p, device=log_w.device).expand(b, p)
    flat = (torch.where(low[:, None], idx, keep) + offsets).reshape(-1)
    return flat, torch.where(low[:, None], torch.zeros_like(log_w), log_w)


def impute_smc(
    sde: SDE,
    score_fn: ScoreFn,
    x_known: Tensor,
    mask: Tensor,
    *,
    steps: int = 1000,
    particles: ParticlesOpt = 16,
    ess_threshold: EssOpt = 0.5,
    resampling: ResamplingOpt = "systematic",
    generator: RNG = None,
    grid: str = "uniform",
    eps: float | None = None,
    callback: Callback | None = None,  # sees all particles, [B * particles, ...]
) -> Tensor:
    """SMC imputation (MCGdiff for noiseless inpainting): asymptotically exact draws of p(x_missing | x_known)."""
    x_known, known, y, known_p, ts, offsets = _particle_system(sde, x_known, mask, particles, ess_threshold, resampling,
                                                               steps, grid, eps)
    b, p = x_known.shape[0], particles
    with torch.no_grad():
        # Start from prior x potential at T, drawn exactly: the weights start uniform.
        m_T, std_T = sde.marginal(time_vector(ts[0], y))
        prior_std = torch.full_like(std_T, sde.prior_std())
        x = _propose(torch.zeros_like(y), prior_std, append_dims(m_T, y.ndim) * y, std_T**2, known_p, generator)
        log_w = torch.zeros(b, p, dtype=torch.float64, device=y.device)
        for i in range(steps):
            t, s = time_vector(ts[i], x), time_vector(ts[i + 1], x)
            m_t, std_t = sde.marginal(t)
            m_s, std_s = sde.marginal(s)
            score = score_fn(x, t)
            mean, std = ancestral_kernel(sde, x, t, s, score)
            # Reweight by L(x_t) / g_t(x_t): the observation's likelihood one step ahead over the current potential.
            ahead = _log_normal_known(append_dims(m_s, y.ndim) * y, mean, std**2 + std_s**2, known_p)
            here = _log_normal_known(x, append_dims(m_t, y.ndim) * y, std_t**2, known_p)
            log_w = log_w + (ahead - here).double().reshape(b, p)
            flat, log_w = resample_low(log_w, ess_threshold, resampling, generator, offsets)
            if flat is not None:
                mean, x_prev, score = mean[flat], x[flat], score[flat]
            else:
                x_prev = x
            x = _propose(mean, std, append_dims(m_s, y.ndim) * y, std_s**2, known_p, generator)
            if callback is not None:
                x = notify(callback, x, i, float(ts[i + 1]), sde.tweedie(x_prev, t, score))
        # One particle per image from the final weighted set, then the usual final denoising step.
        pick = multinomial(torch.softmax(log_w, dim=1), 1, generator)
        x = x[(pick + offsets).reshape(-1)]
        x = denoise(sde, score_fn, x, float(ts[-1]))
    return paste(x, x_known, known)


def _twist(
    sde: SDE, score_fn: ScoreFn, x: Tensor, t: Tensor, y: Tensor, known: Tensor, scale: float, grad: bool = True
) -> tuple[Tensor, Tensor, Tensor | None]:
    """(score, log h_t(x) [N], grad_x log h_t) for the twist h_t(x) = N(y; E[x_0 | x] on the known pixels, r_t^2 I).

    r_t^2 = scale^2 s^2 / (m^2 scale^2 + s^2) is the variance of x_0 given x_t for x_0 of std ``scale``:
    it tends to s^2 / m^2 (the noise itself) at the end and to scale^2 at the start.
    """
    m, s = sde.marginal(t)
    r2 = scale**2 * s**2 / (m**2 * scale**2 + s**2)
    with torch.enable_grad():
        xg = x.detach().requires_grad_(grad)
        score = score_fn(xg, t)
        x0 = sde.tweedie(xg, t, score)
        sq = ((y - x0) ** 2 * known).flatten(1).sum(1)
        log_h = -0.5 * sq / r2 - 0.5 * known.flatten(1).sum(1) * torch.log(r2)
        g = torch.autograd.grad(log_h.sum(), xg)[0] if grad else None
    return score.detach(), log_h.detach(), g


def impute_twisted(
    sde: SDE,
    score_fn: ScoreFn,
    x_known: Tensor,
    mask: Tensor,
    *,
    steps: int = 1000,
    particles: ParticlesOpt = 5,
    ess_threshold: EssOpt = 0.5,
    resampling: ResamplingOpt = "systematic",
    twist_scale: Annotated[float, Opt("the twist's width: the std of a pixel given the image's kind (see the module doc)", gt=0)] = 0.4,
    generator: RNG = None,
    grid: str = "uniform",
    eps: float | None = None,
    callback: Callback | None = None,  # sees all particles, [B * particles, ...]
) -> Tensor:
    """Twisted SMC (TDS): particles steered by the observation's gradient through the denoiser, reweighted to stay exact."""
    x_known, known, y, known_p, ts, offsets = _particle_system(sde, x_known, mask, particles, ess_threshold, resampling,
                                                               steps, grid, eps)
    b, p = x_known.shape[0], particles
    nd = y.ndim
    x = sde.prior_sample(tuple(y.shape), generator, y.device, y.dtype)
    log_w = torch.zeros(b, p, dtype=torch.float64, device=y.device)
    # Target at time t: p_t(x) h_t(x). A move t -> s is weighted by p(x_s | x_t) h_s(x_s) / (q(x_s | x_t) h_t(x_t));
    # h_s needs the denoiser at x_s, so ``pending`` holds the rest until the next step computes it.
    pending = torch.zeros(b * p, dtype=torch.float64, device=y.device)
    for i in range(steps):
        t, s = time_vector(ts[i], x), time_vector(ts[i + 1], x)
        score, log_h, grad = _twist(sde, score_fn, x, t, y, known_p, twist_scale)
        assert grad is not None
        log_w = log_w + (pending + log_h.double()).reshape(b, p)
        flat, log_w = resample_low(log_w, ess_threshold, resampling, generator, offsets)
        if flat is not None:
            x, score, grad, log_h = x[flat], score[flat], grad[flat], log_h[flat]
        with torch.no_grad():
            mean, std = ancestral_kernel(sde, x, t, s, score)
            std_b = append_dims(std, nd)
            shift = std_b**2 * grad  # the kernel's mean moved up the twist's gradient
            noise = std_b * randn_like(x, generator)
            x_prev, x = x, mean + shift + noise
            # log p(x_s | x_t) - log q(x_s | x_t), for N(mean, std^2) against N(mean + shift, std^2).
            log_pq = (-(shift * (shift + 2 * noise)) / (2 * std_b**2)).flatten(1).sum(1)
            pending = log_pq.double() - log_h.double()
            if callback is not None:
                x = notify(callback, x, i, float(ts[i + 1]), sde.tweedie(x_prev, t, score))
    t_end = time_vector(ts[-1], x)
    score, log_h, _ = _twist(sde, score_fn, x, t_end, y, known_p, twist_scale, grad=False)
    log_w = log_w + (pending + log_h.double()).reshape(b, p)
    pick = (multinomial(torch.softmax(log_w, dim=1), 1, generator) + offsets).reshape(-1)
    with torch.no_grad():
        x0 = sde.tweedie(x[pick], t_end[pick], score[pick])
    return paste(x0, x_known, known)


@dataclass(frozen=True)
class MethodSpec:
    """A METHODS entry: the function (whose keyword-only parameters are its options) and one line about it."""

    fn: Callable[..., Tensor]
    summary: str
    takes_sampler_options: bool = False  # replacement passes the rest on to its sampler

    def options(self) -> dict[str, OptionSpec]:
        """The method's options, read from its signature (steps, grid and eps included)."""
        return option_specs(self.fn)


METHODS: dict[str, MethodSpec] = {
    "smc": MethodSpec(impute_smc, "sequential Monte Carlo (MCGdiff): asymptotically exact, particles x the NFE"),
    "replacement": MethodSpec(impute_replacement, "re-impose the noised known pixels after each step of any sampler", True),
    "repaint": MethodSpec(impute_repaint, "RePaint: replacement with jumps back through the forward process"),
    "twisted": MethodSpec(impute_twisted, "twisted SMC (TDS): particles steered by the observation through the denoiser"),
}


def check_method(method: str) -> MethodSpec:
    """The METHODS entry ``method``; OptionError listing the methods otherwise."""
    return registry_entry(METHODS, method, "imputation method", also="auto or ")


def method_options(method: str) -> dict[str, Any]:
    """The keyword options (with defaults) that imputation ``method`` accepts."""
    return {k: spec.default for k, spec in check_method(method).options().items()}


def validate_method_options(method: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` checked against ``method``'s signature (replacement: the rest against its sampler's); the one check."""
    spec = check_method(method)
    own = spec.options()
    mine = {k: v for k, v in options.items() if k in own or not spec.takes_sampler_options}
    out = validate_options(spec.fn, mine, f"imputation method {method!r}")
    rest = {k: v for k, v in options.items() if k not in mine}
    if rest:
        from diffusers_cli.engine.samplers import split_options

        _, sampler_opts, grid_opts = split_options(out.get("sampler", own["sampler"].default), out.get("grid"), rest)
        out.update(sampler_opts, **grid_opts)
    return out


def reverse_steps(method: str, steps: int, **options: Any) -> int:
    """How many times ``method`` calls its callback (one per reverse step), for progress bars."""
    if method == "repaint":
        defaults = method_options("repaint")
        path = repaint_schedule(steps, options.get("jump_length", defaults["jump_length"]),
                                options.get("resample", defaults["resample"]))
        return sum(1 for i, j in pairwise(path) if j > i)
    return steps  # smc, and replacement on any fixed-step sampler (the adaptive ODE chooses its own)


def choose_method(mask: Tensor, **options: Any) -> tuple[str, str]:
    """What "auto" stands for, and why: an option only one method takes names it; else twisted for few known pixels, repaint above."""
    if options.get("twist_scale") is not None:
        return "twisted", "twist_scale is set"
    if options.get("particles") is not None:
        return "twisted", "particles is set"
    if options.get("resample") is not None or options.get("jump_length") is not None:
        return "repaint", "resample/jump_length is set"
    # mask is [B or 1, C or 1, H, W] with 1 = known; a pixel counts if any channel of it is known.
    known = (mask.amax(dim=1) > 0.5).flatten(1).sum(dim=1)
    h, w = mask.shape[-2:]
    method = "twisted" if int(known.max()) <= SMC_MAX_KNOWN_PIXELS else "repaint"
    return method, f"{int(known.max())} of {h * w} pixels known at {h}x{w}"


def impute(
    sde: SDE,
    score_fn: ScoreFn,
    x_known: Tensor,
    mask: Tensor,
    *,
    method: str = DEFAULT_METHOD,
    n: int = 1,  # draws per image
    generator: RNG = None,
    callback: Callback | None = None,
    **options: Any,
) -> Tensor:
    """n independent fills of each image: [B * n, C, H, W], draw j of image b at row b * n + j.

    ``options`` are the method's (checked against its signature by ``validate_method_options``).
    With ``generator`` an ImageGenerators of B * n streams, fill j of image b depends on stream b * n + j alone.
    """
    if method == "auto":
        method, _ = choose_method(mask, **options)
    options = validate_method_options(method, options)
    if n < 1:
        raise OptionError(f"n must be at least 1, got {n}")
    x_known, _ = prepare(x_known, mask)
    x_rep = x_known.repeat_interleave(n, dim=0)
    mask_rep = mask.repeat_interleave(n, dim=0) if mask.shape[0] > 1 else mask
    return METHODS[method].fn(sde, score_fn, x_rep, mask_rep, generator=generator, callback=callback, **options)
