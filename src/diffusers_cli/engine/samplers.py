"""Samplers of the reverse process (Song et al. 2021; Ho et al. 2020): each a plain function over any ScoreFn.

Stochastic: Euler-Maruyama, predictor-corrector, DDPM ancestral, DDIM with eta > 0. Deterministic
(probability-flow ODE): DDIM, Euler, EDM's Heun, adaptive RK45, the DPM-Solver(++) exponential
integrators ("ei", Lu et al. 2022a/b, with the UniPC corrector) and iPNDM (Zhang & Chen 2023).
benchmarks/README.md compares their error against NFE; few steps: "ipndm", more: "ei" (order 3).

A sampler has the signature ``fn(sde, score_fn, x, ts, *, generator, callback, **options)``:
``x`` is the prior draw at ``ts[0] = T``, ``ts`` a decreasing time grid (see ``grids``), and
it returns x at ``ts[-1]``. ``sample`` builds the grid, draws the prior, runs the sampler and
applies the final denoising step. A new sampler is one function plus one line in SAMPLERS; its
keyword-only parameters (``Annotated`` with an ``Opt``) are its options, everywhere (engine.options).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

import torch
from torch import Tensor

from diffusers_cli.engine.grids import check_grid, check_times, time_grid
from diffusers_cli.engine.ode import OdeStats, dopri5
from diffusers_cli.engine.options import Opt, OptionError, OptionSpec, option_specs, registry_entry, validate_options
from diffusers_cli.engine.rng import RNG
from diffusers_cli.engine.score import ScoreFn
from diffusers_cli.engine.sde import SDE
from diffusers_cli.engine.utils import append_dims, batch_norm, randn_like, time_vector

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
        generator: RNG = None,
        callback: Callback | None = None,
        **options: Any,
    ) -> Tensor: ...


def notify(callback: Callback | None, x: Tensor, i: int, t: float, denoised: Tensor, **info: Any) -> Tensor:
    """Call the callback after step i (x now at time t) and return x, or the tensor it returned instead.

    ``info`` adds sampler-specific keys to the dict (the adaptive ODE sampler reports its
    accepted and rejected steps and NFE so far).
    """
    if callback is None:
        return x
    out = callback({"x": x, "i": i, "t": t, "denoised": denoised, **info})
    return x if out is None else out


# Predictor steps: (sde, score_fn, x, t, s, generator) -> (x at s, score at t), with s < t.


def reverse_diffusion_step(
    sde: SDE, score_fn: ScoreFn, x: Tensor, t: Tensor, s: Tensor, generator: RNG
) -> tuple[Tensor, Tensor]:
    """score_sde's reverse-diffusion predictor, on the SDE's exact kernel x_t = a x_s + b z."""
    score = score_fn(x, t)
    a, b = sde.transition(s, t)
    a, b = append_dims(a, x.ndim), append_dims(b, x.ndim)
    # Undo the forward increment f = (a - 1) x and add the discretised reverse drift G^2 score.
    x_mean = (2.0 - a) * x + b * b * score
    return x_mean + b * randn_like(x, generator), score


def euler_maruyama_step(
    sde: SDE, score_fn: ScoreFn, x: Tensor, t: Tensor, s: Tensor, generator: RNG
) -> tuple[Tensor, Tensor]:
    """One Euler-Maruyama step of the reverse SDE dx = [f - g^2 score] dt + g dw."""
    score = score_fn(x, t)
    drift, g = sde.drift_diffusion(x, t)
    g = append_dims(g, x.ndim)
    dt = append_dims(s - t, x.ndim)  # negative: time runs backwards
    x_mean = x + (drift - g * g * score) * dt
    return x_mean + g * torch.sqrt(-dt) * randn_like(x, generator), score


def ancestral_kernel(sde: SDE, x: Tensor, t: Tensor, s: Tensor, score: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and std [B] of DDPM's Gaussian step q(x_s | x_t, x_0 = Tweedie estimate), for any Gaussian-kernel SDE."""
    x0 = sde.tweedie(x, t, score)
    m_s, std_s = sde.marginal(s)
    _, std_t = sde.marginal(t)
    a, b = sde.transition(s, t)
    nd = x.ndim
    mean = append_dims(a * std_s**2 / std_t**2, nd) * x + append_dims(m_s * b**2 / std_t**2, nd) * x0
    return mean, std_s * b / std_t  # the std is DDPM's beta-tilde


