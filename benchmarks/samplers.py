"""Sampler accuracy versus NFE on analytic distributions, beside diffusers' DPM-Solver++(2M), and per-step overhead.

Every sampler integrates the same VP SDE (linear beta 0.1 -> 20, DDPM's 1e-4 -> 0.02 over 1000
steps) driven by the exact score of the target, from the same prior draws x_T. The error is
measured against the exact probability-flow transport of those same x_T to t = 0 (closed form
for the Gaussian, a float64 RK45 solve at 1e-10 tolerance for the mixture), so for deterministic
samplers it is pure discretisation error, not sampling noise; stochastic samplers also carry
their own noise (about 0.005 at the default batch).

Metrics (all per pixel, images 1x4x4):
  moment W2  sqrt(mean_pixels[(mean - mean_ref)^2 + (std - std_ref)^2]): the 2-Wasserstein distance
             between the moment-matched diagonal Gaussians of the samples and the reference,
             meaningful however few the steps (a collapsed or over-dispersed sampler scores badly).
  mode err   |share of samples in mode 1 - share in the reference| (mixture; modes by the exact
             posterior at t = 0), the error that matters for class balance.

diffusers' DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
use_lu_lambdas=True) is driven by the same exact score as an eps-prediction, eps = -std * score.
Mapping of its discrete timestep i to our continuous t: DDPM step i has alpha_bar_i =
prod_{j<=i} (1 - beta_j); we evaluate the score at the t with our alpha_bar(t) = alpha_bar_i,
t_i = B^{-1}(-log alpha_bar_i), so the prediction is exact for the noise level that diffusers
assumes at step i. (The usual t = (i + 1) / 1000 is off by up to 5 % in std at i = 0 and 0.03 in
log-SNR at i = 999; the benchmark prints the gap.) A second peer row ("oracle sigma") evaluates
at the sigma diffusers' update actually uses, which with use_lu_lambdas differs from the rounded
timestep it hands the model: the peer at its very best.

    python benchmarks/samplers.py                 # full table (a few minutes on 2 CPU cores)
    python benchmarks/samplers.py --quick         # fewer NFEs and samplers, small batch

diffusers is imported lazily: `pip install diffusers` (or the `bench` extra) to compare.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from diffusers_cli.engine.analytic import GaussianMixture, gaussian
from diffusers_cli.engine.ode import dopri5
from diffusers_cli.engine.samplers import SAMPLERS, probability_flow, sample
from diffusers_cli.engine.schedules import LinearSchedule
from diffusers_cli.engine.score import NFECounter, ScoreFn
from diffusers_cli.engine.sde import VPSDE

SHAPE = (1, 4, 4)
NFES = (4, 5, 6, 8, 10, 12, 15, 20, 30, 50)
ODE_TOLERANCES = (1e-2, 1e-3, 1e-4, 1e-5)
#: Rows of the table: (label, sampler, options). Score evaluations per step: heun and pc 2, the rest 1.
CONFIGS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("ipndm (order 3)", "ipndm", {}),
    ("ei (order 2, data) = DPM-Solver++(2M)", "ei", {}),
    ("ei (order 3, data)", "ei", {"order": 3}),
    ("ei (order 2, data, UniC)", "ei", {"corrector": True}),
    ("ei (order 3, noise)", "ei", {"order": 3, "mode": "noise"}),
    ("ddim", "ddim", {}),
    ("heun", "heun", {}),
    ("euler", "euler", {}),
    ("ddpm", "ddpm", {}),
    ("em", "em", {}),
    ("pc", "pc", {}),
)
COST_PER_STEP = {"heun": 2, "pc": 2}


@dataclass
class Target:
    """An analytic distribution with its exact score and the exact transport of the prior draws."""

    name: str
    dist: GaussianMixture
    reference: Callable[[VPSDE, Tensor], Tensor]


def gaussian_target() -> Target:
    """Per-pixel Gaussian, variances 1e-2 .. 1 (log-spaced), means -1 .. 1."""
    n = math.prod(SHAPE)
    mean = torch.linspace(-1.0, 1.0, n, dtype=torch.float64).reshape(SHAPE)
    var = torch.logspace(-2.0, 0.0, n, dtype=torch.float64).reshape(SHAPE)

    def exact(sde: VPSDE, x_T: Tensor) -> Tensor:
        # The PF-ODE of a Gaussian is linear: x_0 = mean + (x_T - m_T mean) sqrt(var / (m_T^2 var + s_T^2)).
        m, s = sde.marginal(torch.tensor(sde.T, dtype=torch.float64))
        return mean + (x_T.double() - m * mean) * (var / (m * m * var + s * s)).sqrt()

    return Target("gaussian", gaussian(mean, var), exact)


def mixture_target() -> Target:
    """Two Gaussians, weights 0.3 / 0.7, means -0.5 / +0.5 plus a ramp, variances 1e-2 .. 1e-1."""
    n = math.prod(SHAPE)
    ramp = torch.linspace(-0.3, 0.3, n, dtype=torch.float64).reshape(SHAPE)
    means = torch.stack([ramp - 0.5, ramp + 0.5])
    var = torch.logspace(-2.0, -1.0, n, dtype=torch.float64).reshape(SHAPE)
    dist = GaussianMixture(means, var, torch.tensor([0.3, 0.7]))

    def exact(sde: VPSDE, x_T: Tensor) -> Tensor:
        # The score stays finite at t = 0 for a mixture with positive variances: integrate all the way.
        def velocity(t: float, y: Tensor) -> Tensor:
            tv = torch.full((y.shape[0],), t, dtype=y.dtype)
            return probability_flow(sde, y, tv, dist.score(y, tv, sde))

        x0, _ = dopri5(velocity, x_T.double(), sde.T, 0.0, rtol=1e-10, atol=1e-10)
        return x0

    return Target("mixture", dist, exact)


def moment_w2(x: Tensor, ref: Tensor) -> float:
    """Per-pixel RMS 2-Wasserstein distance between the moment-matched diagonal Gaussians of x and ref."""
    x, ref = x.double(), ref.double()
    d2 = (x.mean(0) - ref.mean(0)) ** 2 + (x.std(0) - ref.std(0)) ** 2
    return float(d2.mean().sqrt())


def mode_error(dist: GaussianMixture, x: Tensor, ref: Tensor) -> float:
    """|share of x in component 0 - share of ref in component 0|, components by the exact posterior."""

    def share(v: Tensor) -> float:
        return float((dist.class_posterior(v.double()).argmax(1) == 0).double().mean())

    return abs(share(x) - share(ref))


def peer_sample(sde: VPSDE, score_fn: ScoreFn, x_T: Tensor, nfe: int, oracle: bool) -> Tensor:
    """diffusers' DPM-Solver++(2M), Lu lambdas, on the DDPM linear schedule, fed eps = -std * score."""
    from diffusers import DPMSolverMultistepScheduler

    sched = DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        algorithm_type="dpmsolver++",
        solver_order=2,
        use_lu_lambdas=True,
        prediction_type="epsilon",
    )
    sched.set_timesteps(nfe)
    alpha_bar = sched.alphas_cumprod.double()
    x = x_T.clone()
    for i, step in enumerate(sched.timesteps):
        if oracle:  # the sigma = std / mean the update itself uses
            t = sde.t_from_log_snr(-torch.log(sched.sigmas[i].double()))
        else:  # the continuous time whose alpha_bar equals that of DDPM step `step`
            t = sde.schedule.inverse_integral(-torch.log(alpha_bar[int(step)]))
        tv = torch.full((x.shape[0],), float(t), dtype=x.dtype)
        eps = -sde.marginal(tv)[1].reshape(-1, 1, 1, 1) * score_fn(x, tv)
        x = sched.step(eps, step, x).prev_sample
    return x


