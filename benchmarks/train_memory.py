"""Peak memory and step time of training: one pass vs --micro-batch vs --checkpointing, and --micro-batch auto under a limit.

Each configuration trains in a fresh process (its own peak RSS, from getrusage in that process), on the same
synthetic shapes at the same seed, so their weights after the last step can be compared. Then, under an
address-space limit (RLIMIT_AS) between the micro-batched run's need and the one pass's, the plain run must exit 1
with its one line and --micro-batch auto must train.

    python benchmarks/train_memory.py                        # issue 31's: batch 256, 64x64, small, 20 steps
    python benchmarks/train_memory.py --steps 3 --batch-size 64 --image-size 32   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

#: One run in a fresh process: trains, then prints its peak RSS, step times and a path to its weights as JSON.
CHILD = textwrap.dedent("""
    import json, resource, sys, time
    from diffusers_cli.config.schema import TrainConfig
    from diffusers_cli.jobs.train import train
    cfg = TrainConfig.model_validate(json.loads(sys.argv[1]))
    res = train(cfg)
    log = [json.loads(l) for l in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    times = [b["time"] - a["time"] for a, b in zip(log, log[1:])]
    print(json.dumps({"maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "step_s": times,
                      "weights": str(res.run_dir / "model.safetensors"), "extra": {k: v for k, v in res.extra.items()
                      if k in ("micro_batch",)}}))
""")

#: The same run under an address-space limit of what the imports take plus HEADROOM MiB (argv[1]).
LIMITED = textwrap.dedent("""
    import resource, sys
    import numpy as np
    import matplotlib.backends.backend_agg, matplotlib.pyplot
    import diffusers_cli.jobs.train
    from diffusers_cli.cli import app
    np.ones((64, 64)) @ np.ones((64, 64))  # BLAS maps its buffers now: under the limit it would abort
    size = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize"))
    limit = size + int(sys.argv[1]) * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    sys.argv = ["diffuse", *sys.argv[2:]]
    app()
""")


def _env() -> dict[str, str]:
    # A fixed mmap threshold: glibc otherwise keeps large freed blocks mapped in its heap (they count against RLIMIT_AS).
    return {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONPATH": os.pathsep.join(sys.path)}


def run(config: dict[str, Any]) -> dict[str, Any]:
    """Train ``config`` in a fresh process; its peak RSS, step times and weights."""
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(config)], capture_output=True, text=True, env=_env(),
                         check=False)
    if out.returncode:
        raise SystemExit(f"run failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def gap(a: str, b: str) -> float:
    """Largest absolute difference of two weights files' tensors (online and EMA)."""
    from diffusers_cli.checkpoints.weights import load_weights

    wa, wb = load_weights(Path(a))[0], load_weights(Path(b))[0]
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


def interleaved_step_times(args: argparse.Namespace, reps: int) -> dict[str, float]:
    """Median seconds of one forward + backward of the batch, the three ways taken in turn (A/B/C interleaved), in this process."""
    import time

    import torch

    from diffusers_cli.engine.networks.unet import unet_from_preset
    from diffusers_cli.engine.objectives import ScoreObjective
    from diffusers_cli.engine.score import ScoreModel
    from diffusers_cli.engine.sde import VPSDE
    from diffusers_cli.engine.training import chunks

    net = unet_from_preset(args.preset, args.image_size, 3).train()
    objective = ScoreObjective(ScoreModel(net, VPSDE(), "edm"))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch_size, 3, args.image_size, args.image_size, generator=g) * 2 - 1
    batch = objective.draw(x, torch.zeros(args.batch_size, dtype=torch.long), g)
    ways = {"one pass": (False, None), f"--micro-batch {args.micro_batch}": (False, args.micro_batch),
            "--checkpointing": (True, None)}
    times: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(reps):
        for name, (ckpt, micro) in ways.items():
            net.checkpointing = ckpt
            net.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            for part in chunks(args.batch_size, micro):
                loss, _ = objective(**{k: v[part] for k, v in batch.items()})
                (loss.sum() / args.batch_size).backward()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--micro-batch", type=int, default=32)
    parser.add_argument("--limit-steps", type=int, default=2, help="steps of the runs under RLIMIT_AS")
    parser.add_argument("--timing-only", type=int, default=None, metavar="REPS",
                        help="only forward + backward times of the three ways, interleaved, REPS rounds")
    parser.add_argument("--limited-only", type=int, default=None, metavar="MIB",
                        help="only the runs under RLIMIT_AS, with this headroom over the imports")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="train_memory_"))
    base = {"data": {"dataset": "shapes", "image_size": args.image_size, "num_examples": 512},
            "network": {"preset": args.preset}, "batch_size": args.batch_size, "steps": args.steps, "log_every": 1,
            "sample_every": 0, "checkpoint_every": 10_000, "device": "cpu", "out": str(tmp), "seed": 0}
    configs = {"one pass": {}, f"--micro-batch {args.micro_batch}": {"micro_batch": args.micro_batch},
               "--checkpointing": {"checkpointing": True}}
    results = {}
    if args.timing_only is not None:
        t = interleaved_step_times(args, args.timing_only)
        print(json.dumps({"args": vars(args), "median_s": t, "ratio": {k: round(v / t["one pass"], 3) for k, v in t.items()}}))
        return
    if args.limited_only is not None:
        print(json.dumps({"args": vars(args), "limited": limited_runs(args, tmp, args.limited_only)}, indent=1))
        return
    for i, (name, extra) in enumerate(configs.items()):
        results[name] = run({**base, **extra, "name": f"r{i}"})
        print(f"{name}: {results[name]['maxrss_mib']:.0f} MiB", file=sys.stderr, flush=True)
    one = results["one pass"]
    step_one = statistics.median(one["step_s"][1:] or one["step_s"])
    rows = []
    for name, r in results.items():
        step = statistics.median(r["step_s"][1:] or r["step_s"])
        rows.append({"config": name, "peak_rss_mib": round(r["maxrss_mib"]), "peak_ratio": round(r["maxrss_mib"] / one["maxrss_mib"], 3),
                     "step_s": round(step, 2), "step_ratio": round(step / step_one, 3),
                     "max_abs_weight_diff": 0.0 if r is one else gap(one["weights"], r["weights"])})

    # Under a limit between what the micro-batched run and the one pass need beyond the imports.
    import_rss = 0.0
    probe = subprocess.run([sys.executable, "-c", "import resource, diffusers_cli.jobs.train, diffusers_cli.cli, matplotlib.pyplot;"
                            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"], capture_output=True,
                           text=True, env=_env(), check=True)
    import_rss = float(probe.stdout.strip())
    micro_rss = results[f"--micro-batch {args.micro_batch}"]["maxrss_mib"]
    headroom = round((micro_rss - import_rss) + 0.5 * (one["maxrss_mib"] - micro_rss))
    print(json.dumps({"args": vars(args), "rows": rows, "limited": limited_runs(args, tmp, headroom)}, indent=1))


def limited_runs(args: argparse.Namespace, tmp: Path, headroom: int) -> dict[str, Any]:
    """The plain run and --micro-batch auto under RLIMIT_AS: the imports' address space plus ``headroom`` MiB."""
    cmd = ["train", "--dataset", "shapes", "--image-size", str(args.image_size), "--preset", args.preset,
           "--batch-size", str(args.batch_size), "--steps", str(args.limit_steps), "--set", "data.num_examples=512",
           "--device", "cpu", "--sample-every", "0", "--out", str(tmp)]
    plain = subprocess.run([sys.executable, "-c", LIMITED, str(headroom), *cmd, "--name", "plain"], capture_output=True,
                           text=True, env=_env(), check=False)
    auto = subprocess.run([sys.executable, "-c", LIMITED, str(headroom), *cmd, "--name", "auto", "--micro-batch", "auto"],
                          capture_output=True, text=True, env=_env(), check=False)
    said = [ln for ln in auto.stderr.splitlines() if ln.startswith("--micro-batch auto")]
    return {"headroom_mib": headroom, "plain_exit": plain.returncode, "plain_line": plain.stderr.strip().splitlines()[-1:],
            "auto_exit": auto.returncode, "auto_said": said, "auto_tail": auto.stderr.strip().splitlines()[-1:]}


if __name__ == "__main__":
    main()
