"""Controllable generation, analytic part: imputation and guidance accuracy against exact Gaussian-mixture answers.

Imputation: a 3-component mixture on 4 pixels whose pixel 0 is observed; its exact posterior
component weights (0.464, 0.431, 0.105) differ from the prior (0.2, 0.3, 0.5). Each method
draws ``--draws`` fills and we report the total variation (TV) between their component
frequencies and the exact weights, against the NFE per draw (SMC: per particle, and in all).

Guidance: a 1-d mixture 0.7 N(-1, 0.5) + 0.3 N(1, 0.5) guided toward y = 1 with the exact
noise-aware classifier; we report E[p(y | x)] of the draws against the tilted density
p(x) p(y | x)^s at t = 0, computed by quadrature. Scale 1 is exact; other scales are not.

    python benchmarks/controllable.py            # the tables in benchmarks/README.md
    python benchmarks/controllable.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor

from diffusers_cli.engine.analytic import GaussianMixture
from diffusers_cli.engine.guidance import guided
from diffusers_cli.engine.imputation import impute
from diffusers_cli.engine.samplers import sample
from diffusers_cli.engine.score import NFECounter
from diffusers_cli.engine.sde import VPSDE

SDE = VPSDE()
GRID = "logsnr"


def imputation_problem() -> tuple[GaussianMixture, Tensor, Tensor]:
    """The mixture, x_known [1, 1, 1, 4] and its mask (pixel 0 known)."""
    means = torch.tensor([[0.6, 1.0, 1.0, -1.0], [0.0, -1.0, 1.0, 1.0], [-0.6, -1.0, -1.0, 1.0]]).reshape(3, 1, 1, 4)
    variances = torch.tensor([0.25, 0.05, 0.05, 0.05]).expand(3, 4).reshape(3, 1, 1, 4)
    gm = GaussianMixture(means, variances, torch.tensor([0.2, 0.3, 0.5]))
    x = torch.tensor([0.5, 0.0, 0.0, 0.0]).reshape(1, 1, 1, 4)
    mask = torch.tensor([1.0, 0.0, 0.0, 0.0]).reshape(1, 1, 1, 4)
    return gm, x, mask


def imputation_tv(method: str, draws: int, seed: int, **options: object) -> tuple[float, int]:
    """(TV between the fills' component frequencies and the exact weights, score evaluations per chain)."""
    gm, x, mask = imputation_problem()
    gen = torch.Generator().manual_seed(seed)
    score = NFECounter(gm.score_fn(SDE))
    out = impute(SDE, score, x, mask, method=method, n=draws, generator=gen, grid=GRID, **options)
    assert bool((out[:, 0, 0, 0] == 0.5).all()), "known pixel changed"
    freq = torch.bincount(gm.component_log_probs(out).argmax(dim=1), minlength=3).double() / draws
    return 0.5 * float((freq - gm.observed_posterior(x[0], mask[0])).abs().sum()), score.nfe


def exact_draws_tv(draws: int, seed: int) -> tuple[float, int]:
    """The TV of ``draws`` exact draws of the component: the sampling-noise floor every method is measured against."""
    gm, x, mask = imputation_problem()
    weights = gm.observed_posterior(x[0], mask[0])
    labels = torch.multinomial(weights, draws, replacement=True, generator=torch.Generator().manual_seed(seed))
    freq = torch.bincount(labels, minlength=3).double() / draws
    return 0.5 * float((freq - weights).abs().sum()), 0


def median_over_seeds(fn: Callable[[int], tuple[float, int]], seeds: int) -> tuple[float, int, float]:
    """(median of fn(seed)[0] over seeds, fn(seed)[1] of the last seed, seconds per seed)."""
    start = time.perf_counter()
    runs = [fn(seed) for seed in range(seeds)]
    return statistics.median(v for v, _ in runs), runs[-1][1], (time.perf_counter() - start) / seeds


def imputation_table(draws: int, seeds: int, quick: bool) -> None:
    steps_list = (25, 100) if quick else (25, 100, 400)
    rows: list[tuple[str, str, int, int, float, float]] = []
    floor = statistics.median(exact_draws_tv(draws, s)[0] for s in range(max(seeds, 25)))
    rows.append(("exact draws", "noise floor", 0, 0, floor, 0.0))
    for steps in steps_list:
        run = partial(imputation_tv, "replacement", draws, sampler="ddpm", steps=steps)
        tv, nfe, sec = median_over_seeds(lambda s, run=run: run(seed=s), seeds)
        rows.append(("replacement", "ddpm sampler", nfe, nfe, tv, sec))
    for steps in steps_list:  # U = 5 on a grid 5 times coarser: about the same NFE
        opts = {"steps": steps // 5, "jump_length": max(1, steps // 50), "resample": 5}
        run = partial(imputation_tv, "repaint", draws, **opts)
        tv, nfe, sec = median_over_seeds(lambda s, run=run: run(seed=s), seeds)
        rows.append(("repaint", "{steps} steps, U={resample}, jump {jump_length}".format(**opts), nfe, nfe, tv, sec))
    smc_runs = [(steps, 16) for steps in steps_list] + [(100, p) for p in ((4,) if quick else (2, 4, 64))]
    for steps, p in smc_runs:
        run = partial(imputation_tv, "smc", draws, steps=steps, particles=p)
        tv, nfe, sec = median_over_seeds(lambda s, run=run: run(seed=s), seeds)
        rows.append(("smc", f"{steps} steps, {p} particles", nfe, nfe * p, tv, sec))
    print(
        f"\nImputation, {draws} draws, median of {seeds} seeds, VP SDE, {GRID} grid; NFE includes the final denoise\n"
    )
    print("| method | setting | NFE per chain | NFE per draw | TV to exact weights | s per seed (CPU) |")
    print("|---|---|---:|---:|---:|---:|")
    for method, setting, nfe, total, tv, sec in rows:
        print(f"| {method} | {setting} | {nfe} | {total} | {tv:.3f} | {sec:.1f} |")


def tilted_theory(gm: GaussianMixture, y: int, scale: float) -> float:
    """E[p(y | x)] under p(x) p(y | x)^scale / Z at t = 0, by quadrature."""
    xs = torch.linspace(-10.0, 10.0, 40001, dtype=torch.float64).reshape(-1, 1, 1, 1)
    post = gm.class_posterior(xs)[:, y]
    w = torch.softmax(gm.log_prob(xs) + scale * torch.log(post), dim=0)
    return float((w * post).sum())


def guidance_rate(gm: GaussianMixture, sampler: str, scale: float, n: int, seed: int) -> float:
    score = guided(gm.score_fn(SDE), lambda x, t: gm.component_log_probs(x, SDE, t), 1, scale)
    x = sample(SDE, score, (n, 1, 1, 1), sampler, 100, torch.Generator().manual_seed(seed))
    return float(gm.class_posterior(x)[:, 1].mean())


def guidance_table(n: int, seeds: int) -> None:
    gm = GaussianMixture(torch.tensor([-1.0, 1.0]).reshape(2, 1, 1, 1), torch.tensor(0.5), torch.tensor([0.7, 0.3]))
    print(
        f"\nGuidance toward y = 1, {n} draws, 100 steps, median of {seeds} seeds: E[p(y | x)] vs the tilted density\n"
    )
    print("| scale | theory | em | pc (1 corrector step) |")
    print("|---:|---:|---:|---:|")
    for scale in (0.0, 0.5, 1.0, 2.0, 4.0):
        em = statistics.median(guidance_rate(gm, "em", scale, n, s) for s in range(seeds))
        pc = statistics.median(guidance_rate(gm, "pc", scale, n, s) for s in range(seeds))
        print(f"| {scale:g} | {tilted_theory(gm, 1, scale):.3f} | {em:.3f} | {pc:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=2000, help="fills per imputation run")
    parser.add_argument("--seeds", type=int, default=3, help="seeds to take the median over")
    parser.add_argument("--quick", action="store_true", help="fewer settings, for a smoke run")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (tiny tensors: 1 is fastest)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    guidance_table(4000, args.seeds)
    imputation_table(args.draws, args.seeds, args.quick)


if __name__ == "__main__":
    main()