def ancestral_step(
    sde: SDE, score_fn: ScoreFn, x: Tensor, t: Tensor, s: Tensor, generator: RNG
) -> tuple[Tensor, Tensor]:
    """DDPM's ancestral step: draw x_s from q(x_s | x_t, x_0 = Tweedie estimate), for any Gaussian-kernel SDE."""
    score = score_fn(x, t)
    mean, std = ancestral_kernel(sde, x, t, s, score)
    return mean + append_dims(std, x.ndim) * randn_like(x, generator), score


PREDICTORS: dict[str, Callable[..., tuple[Tensor, Tensor]]] = {
    "reverse-diffusion": reverse_diffusion_step,
    "euler-maruyama": euler_maruyama_step,
    "ancestral": ancestral_step,
}


def langevin_step(
    sde: SDE, score_fn: ScoreFn, x: Tensor, t: Tensor, alpha: Tensor, snr: float, generator: RNG
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
    generator: RNG,
    callback: Callback | None,
    corrector: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None,
) -> Tensor:
    for i in range(len(ts) - 1):
        t, s = time_vector(ts[i], x), time_vector(ts[i + 1], x)
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
    generator: RNG = None,
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
    generator: RNG = None,
    callback: Callback | None = None,
    snr: Annotated[float, Opt("Langevin signal-to-noise ratio (score_sde: 0.16 for CIFAR-10)", gt=0)] = 0.16,
    corrector_steps: Annotated[int, Opt("Langevin steps at each time; 0 makes PC its bare predictor", ge=0)] = 1,
    predictor: Annotated[str, Opt("the predictor step", choices=PREDICTORS)] = "reverse-diffusion",
) -> Tensor:
    """Predictor-corrector (score_sde): Langevin correction at t_i, then a predictor step to t_{i+1}."""

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
    generator: RNG = None,
    callback: Callback | None = None,
) -> Tensor:
    """DDPM ancestral sampling (Ho et al. 2020), on any grid and any of the SDEs (1 NFE a step)."""
    return _run_predictor(ancestral_step, sde, score_fn, x, ts, generator, callback)


# Probability-flow ODE samplers (Song et al. 2021, sec. 4.3; Karras et al. 2022).


def probability_flow(sde: SDE, x: Tensor, t: Tensor, score: Tensor) -> Tensor:
    """dx/dt of the probability-flow ODE, f(x, t) - g(t)^2 / 2 score, given the score at (x, t)."""
    drift, g = sde.drift_diffusion(x, t)
    return drift - 0.5 * append_dims(g * g, x.ndim) * score


def sample_ode(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    ts: Tensor,
    *,
    generator: RNG = None,
    callback: Callback | None = None,
    rtol: Annotated[float, Opt("relative tolerance of the adaptive solver (score_sde: 1e-5)", gt=0)] = 1e-5,
    atol: Annotated[float, Opt("absolute tolerance of the adaptive solver", gt=0)] = 1e-5,
) -> Tensor:
    """Probability-flow ODE by adaptive Dormand-Prince RK45 from ts[0] to ts[-1] (only the grid's ends are used).

    The callback also receives ``accepted``, ``rejected`` and ``nfe``: the steps and score
    evaluations spent so far (6 per step, plus 2 to start).
    """

    def velocity(t: float, y: Tensor) -> Tensor:
        tv = time_vector(t, y)
        return probability_flow(sde, y, tv, score_fn(y, tv))

    def on_step(i: int, t: float, y: Tensor, dydt: Tensor, stats: OdeStats) -> Tensor | None:
        if callback is None:
            return None
        tv = time_vector(t, y)
        drift, g = sde.drift_diffusion(y, tv)
        # The FSAL stage is the velocity at (t, y): read the score back from it instead of paying an NFE.
        score = 2.0 * (drift - dydt) / append_dims(g * g, y.ndim)
        info = {"accepted": stats.accepted, "rejected": stats.rejected, "nfe": stats.nfe}
        return notify(callback, y, i, t, sde.tweedie(y, tv, score), **info)

    x, _ = dopri5(velocity, x, float(ts[0]), float(ts[-1]), rtol=rtol, atol=atol, on_step=on_step)
    return x


