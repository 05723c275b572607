"""One script that checks a GPU machine end to end in minutes (issue 31): the figures a user asks a GPU first.

    python benchmarks/gpu_check.py --out gpu-check.json              # on one CUDA device, ~5-8 minutes
    python benchmarks/gpu_check.py --smoke --device cpu              # the same path at toy sizes, on a CPU (~1 min)

Phases, each timed on its own and each with the GPU's peak memory (torch.cuda.max_memory_allocated):
1. prepare: 2,048 synthetic 64x64 images (class subfolders, JPEG) -> `diffuse prepare` -> one uint8 file;
2. train: the `cars64` preset (~35M parameters) on the prepared file with bf16 autocast, TF32, micro-batches and
   torch.compile, EMA, as `diffuse train` runs it (images/s from its metrics log, after the compile warm-up);
3. sample: 256 images by the ei sampler (20 steps) from the EMA weights (images/s);
4. fid: a FID pass over the 256 samples against the prepared data with random Inception weights (the real ones
   cannot be downloaded here; the cost is the same network's);
5. torchrun: the same training for a few steps under a one-GPU `torchrun` (the DDP path; exit code and seconds).
It prints one JSON object (and writes it with --out): the machine, then per phase seconds, images/s, peak GiB.
Nothing downloads. Anything that fails is recorded in its phase ("error") and the rest still run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model  # noqa: E402

#: Full sizes on a GPU; --smoke shrinks every one of them to check the path itself on a CPU.
FULL = {"images": 2048, "size": 64, "preset": "cars64", "batch": 128, "micro": 64, "steps": 300, "samples": 256,
        "sample_steps": 20, "torchrun_steps": 20, "precision": "bf16", "compile": True}
SMOKE = {"images": 64, "size": 16, "preset": "tiny", "batch": 16, "micro": 8, "steps": 6, "samples": 8,
         "sample_steps": 4, "torchrun_steps": 2, "precision": "fp32", "compile": False}


def make_images(folder: Path, count: int, seed: int = 0) -> None:
    """``count`` JPEGs of 360-640 x 240-480 pixels in four class folders: smooth colour fields plus noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(count):
        w, h = int(rng.integers(360, 641)), int(rng.integers(240, 481))
        ramp = np.linspace(0, 1, w)[None, :, None] * rng.uniform(60, 255, 3) + np.linspace(0, 1, h)[:, None, None] * rng.uniform(0, 120, 3)
        pixels = np.clip(ramp + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
        (folder / f"class{i % 4}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"class{i % 4}" / f"{i:05d}.jpg", quality=90)


def random_inception(path: Path, seed: int = 0) -> None:
    """pytorch-fid's Inception with seeded random weights (activations kept O(1)), as a .safetensors file."""
    from safetensors.torch import save_file

    from diffusers_cli.engine.metrics import InceptionV3Features

    gen = torch.Generator().manual_seed(seed)
    net = InceptionV3Features()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / m.weight[0].numel()) ** 0.5)
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
        net.fc.weight.copy_(torch.randn(net.fc.weight.shape, generator=gen) / 2048**0.5)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))


def phase(results: dict[str, Any], name: str, device: torch.device, fn: Callable[[], dict[str, Any]]) -> None:
    """Run one phase: its seconds and peak GPU memory, or its error, into ``results[name]``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    try:
        out = fn()
    except Exception as err:  # a failing phase is a finding; the others still run
        out = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(limit=3)}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        out["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    results[name] = out
    print(json.dumps({name: out}), flush=True)


def diffuse(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`diffuse ARGS` as a user runs it; CalledProcessError with its last stderr line on failure."""
    res = subprocess.run([sys.executable, "-m", "diffusers_cli", *args], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"diffuse {args[0]} exited {res.returncode}: {(res.stderr.strip().splitlines() or [''])[-1]}")
    return res


