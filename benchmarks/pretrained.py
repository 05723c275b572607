"""diffusers' own pipelines against our samplers on the same diffusers model: images/s and NFE.

On one UNet2DModel (by default a small random one, 32x32, made here; or any diffusers folder or hf: model),
times diffusers' DDPMPipeline (1000 ancestral steps) and DDIMPipeline (50 steps, eta 0) against our `ei`
(DPM-Solver++ multistep) and `ipndm` at 10 and 20 steps, with the net read through diffusers_cli.models.
Each figure is the median of --runs runs; NFE counts network evaluations per image batch.

    python benchmarks/pretrained.py                       # the small random UNet2DModel (offline)
    python benchmarks/pretrained.py --model hf:google/ddpm-cifar10-32 --download --batch 16 --runs 3
    python benchmarks/pretrained.py --json                # one JSON object on stdout

Needs the diffusers extra: pip install -e ".[diffusers]".
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from diffusers_cli import models  # noqa: E402
from diffusers_cli.engine.rng import ImageGenerators  # noqa: E402
from diffusers_cli.engine.samplers import sample  # noqa: E402
from diffusers_cli.engine.score import NFECounter, make_score_fn  # noqa: E402
from diffusers_cli.models.diffusers_folder import layout  # noqa: E402
from machine import cpu_model  # benchmarks/machine.py, beside this script

#: Ours: (sampler, steps) on the sampler's default grid, with the final denoising step (1 NFE).
OURS = [("ei", 10), ("ei", 20), ("ipndm", 10), ("ipndm", 20)]


def random_pipeline(folder: Path, size: int, width: int) -> Path:
    """A DDPMPipeline of a random UNet2DModel (google/ddpm-cifar10-32's block layout at base width ``width``, not 128)."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=size, in_channels=3, out_channels=3, layers_per_block=1,
                       block_out_channels=(width, 2 * width, 2 * width, 2 * width),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), norm_num_groups=min(32, width))
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000)).save_pretrained(folder)
    return folder


def timed(fn: Callable[[], int], runs: int) -> tuple[float, int]:
    """(median seconds, NFE) of ``runs`` calls of fn, which returns its NFE."""
    seconds, nfe = [], 0
    for _ in range(runs):
        t0 = time.perf_counter()
        nfe = fn()
        seconds.append(time.perf_counter() - t0)
    return statistics.median(seconds), nfe


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="a diffusers folder or hf:ORG/NAME (default: a small random UNet2DModel made here)")
    p.add_argument("--download", action="store_true", help="fetch a missing hf: model with huggingface_hub")
    p.add_argument("--size", type=int, default=32, help="image side of the random model")
    p.add_argument("--width", type=int, default=16, help="base channels of the random model (google/ddpm-cifar10-32: 128)")
    p.add_argument("--batch", type=int, default=4, help="images per batch")
    p.add_argument("--runs", type=int, default=3, help="runs per configuration (the median is reported)")
    p.add_argument("--skip-ddpm", action="store_true", help="skip diffusers' 1000-step DDPMPipeline (the slow one)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        folder = models.resolve_model_path(args.model, Path("runs"), args.download) if args.model else random_pipeline(Path(tmp) / "m", args.size, args.width)
        model, card = models.load_score_model(folder)
        model.to(device)
        unet = model.net.unet  # the very module diffusers' pipelines run below
        sched_cfg = json.loads(layout(Path(folder)).scheduler.read_text(encoding="utf-8"))  # the model's own scheduler
        shape = (args.batch, *card.image_shape)
        rows: list[dict[str, Any]] = []

        def diffusers_run(pipe: Any, steps: int, **kw: Any) -> Callable[[], int]:
            def run() -> int:
                with torch.no_grad():
                    pipe(batch_size=args.batch, num_inference_steps=steps, generator=torch.Generator(device).manual_seed(0),
                         output_type="np", **kw)
                return steps
            return run

        pipes: list[tuple[str, Any, int, dict[str, Any]]] = []
        if not args.skip_ddpm:
            pipes.append(("diffusers DDPMPipeline", DDPMPipeline(unet=unet, scheduler=DDPMScheduler.from_config(sched_cfg)), 1000, {}))
        pipes.append(("diffusers DDIMPipeline (eta 0)", DDIMPipeline(unet=unet, scheduler=DDIMScheduler.from_config(sched_cfg)), 50,
                      {"eta": 0.0}))
        for name, pipe, steps, kw in pipes:
            pipe.set_progress_bar_config(disable=True)
            sec, nfe = timed(diffusers_run(pipe.to(device), steps, **kw), args.runs)
            rows.append({"what": name, "steps": steps, "nfe": nfe, "seconds": sec, "images_per_s": args.batch / sec})

        for sampler, steps in OURS:
            def run(sampler: str = sampler, steps: int = steps) -> int:
                counter = NFECounter(make_score_fn(model))
                gens = ImageGenerators.for_images(0, 0, args.batch, device)
                sample(model.sde, counter, shape, sampler, steps, gens, device=device)
                return counter.nfe

            sec, nfe = timed(run, args.runs)
            rows.append({"what": f"diffuse {sampler}", "steps": steps, "nfe": nfe, "seconds": sec, "images_per_s": args.batch / sec})

    env = {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(), "device": str(device),
           "torch": torch.__version__, "diffusers": __import__("diffusers").__version__,
           "model": args.model or f"random UNet2DModel {args.size}x{args.size}, base width {args.width}", "batch": args.batch, "runs": args.runs,
           "parameters": sum(p.numel() for p in unet.parameters())}
    if args.json:
        print(json.dumps({"env": env, "rows": rows}))
        return
    print(f"model: {env['model']} ({env['parameters'] / 1e6:.2f}M parameters), batch {args.batch}, median of {args.runs} runs")
    print(f"cpu: {env['cpu']} ({env['cores']} cores, {env['threads']} torch threads), device {device}, "
          f"torch {env['torch']}, diffusers {env['diffusers']}")
    print(f"{'sampler':34s} {'steps':>5s} {'NFE':>5s} {'seconds':>9s} {'images/s':>9s}")
    for r in rows:
        print(f"{r['what']:34s} {r['steps']:5d} {r['nfe']:5d} {r['seconds']:9.2f} {r['images_per_s']:9.2f}")


if __name__ == "__main__":
    main()