#: EDM's stochastic churn (Karras et al. 2022, Alg. 2), shared by euler and heun: the same four options on both.
ChurnOpt = Annotated[float, Opt("EDM's S_churn: total noise added back over the run (0: deterministic)", ge=0)]
ChurnMinOpt = Annotated[float, Opt("EDM's S_tmin: churn only where sigma = std / mean >= this", ge=0)]
ChurnMaxOpt = Annotated[float, Opt("EDM's S_tmax: churn only where sigma <= this", ge=0)]
ChurnNoiseOpt = Annotated[float, Opt("EDM's S_noise: scale of the added noise (EDM: 1.007 on ImageNet)", gt=0)]


def _scaled_noise_levels(sde: SDE, ts: Tensor) -> tuple[Tensor, Tensor]:
    """(mean(t), sigma(t) = std / mean = exp(-lambda)) on the grid, float64: EDM's s(t) and sigma(t)."""
    mean, std = sde.marginal(ts.to(torch.float64))
    return mean, std / mean


def _churn(
    sde: SDE, x: Tensor, t: float, steps: int, generator: RNG, s_churn: float, s_tmin: float, s_tmax: float, s_noise: float
) -> tuple[Tensor, float]:
    """EDM's churn: raise sigma(t) by 1 + gamma with fresh noise; returns (x, t) at the raised level (unchanged if gamma = 0).

    gamma = min(S_churn / N, sqrt 2 - 1) where S_tmin <= sigma <= S_tmax; the raised time is
    capped at T, the prior's noise level, past which the SDE is not defined.
    """
    mean, sigma = (float(v) for v in _scaled_noise_levels(sde, torch.tensor([t], dtype=torch.float64)))
    gamma = min(s_churn / steps, math.sqrt(2.0) - 1.0) if s_tmin <= sigma <= s_tmax else 0.0
    if gamma <= 0.0:
        return x, t
    t_hat = min(float(sde.t_from_log_snr(torch.tensor([-math.log(sigma * (1.0 + gamma))], dtype=torch.float64))), sde.T)
    mean_hat, sigma_hat = (float(v) for v in _scaled_noise_levels(sde, torch.tensor([t_hat], dtype=torch.float64)))
    # Add noise in x / mean: sigma^2 grows to sigma_hat^2, then scale back to x at t_hat.
    x_hat = x / mean + math.sqrt(max(sigma_hat**2 - sigma**2, 0.0)) * s_noise * randn_like(x, generator)
    return mean_hat * x_hat, t_hat


def sample_euler(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    ts: Tensor,
    *,
    generator: RNG = None,
    callback: Callback | None = None,
    s_churn: ChurnOpt = 0.0,
    s_tmin: ChurnMinOpt = 0.0,
    s_tmax: ChurnMaxOpt = math.inf,
    s_noise: ChurnNoiseOpt = 1.0,
) -> Tensor:
    """Euler's method on the probability-flow ODE in t (1 NFE a step): the plain deterministic baseline.

    With ``s_churn`` > 0 each step first adds noise to raise sigma (EDM's churn), then takes
    the Euler step from the raised time: a stochastic sampler with the same NFE.
    """
    n = len(ts) - 1
    for i in range(n):
        t_i = float(ts[i])
        if s_churn > 0:
            x, t_i = _churn(sde, x, t_i, n, generator, s_churn, s_tmin, s_tmax, s_noise)
        t = time_vector(t_i, x)
        x_t, score = x, score_fn(x, t)
        x = x + (float(ts[i + 1]) - t_i) * probability_flow(sde, x, t, score)
        if callback is not None:
            x = notify(callback, x, i, float(ts[i + 1]), sde.tweedie(x_t, t, score))
    return x


