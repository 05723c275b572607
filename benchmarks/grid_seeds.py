"""Issue 33's judged targets over tuning seeds: does a tuned grid ever lose to the default grid under the judge?

For each ready-made model and step count, `diffuse tune` (the shipped grids' settings: examples/builtin_models.py
GRID_TUNING, the default objective and held-out check) is run with tuning seeds 0, 1, 2 into a grids file of this
benchmark's own (the package's is not touched). Each seed's grid (the default grid where the held-out check did not
keep the tuned one) is judged beside the default grid as the shipped grids are: 256 samples, per-image seeds 0..255,
every class in turn at the default guidance; recognised share and judge FD, with the paired standard error of each
gap. No judge stage here: this is the tuner alone, before the judge's second check that the shipped grids pass.

    python benchmarks/grid_seeds.py --model shapes --steps 3,4,5,6 --seeds 0,1,2 --out runs/grid_seeds
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import diffusers_cli as dc  # noqa: E402
from builtin_models import GRID_TUNING, grid_judge  # noqa: E402


def main() -> None:
    """Tune at each seed and step count, judge each grid against the default, print one JSON line a cell."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="shapes", help="a builtin score model's name (shapes, mnist, ...)")
    ap.add_argument("--steps", default="3,4,5,6")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--sampler", default="ei")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "grid_seeds")
    args = ap.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    judged = grid_judge(args.model, ROOT / "runs" / "builtin")
    for seed in (int(s) for s in args.seeds.split(",")):
        target = args.out / f"{args.model}-seed{seed}.json"
        t0 = time.perf_counter()
        entries = dc.tune(f"builtin:{args.model}", sampler=args.sampler, steps=steps, grids=target, seed=seed,
                          **GRID_TUNING.get(args.model, {}))
        for e in entries:
            j = judged(e["sampler"], e["steps"], e["times"])
            lost_share = j["default_recognised"] - j["recognised"] > j["recognised_gap_se"]
            lost_fd = j["judge_fd"] - j["default_judge_fd"] > j["judge_fd_gap_se"]
            print(json.dumps({"model": args.model, "steps": e["steps"], "seed": seed, "kept": e["kept"], **j,
                              "lost_share": lost_share, "lost_fd": lost_fd,
                              "tune_seconds": e["cost"]["seconds"]}), flush=True)
        print(f"# seed {seed}: {len(entries)} grids in {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
