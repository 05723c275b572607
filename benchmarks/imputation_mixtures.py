"""Imputation accuracy against exact posteriors: 4-component Gaussian mixtures on 8x8 and 16x16 images, a few pixels known.

Each problem is a mixture with unequal weights (down to 0.1) whose components the known pixels separate
by ``sep`` standard deviations (well: 1.5-2, badly: 0.5-0.7); the observation is a draw of the known
pixels from the rarest component, so the posterior favours what the prior finds rare. The missing
pixels separate the components cleanly, so each fill's component is read off it. We report the
total variation (TV) between the fills' component frequencies and the exact posterior weights, median
over seeds, against the cost per draw in score evaluations, a backward pass counted as two (twisted:
3 per particle and step). "exact draws" is the noise floor of as many exact draws.

    python benchmarks/imputation_mixtures.py            # the table in benchmarks/README.md
    python benchmarks/imputation_mixtures.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from torch import Tensor

from diffusers_cli.engine.analytic import GaussianMixture
from diffusers_cli.engine.analytic import imputation_problem as problem
from diffusers_cli.engine.imputation import impute
from diffusers_cli.engine.score import NFECounter
from diffusers_cli.engine.sde import VPSDE

SDE = VPSDE()
STEPS = 200  # `diffuse impute`'s default

#: name -> keywords of engine.analytic.imputation_problem.
PROBLEMS: dict[str, dict[str, Any]] = {
    "8x8, 4 known, well separated": {"seed": 1, "sep": 1.5},
    "8x8, 4 known, badly separated": {"seed": 2, "sep": 0.7},
    "8x8, 16 known, badly separated": {"seed": 3, "known": 16, "sep": 0.5},
    "8x8, 8 known, wide components (var 0.3)": {"seed": 7, "var": 0.3, "sep": 1.0, "known": 8},
    "16x16, 2 known, well separated": {"seed": 5, "size": 16, "known": 2, "sep": 2.0},
}


def component_tv(gm: GaussianMixture, out: Tensor, x: Tensor, mask: Tensor) -> float:
    """TV between the fills' component frequencies and the exact posterior component weights."""
    freq = torch.bincount(gm.component_log_probs(out).argmax(1), minlength=gm.means.shape[0]).double() / out.shape[0]
    return 0.5 * float((freq - gm.observed_posterior(x[0], mask[0])).abs().sum())


def run(spec: dict[str, Any], method: str, draws: int, seed: int, **options: Any) -> tuple[float, int]:
    """(TV, score evaluations per draw with a backward pass counted as two)."""
    gm, x, mask = problem(**spec)
    score = NFECounter(gm.score_fn(SDE))
    out = impute(SDE, score, x, mask, method=method, n=draws, generator=torch.Generator().manual_seed(seed), **options)
    known = mask.expand_as(out).bool()
    assert torch.equal(out[known], x.expand_as(out)[known]), "known pixels changed"
    per_draw = score.nfe * options.get("particles", 1) * (3 if method == "twisted" else 1)
    return component_tv(gm, out, x, mask), per_draw


def exact_floor(spec: dict[str, Any], draws: int, seeds: int) -> float:
    """Median TV of ``draws`` exact component draws: the sampling-noise floor."""
    gm, x, mask = problem(**spec)
    w = gm.observed_posterior(x[0], mask[0])
    tvs = []
    for s in range(seeds):
        labels = torch.multinomial(w, draws, replacement=True, generator=torch.Generator().manual_seed(s))
        tvs.append(0.5 * float((torch.bincount(labels, minlength=len(w)).double() / draws - w).abs().sum()))
    return statistics.median(tvs)


def draws_for(spec: dict[str, Any], draws: int) -> int:
    """Fills per run: half as many on 16x16 problems, which cost four times as much per fill."""
    return draws // 2 if spec.get("size", 8) > 8 else draws


def methods(quick: bool) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, label, options) rows of the table."""
    rows: list[tuple[str, str, dict[str, Any]]] = [
        ("replacement", "ddpm sampler", {"sampler": "ddpm", "steps": STEPS}),
        ("repaint", "40 steps, U=5, jump 4", {"steps": 40, "resample": 5, "jump_length": 4}),
    ]
    for p in (4, 16) if quick else (4, 16, 64):
        rows.append(("smc", f"{p} particles", {"steps": STEPS, "particles": p}))
    for p in (1, 5) if quick else (1, 2, 5, 10):
        rows.append(("twisted", f"{p} particles", {"steps": STEPS, "particles": p}))
    return rows


def main() -> None:
    """Print the TV-against-cost table, one column per problem."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=400, help="fills per run (16x16 problems: half as many)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds to take the median over")
    ap.add_argument("--quick", action="store_true", help="fewer methods, one seed, 8x8 only")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (small tensors: 1 is fastest)")
    ap.add_argument("--only", default="", help="comma-separated rows to run, as method:particles (smc:64) or method")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    seeds = 1 if args.quick else args.seeds
    problems = {k: v for k, v in PROBLEMS.items() if not (args.quick and v.get("size", 8) > 8)}
    print(f"VP SDE, {STEPS} steps (uniform grid), exact score, {args.draws} draws (16x16: {args.draws // 2}), "
          f"median of {seeds} seeds\n")
    for name, spec in problems.items():
        gm, x, mask = problem(**spec)
        w = gm.observed_posterior(x[0], mask[0])
        print(f"- {name}: prior {[round(v, 2) for v in gm.log_weights.exp().tolist()]}, "
              f"posterior {[round(v, 3) for v in w.tolist()]}")
    print("\n| method | setting | evaluations per draw | " + " | ".join(problems) + " | s per run (CPU) |")
    print("|---|---|---:|" + "---:|" * len(problems) + "---:|")
    print("| exact draws | noise floor | 0 | " + " | ".join(f"{exact_floor(s, draws_for(s, args.draws), 25):.3f}" for s in problems.values()) + " | |")
    only = {v.strip() for v in args.only.split(",") if v.strip()}
    for method, label, options in methods(args.quick):
        if only and method not in only and f"{method}:{options.get('particles', '')}" not in only:
            continue
        cells, cost, t0 = [], 0, time.perf_counter()
        for spec in problems.values():
            runs = [run(spec, method, draws_for(spec, args.draws), seed, **options) for seed in range(seeds)]
            cells.append(f"{statistics.median(r[0] for r in runs):.3f}")
            cost = runs[0][1]
        sec = (time.perf_counter() - t0) / (seeds * len(problems))
        print(f"| {method} | {label} | {cost} | " + " | ".join(cells) + f" | {sec:.1f} |", flush=True)


if __name__ == "__main__":
    main()