def sample_heun(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    ts: Tensor,
    *,
    generator: RNG = None,
    callback: Callback | None = None,
    s_churn: ChurnOpt = 0.0,
    s_tmin: ChurnMinOpt = 0.0,
    s_tmax: ChurnMaxOpt = math.inf,
    s_noise: ChurnNoiseOpt = 1.0,
) -> Tensor:
    """EDM's 2nd-order Heun sampler (Karras et al. 2022, Alg. 1; Alg. 2 with churn) on x / mean(t) against sigma = std / mean (2 NFE a step).

    EDM falls back to Euler on a last step that ends at sigma = 0; our grids end at eps > 0,
    where the correction is well defined, so every step is a Heun step.
    """
    mean, sigma = _scaled_noise_levels(sde, ts)

    def denoised(x_hat: Tensor, m: float, t: float) -> Tensor:
        xj, tv = m * x_hat, time_vector(t, x_hat)
        return sde.tweedie(xj, tv, score_fn(xj, tv))

    n = len(ts) - 1
    x_hat = x / float(mean[0])
    for i in range(n):
        m_i, s_i, t_i, s_next = float(mean[i]), float(sigma[i]), float(ts[i]), float(sigma[i + 1])
        if s_churn > 0:
            # Increase noise temporarily.
            x_raised, t_i = _churn(sde, m_i * x_hat, t_i, n, generator, s_churn, s_tmin, s_tmax, s_noise)
            m_i, s_i = (float(v) for v in _scaled_noise_levels(sde, torch.tensor([t_i], dtype=torch.float64)))
            x_hat = x_raised / m_i
        # Euler step.
        d0 = denoised(x_hat, m_i, t_i)
        d = (x_hat - d0) / s_i
        x_next = x_hat + (s_next - s_i) * d
        # Apply 2nd order correction.
        d_next = (x_next - denoised(x_next, float(mean[i + 1]), float(ts[i + 1]))) / s_next
        x_hat = x_hat + (s_next - s_i) * 0.5 * (d + d_next)
        if callback is not None:
            x_hat = notify(callback, float(mean[i + 1]) * x_hat, i, float(ts[i + 1]), d0) / float(mean[i + 1])
    return float(mean[-1]) * x_hat


def sample_ddim(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    ts: Tensor,
    *,
    generator: RNG = None,
    callback: Callback | None = None,
    eta: Annotated[float, Opt("0: deterministic DDIM; 1: DDPM's ancestral step; between: partly stochastic", ge=0, le=1)] = 0.0,
) -> Tensor:
    """DDIM (Song, Meng & Ermon 2021) on any SDE and grid (1 NFE a step); eta=0 is first-order DPM-Solver."""
    grid = ts.to(torch.float64)
    mean, std = sde.marginal(grid)
    for i in range(len(ts) - 1):
        t = time_vector(ts[i], x)
        score = score_fn(x, t)
        x0 = sde.tweedie(x, t, score)
        eps_hat = -float(std[i]) * score  # the noise in x under the Tweedie estimate
        # eta times DDPM's posterior std; the deterministic part keeps the rest of std(s)^2.
        b = sde.transition(grid[i + 1], grid[i])[1]
        c = eta * float(std[i + 1] * b / std[i])
        keep = max(float(std[i + 1]) ** 2 - c * c, 0.0) ** 0.5
        x = float(mean[i + 1]) * x0 + keep * eps_hat
        if eta > 0:
            x = x + c * randn_like(x, generator)
        if callback is not None:
            x = notify(callback, x, i, float(ts[i + 1]), x0)
    return x


# Exponential integrators in log-SNR (Lu et al. 2022a, DPM-Solver; 2022b, DPM-Solver++). Every SDE
# here is semi-linear, x_t = mean(t) x_0 + std(t) noise, so the linear part of the PF-ODE is solved
# exactly and only the model output (data or noise prediction) is extrapolated in lambda.

EI_MODES: tuple[str, ...] = ("data", "noise")
#: Multistep DPM-Solver drops to lower orders on the last steps only for short runs (as DPM-Solver and diffusers).
LOWER_ORDER_FINAL_BELOW = 15


def _ei_step(x: Tensor, outs: list[Tensor], lam: list[float], ratio: float, scale: float, data: bool) -> Tensor:
    """One multistep DPM-Solver(++) step of order len(outs) from lam[-2] to lam[-1].

    outs are the model outputs at lam[:-1] (newest last); x_next = ratio x + scale sum_k psi_k D_k
    with psi_1 = expm1(u), psi_{k+1} = psi_k / u - 1 / k!, u = -h (data) or h (noise).
    """
    h = lam[-1] - lam[-2]
    u = -h if data else h
    psi1 = math.expm1(u)
    m0 = outs[-1]
    if len(outs) == 1:
        return ratio * x + scale * psi1 * m0
    r0 = (lam[-2] - lam[-3]) / h
    d1_0 = (m0 - outs[-2]) / r0
    if len(outs) == 2:
        # DPM-Solver(++)-2M: the first divided difference enters with psi_1 / 2 (the papers' "midpoint" form).
        return ratio * x + scale * psi1 * (m0 + 0.5 * d1_0)
    r1 = (lam[-3] - lam[-4]) / h
    d1_1 = (outs[-2] - outs[-3]) / r1
    d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1)  # about h^2 D'' / 2
    psi2 = psi1 / u - 1.0
    psi3 = psi2 / u - 0.5
    # The Taylor term (lambda - lambda_0)^2 / 2 D'' integrates to psi_3 h^2 D'' = 2 psi_3 d2. DPM-Solver's
    # reference code and diffusers weight d2 by psi_3 alone, which leaves their 3M method second order
    # (tests/test_samplers.py checks exactness on quadratic outputs and the convergence rate).
    return ratio * x + scale * (psi1 * m0 + psi2 * d1 + 2.0 * psi3 * d2)