def ours_sample(
    sde: VPSDE, score_fn: ScoreFn, x_T: Tensor, name: str, nfe: int, options: dict[str, Any]
) -> tuple[Tensor, int] | None:
    """Our sampler with as many steps as fit in ``nfe`` evaluations, the final denoise included."""
    steps = (nfe - 1) // COST_PER_STEP.get(name, 1)
    if steps < 1:
        return None
    counter = NFECounter(score_fn)
    x = sample(sde, counter, x_T.shape, name, steps, torch.Generator().manual_seed(1), x_init=x_T, **options)
    return x, counter.nfe


def mapping_gap(sde: VPSDE) -> tuple[float, float]:
    """Largest |log-SNR| and relative-std gaps between t = (i + 1) / 1000 and the alpha_bar-matched t_i."""
    from diffusers import DPMSolverMultistepScheduler

    alpha_bar = DPMSolverMultistepScheduler(beta_start=1e-4, beta_end=0.02).alphas_cumprod.double()
    matched = sde.schedule.inverse_integral(-torch.log(alpha_bar))
    naive = torch.arange(1, 1001, dtype=torch.float64) / 1000
    lam_gap = (sde.log_snr(matched) - sde.log_snr(naive)).abs().max()
    std_gap = (sde.marginal(naive)[1] / sde.marginal(matched)[1] - 1).abs().max()
    return float(lam_gap), float(std_gap)


def _fmt(err: float, nfe_used: int | None = None, nfe: int | None = None) -> str:
    s = f"{err:.2e}"
    return s if nfe_used is None or nfe_used == nfe else f"{s} ({nfe_used})"


