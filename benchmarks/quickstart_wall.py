"""Wall time of the README Quickstart's first line on fresh clones in fresh virtual environments, and its quality.

The line is read from README.md (the first command of the Quickstart), run with bash in a fresh
`git clone` of this checkout (its last commit) with a new venv first on PATH, as a new user would run
it. The runs it trained are kept under --keep; after the last timed run (so that judging does not slow
the timing) shapes_quality.py judges each (share of 256 samples recognised, judge_fd).

    python benchmarks/quickstart_wall.py --runs 3 --keep /tmp/quickstart-runs
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model

ROOT = Path(__file__).resolve().parents[1]


def quickstart_line(readme: Path) -> str:
    """The first command of the README's Quickstart block."""
    text = readme.read_text()
    block = re.search(r"## Quickstart\s+```bash\n(.*?)```", text, re.DOTALL)
    if block is None:
        raise SystemExit("README.md has no Quickstart bash block")
    return block.group(1).strip().splitlines()[0]


def one_run(line: str, work: Path, keep: Path) -> dict[str, object]:
    """Clone, make a venv, time the line; keep the run it trained."""
    clone = work / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    subprocess.run([sys.executable, "-m", "venv", str(work / "venv")], check=True)
    env = {**os.environ, "PATH": f"{work / 'venv' / 'bin'}:{os.environ['PATH']}", "VIRTUAL_ENV": str(work / "venv")}
    env.pop("PYTHONPATH", None)
    start = time.perf_counter()
    subprocess.run(["bash", "-c", line], cwd=clone, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    metrics = [json.loads(r) for r in (clone / "runs" / "quickstart" / "metrics.jsonl").read_text().splitlines()]
    train_s = max(float(r.get("time", 0.0)) for r in metrics)
    shutil.copytree(clone / "runs" / "quickstart", keep)
    return {"wall_s": round(wall, 1), "train_loop_s": round(train_s, 1), "run": str(keep)}


def judge(run: Path, cache: Path) -> dict[str, float]:
    """shapes_quality.py's recognised share and judge_fd of a run, at the Quickstart's sampler."""
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "shapes_quality.py"), "--model", str(run),
                          "--sampler", "ei", "--steps", "20", "--sweep", "", "--judge-cache", str(cache)], check=True, capture_output=True, text=True)
    q = json.loads(out.stdout)
    return {"recognised": q["recognised_share"], "judge_fd": q["judge_fd"]}


def main() -> None:
    """Run the line --runs times and print each run and the medians."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--keep", type=Path, required=True, help="where the trained runs are copied (run1, run2, ...)")
    args = ap.parse_args()
    line = quickstart_line(ROOT / "README.md")
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores\nline: {line}", flush=True)
    rows = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="quickstart-") as tmp:
            rows.append(one_run(line, Path(tmp), args.keep / f"run{i + 1}"))
        print(f"run {i + 1}: {rows[-1]}", flush=True)
    for row in rows:
        row.update(judge(Path(str(row["run"])), args.keep / "judge_16.safetensors"))
        print(row, flush=True)
    for key in ("wall_s", "train_loop_s", "recognised", "judge_fd"):
        print(f"median {key}: {statistics.median(float(r[key]) for r in rows)}")  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
