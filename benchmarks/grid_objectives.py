"""Which grid objective ranks time grids as a judge of the pictures does (issue 33's study).

    python benchmarks/grid_objectives.py                       # builtin:shapes and builtin:mnist, 3-6 NFE
    python benchmarks/grid_objectives.py --models shapes --nfe 4,5 -n 128

For each model and NFE (ipndm with NFE - 1 steps plus the final denoise, as benchmarks/tuned_grids.py),
a pool of grids: the named grids, a lattice of the log-SNR simplex (the tuner's coarse stage, budget
--lattice) and --random grids drawn uniformly from the simplex. Every grid in the pool is scored by
every objective of ``engine.grid_objectives`` on the tuner's batch (16 images, the tuner's seed and
guided score, against the same accurate RK45 solve). A judged set is then sampled at -n images each
(guided as `diffuse sample` does, per-image seeds 0..n-1, the same for every grid): the named grids,
each objective's best grid of the pool (what tuning by it would pick) and the random grids. The judge
of benchmarks/shapes_judge.py (cached in runs/builtin/) gives each the recognised share (confidence >=
0.9) and the judge FD against n real images. The table: each objective's Spearman rank correlation
with the judge FD and with the unrecognised share over the judged set, per model and NFE, and what
the grid each objective picks scores with the judge.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model
from shapes_judge import cached_judge, judge_images
from shapes_quality import judge_fd, load_real

from diffusers_cli.config.defaults import DEFAULT_GUIDANCE
from diffusers_cli.engine.grid_objectives import OBJECTIVES, Context
from diffusers_cli.engine.grid_tuning import lattice_size
from diffusers_cli.engine.grids import GRIDS, time_grid
from diffusers_cli.engine.guidance import classifier_free, cycle_labels
from diffusers_cli.engine.rng import ImageGenerators
from diffusers_cli.engine.samplers import sample
from diffusers_cli.models import load_score_model
from diffusers_cli.parts.drawing import guided_score_fns

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist"
SAMPLER = "ipndm"
TUNE_BATCH, TUNE_SEED = 16, 0  # `diffuse tune`'s defaults


def u_to_times(sde: Any, u: list[float], default: torch.Tensor, end: float) -> torch.Tensor:
    """Times of a point of the normalised log-SNR simplex (ends as the default grid), as the tuner maps them."""
    lam_T, lam_end = (float(v) for v in sde.log_snr(torch.tensor([sde.T, end], dtype=torch.float64)))
    ts = sde.t_from_log_snr(torch.tensor([lam_T + v * (lam_end - lam_T) for v in u], dtype=torch.float64))
    ts[0], ts[-1] = float(default[0]), float(default[-1])
    return ts


def pool(sde: Any, steps: int, lattice: int, random: int, seed: int) -> dict[str, torch.Tensor]:
    """Named grids, the lattice of the simplex and uniform random grids, by label."""
    end = sde.eps
    default = time_grid(sde, steps, "logsnr", end)
    grids = {name: time_grid(sde, steps, name, end) for name in GRIDS}
    points = lattice_size(steps, lattice)
    import itertools

    if points:
        for inner in itertools.combinations(range(1, points), steps - 1):
            grids[f"lattice {inner}/{points}"] = u_to_times(sde, [0.0, *(k / points for k in inner), 1.0], default, end)
    gen = torch.Generator().manual_seed(seed)
    for i in range(random):
        inner = sorted(torch.rand(steps - 1, generator=gen, dtype=torch.float64).tolist())
        grids[f"random {i}"] = u_to_times(sde, [0.0, *inner, 1.0], default, end)
    return {k: v for k, v in grids.items() if bool((v[1:] < v[:-1]).all())}


def study(name: str, nfes: list[int], n: int, lattice: int, random: int) -> dict[str, Any]:
    """One model: objectives of the pool, judged set, rank correlations per NFE."""
    model, card = load_score_model(f"builtin:{name}")
    model.requires_grad_(False)
    sde = model.sde
    judge, _, _ = cached_judge(card.image_hw[0], ROOT / "runs" / "builtin" / f"judge-{card.dataset}-{card.image_hw[0]}.safetensors",
                               card.dataset, MNIST)
    real = load_real(card.dataset, card.image_hw[0], card.channels, MNIST, n)
    labels = cycle_labels(0, n, card.num_classes)
    judged_fn = classifier_free(model, labels, DEFAULT_GUIDANCE)
    tune_fn = guided_score_fns(model, card.num_classes, None, DEFAULT_GUIDANCE, torch.device("cpu"))(0, TUNE_BATCH)
    ctx = Context(sde, tune_fn)
    gen = torch.Generator().manual_seed(TUNE_SEED)
    with torch.no_grad():
        x_T = sde.prior_sample((TUNE_BATCH, *card.image_shape), gen)
        ref = sample(sde, tune_fn, x_T.shape, "ode", 1, None, grid=None, x_init=x_T, rtol=1e-4, atol=1e-4)
    out: dict[str, Any] = {"image_shape": list(card.image_shape), "cells": []}
    for nfe in nfes:
        t0 = time.perf_counter()
        steps = nfe - 1
        grids = pool(sde, steps, lattice, random, seed=nfe)
        scores: dict[str, dict[str, float]] = {}
        for label, ts in grids.items():
            with torch.no_grad():
                x = sample(sde, tune_fn, x_T.shape, SAMPLER, steps, None, grid=ts, x_init=x_T)
            scores[label] = {o: obj(x, ref, ctx) for o, obj in OBJECTIVES.items()}
        picks = {o: min(scores, key=lambda k, o=o: scores[k][o]) for o in OBJECTIVES}
        judged_labels = list(dict.fromkeys([*GRIDS, *picks.values(), *(k for k in grids if k.startswith("random"))]))
        judged: dict[str, dict[str, float]] = {}
        for label in judged_labels:
            with torch.no_grad():
                x = sample(sde, judged_fn, (n, *card.image_shape), SAMPLER, steps, ImageGenerators.for_images(0, 0, n), grid=grids[label])
            _, ok = judge_images(judge, x)
            judged[label] = {"recognised": ok.float().mean().item(), "judge_fd": judge_fd(judge, x, real)}
        fd = [judged[k]["judge_fd"] for k in judged_labels]
        miss = [1 - judged[k]["recognised"] for k in judged_labels]
        corr = {o: {"fd": float(spearmanr([scores[k][o] for k in judged_labels], fd).statistic),
                    "unrecognised": float(spearmanr([scores[k][o] for k in judged_labels], miss).statistic)} for o in OBJECTIVES}
        cell = {"nfe": nfe, "pool": len(grids), "judged": len(judged_labels), "correlation": corr,
                "picks": {o: {"grid": k, **judged[k]} for o, k in picks.items()},
                "default": judged["logsnr"], "named": {k: judged[k] for k in GRIDS},
                "seconds": round(time.perf_counter() - t0, 1)}
        out["cells"].append(cell)
        print(f"  builtin:{name} {nfe} NFE ({cell['seconds']} s): " + "; ".join(
            f"{o} rho_fd {c['fd']:+.2f} rho_miss {c['unrecognised']:+.2f} pick {100 * cell['picks'][o]['recognised']:.1f} %"
            for o, c in corr.items()) + f"; default {100 * judged['logsnr']['recognised']:.1f} %", flush=True)
    return out


def print_table(result: dict[str, Any]) -> None:
    """Markdown: objective x (model, NFE) rank correlation with judge FD / unrecognised share, and the picks' judged quality."""
    cols = [(m, c) for m, d in result["models"].items() for c in d["cells"]]
    print("\n| objective | " + " | ".join(f"{m} {c['nfe']}" for m, c in cols) + " | mean |")
    print("|---|" + "---|" * (len(cols) + 1))
    for o in OBJECTIVES:
        vals = [(c["correlation"][o]["fd"], c["correlation"][o]["unrecognised"]) for _, c in cols]
        mean_fd = sum(v[0] for v in vals) / len(vals)
        mean_miss = sum(v[1] for v in vals) / len(vals)
        print(f"| {o} | " + " | ".join(f"{a:+.2f} / {b:+.2f}" for a, b in vals) + f" | **{mean_fd:+.2f} / {mean_miss:+.2f}** |")
    print("\nRecognised share / judge FD of the grid each objective picks from the pool (default logsnr grid last):\n")
    print("| objective | " + " | ".join(f"{m} {c['nfe']}" for m, c in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for o in OBJECTIVES:
        print(f"| {o} | " + " | ".join(f"{100 * c['picks'][o]['recognised']:.1f} % / {c['picks'][o]['judge_fd']:.1f}" for _, c in cols) + " |")
    print("| default (logsnr) | " + " | ".join(f"{100 * c['default']['recognised']:.1f} % / {c['default']['judge_fd']:.1f}" for _, c in cols) + " |")


def main() -> None:
    """Run the study and print its tables."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="shapes,mnist")
    ap.add_argument("--nfe", default="3,4,5,6")
    ap.add_argument("-n", type=int, default=256, help="judged samples per grid")
    ap.add_argument("--lattice", type=int, default=40, help="the pool's lattice budget (grids)")
    ap.add_argument("--random", type=int, default=6, help="random grids in the pool (all judged)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    result: dict[str, Any] = {"cpu": cpu_model(), "threads": args.threads, "n": args.n, "models": {}}
    for name in args.models.split(","):
        result["models"][name] = study(name, [int(v) for v in args.nfe.split(",")], args.n, args.lattice, args.random)
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
    print(f"# Grid objectives against the judge ({result['cpu']}, {args.threads} thread(s), {time.perf_counter() - t0:.0f} s)")
    print_table(result)


if __name__ == "__main__":
    main()