def main() -> None:
    """Run the phases and print the figures as JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--smoke", action="store_true", help="toy sizes: check the script's path on a CPU")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    ap.add_argument("--work", type=Path, help="where the data and runs go (default: a temporary folder)")
    args = ap.parse_args()
    s = SMOKE if args.smoke else FULL
    device = torch.device(args.device)
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"cpu": cpu_model(), "torch": torch.__version__, "sizes": s,
                               "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}
    env = json.loads(diffuse("env", "--json").stdout)
    results["env"] = {k: env[k] for k in ("cuda_devices", "precision_auto", "cpu_native_bf16") if k in env}
    folder, prepared = work / "images", work / "prepared.safetensors"

    def prepare() -> dict[str, Any]:
        make_images(folder, s["images"])
        t0 = time.perf_counter()
        diffuse("prepare", str(folder), "--image-size", str(s["size"]), "--out", str(prepared))
        return {"images_per_s": round(s["images"] / (time.perf_counter() - t0), 1)}

    train_args = ["--dataset", str(prepared), "--image-size", str(s["size"]), "--preset", s["preset"],
                  "--batch-size", str(s["batch"]), "--micro-batch", str(s["micro"]), "--precision", s["precision"],
                  "--device", args.device, "--out", str(work / "runs"), "--sample-every", "0", "--set", "log_every=10",
                  "--set", "checkpoint_every=100000"]
    if s["compile"]:
        train_args.append("--compile")

    def train() -> dict[str, Any]:
        from diffusers_cli.config.schema import TrainConfig
        from diffusers_cli.jobs.train import train as train_job

        cfg = TrainConfig.model_validate({
            "data": {"dataset": str(prepared), "image_size": s["size"]}, "network": {"preset": s["preset"]},
            "batch_size": s["batch"], "micro_batch": s["micro"], "precision": s["precision"], "compile": s["compile"],
            "steps": s["steps"], "device": args.device, "out": str(work / "runs"), "name": "check", "sample_every": 0,
            "log_every": 10, "checkpoint_every": 100_000,
        })
        res = train_job(cfg)
        rows = [json.loads(line) for line in (res.run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
        # The first records include torch.compile's warm-up: the rate is the median of the later half.
        rates = sorted(r["it_per_s"] for r in rows[len(rows) // 2:])
        ips = rates[len(rates) // 2] * s["batch"] if rates else float("nan")
        return {"steps": res.step, "images_per_s": round(ips, 1), "final_loss": round(res.loss, 4),
                "parameters": res.parameters}

    def sample() -> dict[str, Any]:
        import diffusers_cli as dc

        model = dc.load_model(work / "runs" / "check")
        t0 = time.perf_counter()
        x = dc.sample(model, s["samples"], sampler="ei", steps=s["sample_steps"], seed=0, device=args.device)
        seconds = time.perf_counter() - t0
        from diffusers_cli.support.image_grids import save_individual

        (work / "samples").mkdir(exist_ok=True)
        save_individual(x, work / "samples" / "s.png")
        return {"images_per_s": round(s["samples"] / seconds, 1), "finite": bool(torch.isfinite(x).all())}

    def fid() -> dict[str, Any]:
        weights = work / "inception.safetensors"
        random_inception(weights)
        out = json.loads(diffuse("evaluate", "--images", str(work / "samples"), "--reference", str(folder),
                                 "--metrics", "fid", "--allow-few", "--inception-weights", str(weights),
                                 "--device", args.device, "--json").stdout)
        return {"fid_random_inception": round(out["fid"]["fid"], 2)}

    def torchrun() -> dict[str, Any]:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m", "diffusers_cli",
               "train", *train_args, "--steps", str(s["torchrun_steps"]), "--name", "check-ddp", "--json"]
        res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "4"})
        if res.returncode != 0:
            raise RuntimeError(f"torchrun exited {res.returncode}: {(res.stderr.strip().splitlines() or [''])[-1]}")
        return {"exit_code": res.returncode, "steps": json.loads(res.stdout.strip().splitlines()[-1])["steps"]}

    for name, fn in (("prepare", prepare), ("train", train), ("sample", sample), ("fid", fid), ("torchrun", torchrun)):
        phase(results, name, device, fn)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