def accuracy_tables(batch: int, nfes: tuple[int, ...], configs: tuple[tuple[str, str, dict[str, Any]], ...], peer: bool) -> None:
    """Print error-versus-NFE tables for each target (markdown)."""
    sde = VPSDE(LinearSchedule(0.1, 20.0))
    x_T = sde.prior_sample((batch, *SHAPE), torch.Generator().manual_seed(0))
    for target in (gaussian_target(), mixture_target()):
        score_fn = target.dist.score_fn(sde)
        ref = target.reference(sde, x_T)
        metrics: dict[str, Callable[[Tensor], float]] = {"moment W2": lambda x, r=ref: moment_w2(x, r)}
        if len(target.dist.means) > 1:
            metrics["mode err"] = lambda x, d=target.dist, r=ref: mode_error(d, x, r)
        rows: dict[str, dict[str, list[str]]] = {m: {} for m in metrics}

        def add(label: str, cells: list[tuple[Tensor, int, int] | None], metrics: dict = metrics, rows: dict = rows) -> None:
            for m, fn in metrics.items():
                rows[m][label] = ["-" if c is None else _fmt(fn(c[0]), c[1], c[2]) for c in cells]

        if peer:
            for label, oracle in (("diffusers DPM++(2M)", False), ("diffusers DPM++(2M), oracle sigma", True)):
                add(label, [(peer_sample(sde, score_fn, x_T, n, oracle), n, n) for n in nfes])
        for label, name, options in configs:
            cells: list[tuple[Tensor, int, int] | None] = []
            for n in nfes:
                out = ours_sample(sde, score_fn, x_T, name, n, options)
                cells.append(None if out is None else (out[0], out[1], n))
            add(label, cells)
            print(f"  ... {target.name}: {label}", flush=True)
        for m in metrics:
            print(f"\n### {target.name}: {m} versus NFE (batch {batch}; '(k)': k NFE actually used)\n")
            print("| sampler | " + " | ".join(str(n) for n in nfes) + " |")
            print("|---|" + "---|" * len(nfes))
            for label, cells_ in rows[m].items():
                print(f"| {label} | " + " | ".join(cells_) + " |")
        print(f"\n### {target.name}: adaptive RK45 `ode` (NFE it chose)\n")
        print("| rtol = atol | NFE | " + " | ".join(metrics) + " |")
        print("|---|---|" + "---|" * len(metrics))
        for tol in ODE_TOLERANCES:
            counter = NFECounter(score_fn)
            x = sample(sde, counter, x_T.shape, "ode", 1, None, x_init=x_T, rtol=tol, atol=tol)
            print(f"| {tol:g} | {counter.nfe} | " + " | ".join(f"{fn(x):.2e}" for fn in metrics.values()) + " |")


def overhead_table(repeats: int) -> None:
    """Sampler time per score evaluation with a free score, against one U-Net forward (batch 64, 3x32x32)."""
    from diffusers_cli.engine.networks.unet import UNet

    net = UNet(image_size=32, in_channels=3, base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,)).eval()
    sde = VPSDE()
    x = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.full((64,), 0.5)
    with torch.no_grad():
        net(x, sde.noise_label(t), None)
        forward = statistics.median(_timed(lambda: net(x, sde.noise_label(t), None)) for _ in range(repeats))
    out = torch.zeros_like(x)

    def free_score(x: Tensor, t: Tensor) -> Tensor:  # a precomputed output: all remaining time is the sampler's
        return out

    print(f"\n### Sampler overhead per NFE (batch 64, 3x32x32; U-Net forward {forward * 1e3:.1f} ms, median of {repeats})\n")
    print("| sampler | steps | NFE | overhead / NFE (ms) | % of U-Net forward |")
    print("|---|---|---|---|---|")
    for name in SAMPLERS:
        steps = 20
        counter = NFECounter(free_score)
        opts = {"rtol": 1e-3, "atol": 1e-3} if name == "ode" else {}
        times = []
        for _ in range(repeats):
            counter.nfe = 0
            start = time.perf_counter()
            sample(sde, counter, x.shape, name, steps, torch.Generator().manual_seed(0), **opts)
            times.append(time.perf_counter() - start)
        per = statistics.median(times) / max(counter.nfe, 1)
        print(f"| {name} | {steps} | {counter.nfe} | {per * 1e3:.3f} | {100 * per / forward:.2f} % |")


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    """Parse flags, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=10_000, help="samples per run (same prior draws for all)")
    parser.add_argument("--quick", action="store_true", help="fewer NFEs and samplers, batch 2000")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=5, help="timing repeats for the overhead table")
    parser.add_argument("--skip-overhead", action="store_true", help="accuracy tables only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        import diffusers  # noqa: F401

        peer = True
    except ImportError:
        print("diffusers is not installed: `pip install diffusers` to compare with its DPM-Solver++; ours only.")
        peer = False
    nfes, configs, batch = NFES, CONFIGS, args.batch
    if args.quick:
        nfes, configs, batch = (5, 6, 8, 10, 15, 20), CONFIGS[:5], 2000
    print(f"# Samplers: accuracy versus NFE (torch {torch.__version__}, {args.threads} thread(s))")
    if peer:
        lam_gap, std_gap = mapping_gap(VPSDE())
        print(f"\nt = (i + 1) / 1000 versus alpha_bar-matched t_i: max |d log-SNR| = {lam_gap:.3f}, max |d std| / std = {std_gap:.3f}")
    accuracy_tables(batch, nfes, configs, peer)
    if not args.skip_overhead:
        overhead_table(args.repeats)


if __name__ == "__main__":
    main()
