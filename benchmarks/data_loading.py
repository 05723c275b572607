"""Data loading benchmark (issue 31): a folder of JPEGs decoded at every step against its `diffuse prepare` file.

Makes 2,000 JPEGs of random sizes (360-640 x 240-480 pixels, four class subfolders, PIL, fixed seed) in a
temporary folder, prepares them at 64x64, then measures, A/B interleaved in one process:

1. the training input: images/s of a batch of 64 fetched by index exactly as `diffuse train` fetches it
   (``jobs.train._fetch``: items decoded one by one from the folder in the main process, against rows of
   the prepared file's memory map), and the memory that reading every row of the file costs;
2. a training step of the `tiny` preset at 64x64 (`diffuse train`'s own job, batch 64): the folder read by
   DataLoader workers against the prepared file, from each run's per-step log (steady state, warm-up skipped).

    python benchmarks/data_loading.py                  # the issue's figures (about 10 minutes on 2 cores)
    python benchmarks/data_loading.py --images 300 --rounds 2 --train-runs 1   # a quick look

Prints a JSON summary and the Markdown table of benchmarks/README.md ("data_loading").
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from diffusers_cli.config.schema import PrepareConfig, TrainConfig
from diffusers_cli.data import load_dataset
from diffusers_cli.engine.training import batch_indices
from diffusers_cli.jobs.prepare import prepare
from diffusers_cli.jobs.train import _fetch, train

SIZE = 64
CLASSES = ("a", "b", "c", "d")


def cpu_name() -> str:
    """The CPU's model name as lscpu gives it."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown"


