"""Issue 33's judged targets over tuning seeds: does a tuned grid ever lose to the default grid under the judge?

For each ready-made model and step count, `diffuse tune`'s search (the shipped grids' settings:
examples/builtin_models.py GRID_TUNING, the default objective and its held-out check) is run with tuning seeds
0, 1, 2 into a grids file of this benchmark's own (the package's is not touched). Each seed's grid (the default
grid where a check did not keep the tuned one) is then judged beside the default grid as the shipped grids are:
256 samples, per-image noise of job seed 0, every class in turn at the default guidance; recognised share and
judge FD, with the paired standard error of each gap. "lost" is a gap beyond one SE (the issue's criterion).

`--judge-check` adds the tuner's last gate, `diffuse tune --judge` (``parts.judging.grid_check``): a winner of the
held-out check is drawn again on 256 images of other noise (job seed ``CHECK_SEED`` + the tuning seed, never the
evaluation's) and kept only if the judge finds it a clear win there. The gate reads nothing of the search but the
two grids and the tuning seed, so it is applied after the search here exactly as `tune` applies it at its end;
`--reuse DIR` takes the search's grids from an earlier run of this benchmark (DIR/MODEL-seedS.json; seed 0 may be
the package's grids.json, the shipped grids' own run) instead of searching again. `--check-judge builtin:NAME`
gates with a packaged judge (builtin:mnist-judge, a different network from the evaluating judge) instead of the
evaluating judge.

    python benchmarks/grid_seeds.py --model shapes --steps 3,4,5,6 --seeds 0,1,2 --out runs/grid_seeds
    python benchmarks/grid_seeds.py --model mnist --judge-check --reuse runs/grid_seeds --check-judge builtin:mnist-judge
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import diffusers_cli as dc  # noqa: E402
from builtin_models import GRID_TUNING, grid_gate, grid_judge  # noqa: E402


def searched(model: str, seed: int, steps: list[int], sampler: str, out: Path, reuse: Path | None) -> list[dict[str, Any]]:
    """The search's entries for this seed: from ``reuse`` (an earlier run's file, or the package's for seed 0) or a new `tune`."""
    from diffusers_cli.models.builtin import weights_dir
    from diffusers_cli.parts.tuned_grids import read_entries

    if reuse is not None:
        own = reuse / f"{model}-seed{seed}.json"
        path = own if own.is_file() else weights_dir() / "grids.json"
        found = [e for e in read_entries(path) if e.get("model") == f"builtin:{model}" and e.get("seed", 0) == seed
                 and e["sampler"] == sampler and e["steps"] in steps]
        if sorted(e["steps"] for e in found) != sorted(steps):
            raise SystemExit(f"{path} lacks builtin:{model} seed {seed} at some of steps {steps}")
        return sorted(found, key=lambda e: e["steps"])
    return dc.tune(f"builtin:{model}", sampler=sampler, steps=steps, grids=out / f"{model}-seed{seed}.json", seed=seed,
                   **GRID_TUNING.get(model, {}))


def main() -> None:
    """Search (or reuse) at each seed and step count, gate if asked, judge each grid against the default, one JSON line a cell."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="shapes", help="a builtin score model's name (shapes, mnist, ...)")
    ap.add_argument("--steps", default="3,4,5,6")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--sampler", default="ei")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "grid_seeds")
    ap.add_argument("--judge-check", action="store_true", help="gate each held-out winner as `diffuse tune --judge` does")
    ap.add_argument("--check-judge", help="the gate's judge (builtin:NAME or a judge's file; default: the evaluating judge)")
    ap.add_argument("--reuse", type=Path, help="take the search's grids from this folder of an earlier run")
    args = ap.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    work = ROOT / "runs" / "builtin"
    judged = grid_judge(args.model, work)
    check = grid_gate(args.model, work, args.check_judge) if args.judge_check else None
    for seed in (int(s) for s in args.seeds.split(",")):
        t0 = time.perf_counter()
        entries = searched(args.model, seed, steps, args.sampler, args.out, args.reuse)
        for e in entries:
            held = e.get("held_out")
            candidate = held is not None and bool(held["kept"])  # the search's winner passed the held-out check
            kept, gated = candidate, None
            if candidate and check is not None:
                kept, gated = check(args.sampler, e["steps"], seed, e["times"])
            j = judged(e["sampler"], e["steps"], e["times"] if kept else None)
            lost_share = j["default_recognised"] - j["recognised"] > j["recognised_gap_se"]
            lost_fd = j["judge_fd"] - j["default_judge_fd"] > j["judge_fd_gap_se"]
            print(json.dumps({"model": args.model, "steps": e["steps"], "seed": seed, "held_out_kept": candidate,
                              "kept": kept, "gate": gated, **j, "lost_share": lost_share, "lost_fd": lost_fd,
                              "tune_seconds": e["cost"]["seconds"]}), flush=True)
        print(f"# seed {seed}: {len(entries)} grids in {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