def _unic_step(
    x: Tensor, outs: list[Tensor], new: Tensor, lam: list[float], ratio: float, scale: float, data: bool
) -> Tensor:
    """UniC corrector (Zhao et al. 2023, "bh2"): redo the step from lam[-2] to lam[-1] with the model output there too.

    outs are the outputs at lam[:-1] (newest last) and ``new`` the output at lam[-1], evaluated at
    the predictor's x; the correction raises the order by one for no extra evaluation.
    """
    h = lam[-1] - lam[-2]
    u = -h if data else h
    psi1 = math.expm1(u)
    m0, k = outs[-1], len(outs)
    # Ratios of the earlier nodes' offsets to h (negative), the new node last at 1.
    rks = [(lam[-2 - j] - lam[-2]) / h for j in range(1, k)] + [1.0]
    diffs = [(outs[-1 - j] - m0) / rks[j - 1] for j in range(1, k)] + [new - m0]
    if k == 1:
        rhos = [0.5]
    else:
        # Match the Taylor moments: sum_j rho_j r_j^(i-1) = i! psi_{i+1} / psi_1, i = 1..k.
        psi, fact, rhs = psi1 / u - 1.0, 1.0, []
        for i in range(1, k + 1):
            rhs.append(psi * fact / psi1)
            fact *= i + 1
            psi = psi / u - 1.0 / fact
        r = torch.tensor(rks, dtype=torch.float64)
        mat = torch.stack([r**i for i in range(k)])
        rhos = torch.linalg.solve(mat, torch.tensor(rhs, dtype=torch.float64)).tolist()
    corr = sum(rho * d for rho, d in zip(rhos, diffs))
    return ratio * x + scale * psi1 * (m0 + corr)


def sample_ei(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    ts: Tensor,
    *,
    generator: RNG = None,
    callback: Callback | None = None,
    order: Annotated[int, Opt("solver order: 1 (= DDIM), 2 (best below ~12 steps) or 3", choices=(1, 2, 3))] = 2,
    mode: Annotated[str, Opt("data: DPM-Solver++ (x_0 prediction); noise: DPM-Solver", choices=EI_MODES)] = "data",
    lower_order_final: Annotated[bool, Opt(f"runs under {LOWER_ORDER_FINAL_BELOW} steps end at order <= 2, then 1")] = True,
    corrector: Annotated[bool, Opt("UniC correction with the next step's output (UniPC): order + 1, no extra NFE")] = False,
) -> Tensor:
    """Multistep DPM-Solver / DPM-Solver++ of order 1-3 in log-SNR (1 NFE a step), lower orders to warm up.

    The final Tweedie denoise of ``sample`` plays the part of DPM-Solver's first-order last step
    to sigma = 0, so with ``lower_order_final`` the last step here has order <= 2 and the one
    before <= 3: order 2 then matches diffusers' DPMSolverMultistepScheduler step for step.
    """
    data = mode == "data"
    grid = ts.to(torch.float64)
    mean, std = sde.marginal(grid)
    lam = sde.log_snr(grid).tolist()
    n = len(ts) - 1

    def model(x: Tensor, i: int) -> tuple[Tensor, Tensor]:
        t = time_vector(ts[i], x)
        score = score_fn(x, t)
        x0 = sde.tweedie(x, t, score)
        return (x0 if data else -float(std[i]) * score), x0

    outs: list[Tensor] = []  # model outputs at the last few grid times, newest last
    out, x0 = model(x, 0)
    for i in range(n):
        outs = (outs + [out])[-order:]
        k = len(outs)
        if lower_order_final and n < LOWER_ORDER_FINAL_BELOW:
            k = min(k, n - i + 1)
        if data:
            ratio, scale = float(std[i + 1] / std[i]), -float(mean[i + 1])
        else:
            ratio, scale = float(mean[i + 1] / mean[i]), -float(std[i + 1])
        nodes = lam[i - k + 1 : i + 2]
        x_next = _ei_step(x, outs[-k:], nodes, ratio, scale, data)
        if corrector and i + 1 < n:  # on the last step the output would serve only the corrector: skip it
            # UniPC keeps the output at the predicted point as history for the next step.
            out, x0_next = model(x_next, i + 1)
            x_next = _unic_step(x, outs[-k:], out, nodes, ratio, scale, data)
        x = x_next
        if callback is not None:
            x = notify(callback, x, i, float(ts[i + 1]), x0)
        if i + 1 < n:
            if corrector:
                x0 = x0_next
            else:
                out, x0 = model(x, i + 1)
    return x


