"""Tuned time grids (issue 21): error at 3-8 NFE on exact scores beside diffusers' DPM-Solver++(2M), and judged quality of real models.

    python benchmarks/tuned_grids.py                  # both parts (about 20 minutes on one CPU thread)
    python benchmarks/tuned_grids.py --part analytic  # exact-score densities only (a minute or two)
    python benchmarks/tuned_grids.py --part models --models shapes
    python benchmarks/tuned_grids.py --part models --models shapes --objective moments [--lattice 400 --rounds 6]

Part 1, exact scores. The targets, SDE, error measures and the peer are those of benchmarks/samplers.py
(a per-pixel Gaussian with variances 1e-2 .. 1, a two-mode mixture with weights 0.3 / 0.7; VP linear
0.1 -> 20; moment W2 and mode error against the exact transport of the same 10,000 prior draws;
diffusers' DPMSolverMultistepScheduler, dpmsolver++, order 2, Lu lambdas, its best grid there). Each of
our rows uses NFE - 1 steps plus the final denoise; the tuned grid is found by `engine.grid_tuning.tune`
on 1,024 *other* prior draws (seed 1), so the table measures it on noise it never saw; ipndm has a second
tuned row, the moments objective with a wider search (TUNINGS).

Part 2, trained models. For each `builtin:` model, ipndm at 4, 5 and 6 NFE with its default (log-SNR)
grid and with the grid `diffuse tune` finds (batch 16, seed 0, the defaults): 256 samples of every class
in turn, guided as `diffuse sample` guides them (per-image seeds 0..255), read by the judge of
benchmarks/shapes_judge.py (cached in runs/builtin/, as examples/builtin_models.py leaves it):
recognised share, share recognised as the class asked, judge FD against 256 real images; and the tuner's
cost in sampler runs, score evaluations and seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model
from samplers import gaussian_target, mixture_target, mode_error, moment_w2, peer_sample

from diffusers_cli.engine.grid_tuning import tune
from diffusers_cli.engine.samplers import sample
from diffusers_cli.engine.schedules import LinearSchedule
from diffusers_cli.engine.sde import VPSDE

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist"
NFES = (3, 4, 5, 6, 7, 8)
#: (label, sampler, options) of our rows in part 1.
OURS = (("ipndm", "ipndm", {}), ("ei (order 2) = DPM-Solver++(2M)", "ei", {}))
#: (row suffix, tune() settings): the defaults of `diffuse tune`, and its moments objective with a larger search
#: (`diffuse tune --objective moments --set lattice=400 --set rounds=6`), for ipndm.
TUNINGS = (("tuned grid", {}), ("tuned grid, moments objective, lattice 400, rounds 6", {"objective": "moments", "lattice": 400, "rounds": 6}))


def analytic(batch: int, tune_batch: int, nfes: tuple[int, ...] = NFES) -> dict[str, Any]:
    """Part 1: {target: {metric: {row: [error per NFE]}}} plus the tuner's cost per cell."""
    sde = VPSDE(LinearSchedule(0.1, 20.0))
    x_T = sde.prior_sample((batch, 1, 4, 4), torch.Generator().manual_seed(0))
    out: dict[str, Any] = {}
    for target in (gaussian_target(), mixture_target()):
        score_fn = target.dist.score_fn(sde)
        ref = target.reference(sde, x_T)
        metrics = {"moment W2": lambda x, r=ref: moment_w2(x, r)}
        if len(target.dist.means) > 1:
            metrics["mode err"] = lambda x, d=target.dist, r=ref: mode_error(d, x, r)
        rows: dict[str, dict[str, list[float]]] = {m: {} for m in metrics}
        cost: dict[str, list[dict[str, Any]]] = {}
        peer = [peer_sample(sde, score_fn, x_T, n, False) for n in nfes]
        for m, fn in metrics.items():
            rows[m]["diffusers DPM++(2M)"] = [fn(x) for x in peer]
        for label, name, opts in OURS:
            default = [sample(sde, score_fn, x_T.shape, name, n - 1, None, x_init=x_T, **opts) for n in nfes]
            for m, fn in metrics.items():
                rows[m][f"{label}, default grid"] = [fn(x) for x in default]
            for suffix, search in TUNINGS[:1] if name != "ipndm" else TUNINGS:
                tuned, costs = [], []
                for n in nfes:
                    res = tune(sde, score_fn, (tune_batch, 1, 4, 4), name, n - 1, generator=torch.Generator().manual_seed(1),
                               **search, **opts)
                    tuned.append(sample(sde, score_fn, x_T.shape, name, n - 1, None, grid=res.times, x_init=x_T, **opts))
                    costs.append({"nfe": n, "evaluations": res.evaluations, "score_evaluations": res.nfe, "seconds": round(res.seconds, 2),
                                  "start": res.start, "times": [round(float(t), 5) for t in res.times]})
                for m, fn in metrics.items():
                    rows[m][f"{label}, {suffix}"] = [fn(x) for x in tuned]
                cost[f"{label}, {suffix}"] = costs
            print(f"  ... {target.name}: {label}", flush=True)
        # The same NFE spent on steps alone (`--no-denoise`): at 3-4 NFE the final denoising step is a quarter or a
        # third of the budget, and on a tuned grid a real step there is worth more than the denoise.
        label = f"ipndm, NFE steps, no final denoise, {TUNINGS[1][0]}"
        tuned, costs = [], []
        for n in nfes:
            res = tune(sde, score_fn, (tune_batch, 1, 4, 4), "ipndm", n, generator=torch.Generator().manual_seed(1),
                       final_denoise=False, **TUNINGS[1][1])
            tuned.append(sample(sde, score_fn, x_T.shape, "ipndm", n, None, grid=res.times, x_init=x_T, final_denoise=False))
            costs.append({"nfe": n, "evaluations": res.evaluations, "score_evaluations": res.nfe, "seconds": round(res.seconds, 2),
                          "start": res.start, "times": [round(float(t), 5) for t in res.times], "kept": res.kept})
        for m, fn in metrics.items():
            rows[m][label] = [fn(x) for x in tuned]
        cost[label] = costs
        out[target.name] = {"rows": rows, "tuning": cost}
    return out


