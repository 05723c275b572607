"""Start-up latency of the `diffuse` shell: --help, a subcommand's --help, `datasets` and a usage error, as subprocesses.

Each must answer well under half a second: none of them may load torch. The console script next to
this interpreter is timed (not a version manager's shim, whose own start-up is not ours to measure).

    python benchmarks/startup.py [-n 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from machine import cpu_model  # benchmarks/machine.py, beside this script

#: (label, arguments, expected exit code)
CASES: list[tuple[str, list[str], int]] = [
    ("diffuse --help", ["--help"], 0),
    ("diffuse sample --help", ["sample", "--help"], 0),
    ("diffuse datasets", ["datasets"], 0),
    ("diffuse sample --nosuch-flag", ["sample", "--nosuch-flag"], 2),
]

#: What each command must stay under, in seconds (the shell's promise: instant help and usage errors).
BUDGET_S = 0.5


def diffuse_command() -> list[str]:
    """The console script installed beside this interpreter, else `python -m diffusers_cli`."""
    script = Path(sys.executable).parent / "diffuse"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "diffusers_cli"]


def time_once(cmd: list[str], expected: int) -> float:
    """Wall seconds of one run; a wrong exit code is an error, not a measurement."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != expected:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}, expected {expected}:\n{proc.stderr}")
    return wall


def main() -> None:
    """Time each case N times and print the medians (and the machine they were measured on)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5, help="runs per command (default 5)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()

    base = diffuse_command()
    env_note = {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(), "command": " ".join(base)}
    time_once(base + ["--help"], 0)  # warm the page cache and .pyc files: we measure start-up, not a cold disk
    rows = []
    for label, argv, code in CASES:
        walls = [time_once(base + argv, code) for _ in range(args.n)]
        rows.append({"command": label, "median_s": round(statistics.median(walls), 4), "min_s": round(min(walls), 4),
                     "max_s": round(max(walls), 4), "runs": args.n, "within_budget": statistics.median(walls) < BUDGET_S})
    shim = shutil.which("diffuse")
    if shim and Path(shim).resolve() != Path(base[0]).resolve():
        env_note["shim_on_path"] = shim  # e.g. pyenv's, which adds its own start-up on top of these figures

    if args.json:
        print(json.dumps({**env_note, "budget_s": BUDGET_S, "results": rows}, indent=2))
        return
    print(f"cpu: {env_note['cpu']} ({env_note['cores']} cores), python {env_note['python']}")
    print(f"command: {env_note['command']}" + (f" (the shim {shim} on PATH adds its own start-up)" if "shim_on_path" in env_note else ""))
    print(f"{'command':<32} {'median':>8} {'min':>8} {'max':>8}  (budget {BUDGET_S:g} s, {args.n} runs)")
    for r in rows:
        flag = "" if r["within_budget"] else "  OVER BUDGET"
        print(f"{r['command']:<32} {r['median_s']:>7.3f}s {r['min_s']:>7.3f}s {r['max_s']:>7.3f}s{flag}")


if __name__ == "__main__":
    main()