#: Adams-Bashforth weights for equal steps, newest derivative first (orders 1 to 4).
_ADAMS_BASHFORTH: tuple[tuple[float, ...], ...] = (
    (1.0,),
    (3 / 2, -1 / 2),
    (23 / 12, -16 / 12, 5 / 12),
    (55 / 24, -59 / 24, 37 / 24, -9 / 24),
)


def sample_ipndm(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    ts: Tensor,
    *,
    generator: RNG = None,
    callback: Callback | None = None,
    order: Annotated[int, Opt("how many past noise estimates each step combines (1 = DDIM)", choices=(1, 2, 3, 4))] = 3,
) -> Tensor:
    """iPNDM (Zhang & Chen 2023): Adams-Bashforth with equal-step weights on the noise estimate, in EDM's variables.

    x / mean moves by (sigma' - sigma) sum_j c_j eps_j, sigma = std / mean and eps_j = (x_j / mean_j
    - denoised_j) / sigma_j, warming up with the lower orders (1 NFE a step). On a log-SNR-uniform
    grid, order 2 is DPM-Solver-2M and order 3 is DPM-Solver-3M with its phi-functions replaced by
    their small-step limits, which extrapolate further and are markedly more accurate at few steps.
    """
    mean, sigma = _scaled_noise_levels(sde, ts)
    x_hat = x / float(mean[0])
    eps_hist: list[Tensor] = []  # noise estimates at the last few grid times, newest first
    for i in range(len(ts) - 1):
        xi, t = float(mean[i]) * x_hat, time_vector(ts[i], x_hat)
        d0 = sde.tweedie(xi, t, score_fn(xi, t))
        eps_hist = [(x_hat - d0) / float(sigma[i])] + eps_hist[: order - 1]
        weights = _ADAMS_BASHFORTH[len(eps_hist) - 1]
        x_hat = x_hat + float(sigma[i + 1] - sigma[i]) * sum(w * e for w, e in zip(weights, eps_hist))
        if callback is not None:
            x_hat = notify(callback, float(mean[i + 1]) * x_hat, i, float(ts[i + 1]), d0) / float(mean[i + 1])
    return float(mean[-1]) * x_hat


@dataclass(frozen=True)
class SamplerSpec:
    """A SAMPLERS entry: the function (whose keyword-only parameters are its options) and its default grid."""

    fn: Sampler
    grid: str  # the time grid used unless told otherwise
    summary: str  # one line for `diffuse samplers`

    def options(self) -> dict[str, OptionSpec]:
        """The sampler's options, read from its signature."""
        return option_specs(self.fn)