def models(names: list[str], n: int, **search: Any) -> dict[str, Any]:
    """Part 2: judged samples of each builtin model with ipndm at 4, 5, 6 NFE, default against tuned grid."""
    from shapes_judge import cached_judge, judge_images
    from shapes_quality import judge_fd, load_real

    from diffusers_cli.config.schema import SamplerConfig
    from diffusers_cli.config.defaults import DEFAULT_GUIDANCE
    from diffusers_cli.engine.guidance import classifier_free, cycle_labels
    from diffusers_cli.engine.rng import ImageGenerators
    from diffusers_cli.parts.evaluation import tune_for
    from diffusers_cli.models import load_score_model

    out: dict[str, Any] = {}
    for name in names:
        model, card = load_score_model(f"builtin:{name}")
        model.requires_grad_(False)
        judge, _, _ = cached_judge(card.image_hw[0], ROOT / "runs" / "builtin" / f"judge-{card.dataset}-{card.image_hw[0]}.safetensors",
                                   card.dataset, MNIST)
        real = load_real(card.dataset, card.image_hw[0], card.channels, MNIST, n)
        labels = cycle_labels(0, n, card.num_classes)
        score_fn = classifier_free(model, labels, DEFAULT_GUIDANCE)
        rows = []
        for nfe in (4, 5, 6):
            s = SamplerConfig(name="ipndm", steps=nfe - 1)
            res = tune_for(model, card, s, torch.device("cpu"), **search)
            cells = {}
            for grid_name, grid in (("default", None), ("tuned", res.times)):
                with torch.no_grad():
                    x = sample(model.sde, score_fn, (n, *card.image_shape), "ipndm", nfe - 1, ImageGenerators.for_images(0, 0, n), grid=grid)
                cls, ok = judge_images(judge, x)
                cells[grid_name] = {"recognised": round(ok.float().mean().item(), 4),
                                    "as_asked": round((ok & (cls == labels)).float().mean().item(), 4),
                                    "judge_fd": round(judge_fd(judge, x, real), 2)}
            rows.append({"nfe": nfe, **cells, "tuning": {"evaluations": res.evaluations, "score_evaluations": res.nfe,
                                                         "reference_nfe": res.reference_nfe, "seconds": round(res.seconds, 1),
                                                         "objective": res.error, "default_objective": res.default_error}})
            print(f"  ... builtin:{name} at {nfe} NFE: {rows[-1]}", flush=True)
        out[name] = {"image_shape": list(card.image_shape), "rows": rows}
    return out


