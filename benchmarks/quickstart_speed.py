"""Training time to a 90 % recognised Quickstart: train recipes at several step totals, judge each as shapes_quality.py does.

    python benchmarks/quickstart_speed.py --variant base="--lr 1e-3" --steps 1000 --threads 1 --out /tmp/qs_sweep
    python benchmarks/quickstart_speed.py --variant lr2e3_lin="--lr 2e-3 --lr-decay linear --set optim.warmup=100" \
        --steps 600,800,1000 --threads 1 --out /tmp/qs_sweep
    python benchmarks/quickstart_speed.py --report --out /tmp/qs_sweep     # the table of every row in results.jsonl

Each (variant, total, seed) is its own `diffuse train --image-size 16 --class-conditional --steps T --json EXTRA`
run (a decaying learning rate depends on the total) in a subprocess with OMP_NUM_THREADS=--threads. Every run is
sampled as `diffuse sample` does (ei, 20 steps, guidance 2, the classes in turn) with two sampling seeds of 256
(seed 0 is shapes_quality.py's own draw), so `recognised` is the share of 512; `judge_fd` is the mean of the two
seeds' judge_fd (each 256 samples against the same 256 real shapes, as shapes_quality.py). The judge is trained
once and cached in OUT/judge_16.safetensors. Rows are appended to OUT/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shapes_judge import cached_judge, judge_images
from shapes_quality import judge_fd, load_real, score_for

from diffusers_cli.models import load_score_model
from diffusers_cli.config.defaults import DEFAULT_GUIDANCE
from diffusers_cli.engine.samplers import sample

IMAGE_SIZE = 16
SAMPLE_SEEDS = (0, 1)  # two draws of 256: 512 judged samples per run
N = 256
TARGET = 0.9


def get_judge(out: Path) -> torch.nn.Module:
    """The shapes judge at 16x16: trained once, then read from OUT/judge_16.safetensors (shapes_judge.cached_judge)."""
    return cached_judge(IMAGE_SIZE, out / f"judge_{IMAGE_SIZE}.safetensors")[0]


def train(name: str, extra: str, steps: int, seed: int, threads: int, out: Path) -> dict:
    """One `diffuse train` run in a subprocess; its --json summary."""
    shutil.rmtree(out / name, ignore_errors=True)
    cmd = ["diffuse", "train", "--image-size", str(IMAGE_SIZE), "--class-conditional", "--steps", str(steps),
           "--seed", str(seed), "--name", name, "--out", str(out), "--json", *shlex.split(extra)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def evaluate(run: Path, judge: torch.nn.Module, real: torch.Tensor) -> dict:
    """Recognised share (p >= 0.9) over 2 x 256 guided samples and judge_fd per draw, as shapes_quality.py."""
    model, card = load_score_model(run)
    shape = (N, card.channels, *card.image_hw)
    score_fn, _ = score_for(model, card, N, DEFAULT_GUIDANCE)
    shares, fds = [], []
    for s in SAMPLE_SEEDS:
        x = sample(model.sde, score_fn, shape, "ei", 20, torch.Generator().manual_seed(s))
        shares.append(judge_images(judge, x, 0.9)[1].float().mean().item())
        fds.append(judge_fd(judge, x, real))
    return {"recognised": round(sum(shares) / len(shares), 4), "recognised_per_seed": [round(v, 4) for v in shares],
            "judge_fd": round(sum(fds) / len(fds), 2), "judge_fd_per_seed": [round(v, 2) for v in fds]}


def table(rows: list[dict]) -> str:
    """The markdown table of rows, then each variant's time to 90 %."""
    lines = ["| variant | extra flags | steps | seed | train s | s/step (threads) | recognised (of 512) | judge_fd |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['variant']} | `{r['extra']}` | {r['steps']} | {r['seed']} | {r['seconds']:.0f} | "
                     f"{r['s_per_step']:.3f} ({r['threads']}) | {100 * r['recognised']:.1f} % | {r['judge_fd']:.1f} |")
    lines.append("")
    for key in dict.fromkeys((r["variant"], r["seed"]) for r in rows):
        hit = sorted((r for r in rows if (r["variant"], r["seed"]) == key and r["recognised"] >= TARGET), key=lambda r: r["steps"])
        when = f"{hit[0]['seconds']:.0f} s ({hit[0]['steps']} steps)" if hit else "not reached"
        lines.append(f"- {key[0]} (seed {key[1]}): time to {TARGET:.0%}: {when}")
    return "\n".join(lines)


def main() -> None:
    """Train and judge every (variant, total, seed); print the table, append rows to OUT/results.jsonl."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=EXTRA_ARGS",
                    help="a recipe: its name and extra `diffuse train` flags (repeatable)")
    ap.add_argument("--steps", default="600,800,1000", help="step totals, comma-separated (one run each)")
    ap.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of training, torch threads of judging")
    ap.add_argument("--seeds", default="0", help="training seeds, comma-separated")
    ap.add_argument("--out", type=Path, default=Path("/tmp/qs_sweep"), help="folder of the runs, the judge and results.jsonl")
    ap.add_argument("--report", action="store_true", help="only print the table of OUT/results.jsonl")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.jsonl"
    if args.report:
        print(table([json.loads(line) for line in results.read_text().splitlines() if line.strip()]))
        return
    torch.set_num_threads(args.threads)
    variants = [v.split("=", 1) if "=" in v else (v, "") for v in args.variant] or [("base", "--lr 1e-3")]
    totals = [int(s) for s in args.steps.split(",") if s.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    judge = get_judge(args.out)
    real = load_real("shapes", IMAGE_SIZE, 3, Path("."), 2 * N)[:N]
    rows = []
    for seed in seeds:
        for name, extra in variants:
            for total in totals:
                run = f"{name}_s{total}_seed{seed}"
                summary = train(run, extra, total, seed, args.threads, args.out)
                t0 = time.perf_counter()
                row = {"variant": name, "extra": extra, "steps": total, "seed": seed, "threads": args.threads,
                       "seconds": summary["seconds"], "s_per_step": round(summary["seconds"] / total, 4),
                       "loss": summary["loss"], "parameters": summary["parameters"], "run": summary["run_dir"],
                       "load_avg": round(os.getloadavg()[0], 2), **evaluate(args.out / run, judge, real)}
                row["eval_seconds"] = round(time.perf_counter() - t0, 1)
                with results.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps(row), file=sys.stderr, flush=True)
                rows.append(row)
    print(table(rows))


if __name__ == "__main__":
    main()
