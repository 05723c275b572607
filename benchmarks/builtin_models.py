"""Issue 19's speed figures: sampling a ready-made model from a fresh shell, and each notebook's run time.

    python benchmarks/builtin_models.py [-n 3] [--notebooks] [--json]

The sampling command is issue 19's: `diffuse sample --model builtin:mnist -n 16 --sampler ei --steps 20 --out x.png`,
timed as a subprocess from process start to exit (import, model load, 20 guided steps, PNG), median of n runs.
With --notebooks, every notebook in examples/notebooks/ is also executed from a clean kernel (once each: a lesson
takes minutes), as the test suite runs them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_model  # benchmarks/machine.py, beside this script
from startup import diffuse_command

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ["sample", "--model", "builtin:mnist", "-n", "16", "--sampler", "ei", "--steps", "20"]


def time_sample(runs: int) -> list[float]:
    """Wall seconds of the sampling command from a fresh process, one per run."""
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(runs):
            t0 = time.perf_counter()
            subprocess.run([*diffuse_command(), *SAMPLE, "--out", str(Path(tmp) / "x.png")], check=True, capture_output=True)
            times.append(time.perf_counter() - t0)
    return times


def time_notebooks() -> dict[str, float]:
    """Seconds each notebook takes from a clean kernel."""
    import nbclient
    import nbformat

    out = {}
    for path in sorted((ROOT / "examples" / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": tmp}}).execute()
        out[path.stem] = round(time.perf_counter() - t0, 1)
    return out


def main() -> None:
    """Print the figures."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=3)
    ap.add_argument("--notebooks", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    times = time_sample(args.n)
    result = {"cpu": cpu_model(), "command": "diffuse " + " ".join(SAMPLE) + " --out x.png", "runs_s": [round(t, 2) for t in times],
              "median_s": round(statistics.median(times), 2)}
    if args.notebooks:
        result["notebooks_s"] = time_notebooks()
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['command']}: median {result['median_s']} s of {args.n} ({', '.join(map(str, result['runs_s']))}) on {result['cpu']}")
    for name, s in result.get("notebooks_s", {}).items():
        print(f"{name}: {s} s")


if __name__ == "__main__":
    sys.exit(main())
