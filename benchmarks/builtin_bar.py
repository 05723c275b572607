"""Issue 19's quality bar, measured on the very commands it names: the digit asked, read by the MNIST judge.

    python benchmarks/builtin_bar.py [--digits 0-9] [--default-sampler] [--json]

For each digit d, 64 samples of `diffuse sample --model builtin:mnist --class d --sampler ei --steps 20 -n 64` and of
`diffuse condition --model builtin:mnist --classifier builtin:mnist-classifier --class d --guidance 1 --scale 4
--sampler ei --steps 20 -n 64` (drawn through `dc`, which returns those commands' images byte for byte), judged by
benchmarks/shapes_judge.py's MNIST judge (cached in runs/builtin/, as examples/builtin_models.py leaves it): the share
recognised (confidence >= 0.9) as the digit asked (the cards give the judge FD of 256 samples of all digits; 64 of
one digit are too few for a Frechet distance in the judge's features).
--default-sampler adds the commands exactly as the issue writes them, without --sampler, for 7: the model card's
recommended sampler (ei, 20 steps; pc, 1000 steps before the cards recommended one).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model
from shapes_judge import cached_judge, judge_images

import diffusers_cli as dc

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist"
JUDGE = ROOT / "runs" / "builtin" / "judge-mnist-28.safetensors"
N = 64


def as_asked(x: torch.Tensor, digit: int, judge: torch.nn.Module) -> float:
    """Share of x the judge recognises, with confidence, as the digit asked."""
    cls, ok = judge_images(judge, x)
    return round(((cls == digit) & ok).float().mean().item(), 4)


def main() -> None:
    """Print the per-digit table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--digits", default="0-9", help="a range a-b or a comma list")
    ap.add_argument("--default-sampler", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not (MNIST / "t10k-images-idx3-ubyte.gz").is_file():
        sys.exit(f"the MNIST test split is not at {MNIST}")
    lo, _, hi = args.digits.partition("-")
    digits = list(range(int(lo), int(hi) + 1)) if hi else [int(d) for d in args.digits.split(",")]
    judge, _, _ = cached_judge(28, JUDGE, "mnist", MNIST)
    mnist, clf = dc.load_model("builtin:mnist"), dc.load_model("builtin:mnist-classifier")
    rows = []
    runs = [(d, "ei", 20) for d in digits] + ([(7, None, None)] if args.default_sampler else [])
    for digit, sampler, steps in runs:
        opts = {"sampler": sampler, "steps": steps} if sampler else {}
        t0 = time.perf_counter()
        x = dc.sample(mnist, N, label=digit, seed=0, **opts)
        t_sample = time.perf_counter() - t0
        t0 = time.perf_counter()
        y = dc.condition(mnist, digit, N, classifier=clf, guidance=1.0, scale=4.0, seed=0, **opts)
        t_cond = time.perf_counter() - t0
        rows.append({"digit": digit, "sampler": f"{sampler}, {steps} steps" if sampler else "default (pc, 1000 steps)",
                     "sample": {"as_asked": as_asked(x, digit, judge), "seconds": round(t_sample, 1)},
                     "condition": {"as_asked": as_asked(y, digit, judge), "seconds": round(t_cond, 1)}})
        if not args.json:
            r = rows[-1]
            print(f"digit {digit} ({r['sampler']}): sample {100 * r['sample']['as_asked']:.1f} % as asked "
                  f"({r['sample']['seconds']} s); condition {100 * r['condition']['as_asked']:.1f} % "
                  f"({r['condition']['seconds']} s)", flush=True)
    ei = [r for r in rows if r["sampler"].startswith("ei")]
    summary = {"cpu": cpu_model(), "rows": rows,
               "mean_as_asked_sample": round(sum(r["sample"]["as_asked"] for r in ei) / max(len(ei), 1), 4),
               "mean_as_asked_condition": round(sum(r["condition"]["as_asked"] for r in ei) / max(len(ei), 1), 4)}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"mean over digits (ei, 20 steps): sample {100 * summary['mean_as_asked_sample']:.1f} %, "
              f"condition {100 * summary['mean_as_asked_condition']:.1f} % on {summary['cpu']}")


if __name__ == "__main__":
    main()