def make_jpegs(root: Path, n: int, seed: int) -> float:
    """``n`` photo-like JPEGs (smooth colour fields plus grain) of random sizes; returns their mean size in kB."""
    rng = np.random.default_rng(seed)
    total = 0
    for i in range(n):
        w, h = int(rng.integers(360, 641)), int(rng.integers(240, 481))
        # Smooth fields compress like photographs; pure noise would make every file several times larger.
        coarse = Image.fromarray(rng.integers(0, 256, (h // 40 + 2, w // 40 + 2, 3), dtype=np.uint8))
        field = np.asarray(coarse.resize((w, h), Image.BICUBIC), dtype=np.float32)
        grain = rng.normal(0.0, 6.0, field.shape).astype(np.float32)
        pixels = np.clip(field + grain, 0, 255).astype(np.uint8)
        path = root / CLASSES[i % len(CLASSES)] / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, quality=90)
        total += path.stat().st_size
    return total / n / 1e3


def rss_kb(mapped: Path) -> dict[str, int]:
    """Resident memory of this process in kB: anonymous (copies, tensors) and the pages of ``mapped``'s memory map."""
    out = {"anon": 0, "map": 0}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            out["anon"] = int(line.split()[1])
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if len(head) >= 5 and "-" in head[0] and ":" in head[3]:  # a mapping's first line: range perms offset dev inode [path]
            inside = len(head) >= 6 and head[5] == str(mapped.resolve())
        elif inside and line.startswith("Rss:"):
            out["map"] += int(head[1])
    return out


def input_rate(folder: Any, ready: Any, rounds: int, batch: int, folder_batches: int, ready_batches: int) -> dict[str, Any]:
    """images/s of the training input from the folder and from the prepared file, interleaved round by round."""
    n = len(folder)
    step = 0
    rates: dict[str, list[float]] = {"folder": [], "prepared": []}
    for _ in range(rounds):
        for name, dataset, count in (("folder", folder, folder_batches), ("prepared", ready, ready_batches)):
            t0 = time.perf_counter()
            for _ in range(count):
                _fetch(dataset, batch_indices(n, batch, 0, step))
                step += 1
            rates[name].append(count * batch / (time.perf_counter() - t0))
    ratios = [p / f for p, f in zip(rates["prepared"], rates["folder"])]
    return {"rates": rates, "median": {k: statistics.median(v) for k, v in rates.items()},
            "ratio_median": statistics.median(ratios), "ratios": ratios}


def memory_of_an_epoch(ready: Any, batch: int) -> dict[str, int]:
    """Resident memory before and after reading every row of the prepared file once, a batch at a time."""
    path = ready.header.path
    before = rss_kb(path)
    n = len(ready)
    for step in range(-(-n // batch)):
        _fetch(ready, torch.arange(step * batch, min(n, (step + 1) * batch)))
    after = rss_kb(path)
    return {"anon_growth_kb": after["anon"] - before["anon"], "map_before_kb": before["map"], "map_after_kb": after["map"],
            "file_kb": int(path.stat().st_size / 1024)}


def step_seconds(dataset: str, workers: int, steps: int, batch: int, out: Path, name: str) -> float:
    """Seconds per training step of the tiny preset at 64x64, from the run's per-step log, warm-up steps skipped."""
    cfg = TrainConfig.model_validate({
        "data": {"dataset": dataset, "image_size": SIZE, "num_workers": workers},
        "network": {"preset": "tiny"}, "steps": steps, "batch_size": batch, "log_every": 1, "sample_every": 0,
        "checkpoint_every": 10_000, "sample_n": 4, "sampler": {"name": "ddpm", "steps": 2}, "out": str(out),
        "name": name, "device": "cpu",
    })
    result = train(cfg)
    times = [json.loads(line)["time"] for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    skip = 3  # DataLoader start-up, the prepare hint's extra decode, first-call allocations
    return (times[-1] - times[skip - 1]) / (len(times) - skip)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the input measurement")
    parser.add_argument("--folder-batches", type=int, default=2, help="folder batches per round")
    parser.add_argument("--prepared-batches", type=int, default=100, help="prepared batches per round")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the folder's training runs")
    parser.add_argument("--train-steps", type=int, default=8)
    parser.add_argument("--train-runs", type=int, default=3, help="runs of each training configuration, interleaved")
    parser.add_argument("--keep", type=Path, default=None, help="make the images here (and keep them) instead of a temp dir")
    args = parser.parse_args()

    summary: dict[str, Any] = {"cpu": cpu_name(), "cores": len(__import__("os").sched_getaffinity(0)),
                               "torch_threads": torch.get_num_threads(), "images": args.images, "batch": args.batch}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        root, out = work / "jpegs", work / "jpegs-64.safetensors"
        t0 = time.perf_counter()
        summary["jpeg_kb"] = round(make_jpegs(root, args.images, args.seed), 1)
        summary["make_seconds"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        res = prepare(PrepareConfig(dataset=str(root), out=out, image_size=SIZE))
        summary["prepare_seconds"] = round(time.perf_counter() - t0, 2)
        summary["prepare_images_per_s"] = round(res.count / summary["prepare_seconds"], 1)
        summary["prepared_mb"] = round(res.bytes / 1e6, 2)

        folder, _ = load_dataset(root, SIZE)
        ready, _ = load_dataset(out, SIZE)
        summary["memory"] = memory_of_an_epoch(ready, args.batch)
        summary["input"] = input_rate(folder, ready, args.rounds, args.batch, args.folder_batches, args.prepared_batches)

        steps: dict[str, list[float]] = {f"folder, {args.workers} workers": [], "prepared": []}
        for run in range(args.train_runs):  # interleaved: the shared machine's load hits both alike
            steps[f"folder, {args.workers} workers"].append(
                step_seconds(str(root), args.workers, args.train_steps, args.batch, work / "runs", f"folder{run}"))
            steps["prepared"].append(step_seconds(str(out), 0, args.train_steps, args.batch, work / "runs", f"prepared{run}"))
        summary["step_seconds"] = steps
        med = {k: statistics.median(v) for k, v in steps.items()}
        summary["step_median"] = med
        summary["step_ratio"] = med[f"folder, {args.workers} workers"] / med["prepared"]

    print(json.dumps(summary, indent=1))
    inp = summary["input"]
    fmt = lambda xs: ", ".join(f"{x:,.0f}" for x in xs)
    print(f"\n{summary['cpu']}, {summary['cores']} cores, torch threads {summary['torch_threads']}; {args.images} JPEGs "
          f"(mean {summary['jpeg_kb']} kB); prepare: {summary['prepare_seconds']} s ({summary['prepare_images_per_s']} "
          f"images/s, one process), {summary['prepared_mb']} MB\n")
    print("| training input, batch of 64 by index, main process | rounds (images/s) | median |")
    print("| --- | --- | ---: |")
    print(f"| folder (decode + crop + resize) | {fmt(inp['rates']['folder'])} | {inp['median']['folder']:,.0f} |")
    print(f"| prepared file (memory-mapped rows) | {fmt(inp['rates']['prepared'])} | {inp['median']['prepared']:,.0f} |")
    print(f"| ratio (median of the rounds' ratios) | {', '.join(f'{r:,.0f}x' for r in inp['ratios'])} | "
          f"**{inp['ratio_median']:,.0f}x** |\n")
    print("| training step, tiny preset, 64x64, batch 64 | runs (s/step) | median |")
    print("| --- | --- | ---: |")
    for k, v in steps.items():
        print(f"| {k} | {', '.join(f'{x:.3f}' for x in v)} | {med[k]:.3f} |")
    print(f"| folder / prepared | | **{summary['step_ratio']:.2f}x** |")
    m = summary["memory"]
    print(f"\nreading every row once, a batch at a time: anonymous memory +{m['anon_growth_kb']:,} kB; the file's memory "
          f"map resident {m['map_before_kb']:,} kB before, {m['map_after_kb']:,} kB after (page cache the kernel may "
          f"drop), of a {m['file_kb']:,} kB file")


if __name__ == "__main__":
    main()