def print_tables(result: dict[str, Any]) -> None:
    """Markdown tables of both parts."""
    nfes = result.get("nfes", NFES)
    for target, data in result.get("analytic", {}).items():
        for metric, rows in data["rows"].items():
            print(f"\n#### {target}: {metric} versus NFE\n")
            print("| | " + " | ".join(str(n) for n in nfes) + " |\n|---|" + "---|" * len(nfes))
            peer = rows["diffusers DPM++(2M)"]
            for label, vals in rows.items():
                print(f"| {label} | " + " | ".join(f"{v:.2e}" for v in vals) + " |")
            for label in rows:
                if "tuned grid" in label:
                    print(f"| {label} / peer | " + " | ".join(f"**{v / p:.2f}**" if p > 0 else "-" for v, p in zip(rows[label], peer)) + " |")
        for label, costs in data["tuning"].items():
            print(f"\n{target}, {label}: tuner cost per NFE " + ", ".join(
                f"{c['nfe']}: {c['evaluations']} runs / {c['score_evaluations']} NFE / {c['seconds']} s" for c in costs))
    for name, data in result.get("models", {}).items():
        c, h, w = data["image_shape"]
        print(f"\n#### builtin:{name} ({c}x{h}x{w}), ipndm, 256 samples, judged\n")
        print("| NFE | recognised (default / tuned) | as asked (default / tuned) | judge FD (default / tuned) | tuner: runs, NFE, seconds |")
        print("|---|---|---|---|---|")
        for r in data["rows"]:
            d, t, k = r["default"], r["tuned"], r["tuning"]
            print(f"| {r['nfe']} | {100 * d['recognised']:.1f} % / {100 * t['recognised']:.1f} % | {100 * d['as_asked']:.1f} % / "
                  f"{100 * t['as_asked']:.1f} % | {d['judge_fd']} / {t['judge_fd']} | {k['evaluations']}, {k['score_evaluations']}, {k['seconds']} |")


def main() -> None:
    """Run the parts asked for and print (or dump) the tables."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("all", "analytic", "models"), default="all")
    ap.add_argument("--models", default="shapes,mnist", help="builtin models for part 2, comma-separated")
    ap.add_argument("--batch", type=int, default=10_000, help="evaluation draws in part 1")
    ap.add_argument("--tune-batch", type=int, default=1024, help="draws the grid is tuned on in part 1")
    ap.add_argument("-n", type=int, default=256, help="samples per cell in part 2")
    ap.add_argument("--objective", choices=("path", "moments"), help="part 2: the tuner's objective (default: its own choice, path)")
    ap.add_argument("--lattice", type=int, default=80, help="part 2: the tuner's lattice budget")
    ap.add_argument("--rounds", type=int, default=3, help="part 2: the tuner's local-search rounds")
    ap.add_argument("--nfe", default=",".join(map(str, NFES)), help="part 1: the NFE columns, comma-separated")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    nfes = tuple(int(n) for n in args.nfe.split(","))
    result: dict[str, Any] = {"cpu": cpu_model(), "threads": args.threads, "torch": torch.__version__, "nfes": nfes}
    if args.part in ("all", "analytic"):
        result["analytic"] = analytic(args.batch, args.tune_batch, nfes)
    if args.part in ("all", "models"):
        result["models"] = models(args.models.split(","), args.n, objective=args.objective, lattice=args.lattice, rounds=args.rounds)
    print(f"# Tuned grids ({result['cpu']}, {args.threads} thread(s), {time.perf_counter() - t0:.0f} s)")
    print_tables(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