SAMPLERS: dict[str, SamplerSpec] = {
    "em": SamplerSpec(sample_em, "uniform", "Euler-Maruyama on the reverse SDE (1 NFE a step)"),
    "pc": SamplerSpec(sample_pc, "uniform", "predictor-corrector with Langevin correction (score_sde)"),
    "ddpm": SamplerSpec(sample_ddpm, "uniform", "DDPM ancestral sampling (1 NFE a step)"),
    # DDIM's own choice for CIFAR-10, and the most accurate of ours for it.
    "ddim": SamplerSpec(sample_ddim, "quadratic", "DDIM, deterministic at eta 0 (1 NFE a step)"),
    # Equal log-SNR steps are equal t steps on VE, and far better than those on VP.
    "euler": SamplerSpec(sample_euler, "logsnr", "Euler on the probability-flow ODE, EDM churn optional (1 NFE a step)"),
    "heun": SamplerSpec(sample_heun, "karras", "EDM's Heun sampler, churn optional (2 NFE a step)"),
    "ei": SamplerSpec(sample_ei, "logsnr", "DPM-Solver(++) exponential integrator, UniPC corrector optional (1 NFE a step)"),
    "ipndm": SamplerSpec(sample_ipndm, "logsnr", "iPNDM multistep, the best at few steps (1 NFE a step)"),
    "ode": SamplerSpec(sample_ode, "uniform", "adaptive RK45 on the probability-flow ODE (only the grid's ends matter)"),
}


def check_sampler(name: str) -> SamplerSpec:
    """The SAMPLERS entry ``name``; OptionError listing the samplers otherwise."""
    return registry_entry(SAMPLERS, name, "sampler", after=" (`diffuse samplers` lists their options)")


def sampler_options(name: str) -> dict[str, Any]:
    """The options (with defaults) that sampler ``name`` takes beyond the common ones."""
    return {k: spec.default for k, spec in check_sampler(name).options().items()}


def split_options(name: str, grid: str | None, options: Mapping[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(grid name, sampler options, grid options): ``options`` validated against the sampler's and its grid's signatures.

    The one check of a sampler's options: ``sample``, configs and the CLI all go through it.
    """
    spec = check_sampler(name)
    kind = grid or spec.grid
    grid_fn = check_grid(kind)
    own, grid_specs = spec.options(), option_specs(grid_fn)
    unknown = sorted(set(options) - set(own) - set(grid_specs))
    if unknown:
        listed = ", ".join(f"{k} (default {v.default})" for k, v in {**own, **grid_specs}.items()) or "none"
        raise OptionError(f"sampler {name!r} (grid {kind!r}) has no option {unknown[0]!r}; its options are: {listed}")
    sampler_opts = validate_options(spec.fn, {k: v for k, v in options.items() if k in own}, f"sampler {name!r}")
    grid_opts = validate_options(grid_fn, {k: v for k, v in options.items() if k in grid_specs}, f"grid {kind!r}")
    return kind, sampler_opts, grid_opts


def denoise(sde: SDE, score_fn: ScoreFn, x: Tensor, t: float) -> Tensor:
    """The final denoising step: Tweedie's posterior mean E[x_0 | x_t] at the last grid time (1 NFE)."""
    tv = time_vector(torch.tensor(t), x)
    return sde.tweedie(x, tv, score_fn(x, tv))


def sample(
    sde: SDE,
    score_fn: ScoreFn,
    shape: tuple[int, ...],
    sampler: str = "pc",
    steps: int = 1000,
    generator: RNG = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    grid: str | Tensor | None = None,  # a grid's name, explicit times (steps + 1, descending), or None: the sampler's default
    eps: float | None = None,  # end time of a named grid; None: the SDE's default
    final_denoise: bool = True,  # finish with Tweedie's x_0 estimate (1 extra NFE)
    x_init: Tensor | None = None,  # start from this x_T instead of a prior draw
    callback: Callback | None = None,
    **options: Any,
) -> Tensor:
    """Draw samples of ``shape`` by integrating the reverse process of ``sde`` driven by ``score_fn``.

    ``options`` are the sampler's (and its grid's) keyword options, checked by ``split_options``.
    With ``generator`` an ``ImageGenerators`` of ``shape[0]`` streams, sample i depends on stream i alone.
    """
    if isinstance(grid, Tensor):
        _, sampler_opts, grid_opts = split_options(sampler, None, options)
        if grid_opts:
            raise OptionError(f"grid options ({', '.join(grid_opts)}) do not apply to explicit times")
        ts = check_times(sde, grid, steps)
    else:
        kind, sampler_opts, grid_opts = split_options(sampler, grid, options)
        ts = time_grid(sde, steps, kind, eps, **grid_opts)
    with torch.no_grad():
        x = sde.prior_sample(shape, generator, device, dtype) if x_init is None else x_init
        x = SAMPLERS[sampler].fn(sde, score_fn, x, ts, generator=generator, callback=callback, **sampler_opts)
        if final_denoise:
            x = denoise(sde, score_fn, x, float(ts[-1]))
    return x
