"""Training throughput benchmark: our U-Net versus diffusers' UNet2DModel of matching size, one DSM training step at a time.

Both networks sit in the same ScoreModel(net, VPSDE()) wrapper and train with the same
dsm_loss and Adam, on the same batch, precision and machine; only the network differs.
Each model is timed in its own subprocess, so that peak-memory figures do not mix.

    python benchmarks/train_throughput.py --preset tiny --threads 2
    python benchmarks/train_throughput.py --device cuda --preset ncsnpp-cifar10 --precision bf16 --compile

diffusers is imported lazily: `pip install diffusers` (or the project's `bench` extra) to
compare; without it only our model is timed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from diffusers_cli.engine.losses import dsm_loss
from diffusers_cli.engine.networks import UNET_PRESETS, UNet
from diffusers_cli.engine.networks.layers import POSITIONAL_SCALE, num_groups
from diffusers_cli.engine.score import ScoreModel
from diffusers_cli.engine.sde import VPSDE

MODELS = ("ours", "diffusers")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class DiffusersNet(nn.Module):
    """diffusers' UNet2DModel behind our network signature (x, c_noise, class_labels) -> output."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: Tensor, c_noise: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """Feed c_noise on DDPM's timestep scale, as our "positional" embedding does."""
        return self.unet(x, POSITIONAL_SCALE * c_noise, class_labels).sample


def diffusers_twin(cfg: dict[str, Any], image_size: int, channels: int) -> nn.Module:
    """The UNet2DModel laid out like our U-Net config: same widths, depths and attention resolutions."""
    try:
        from diffusers import UNet2DModel
    except ImportError:
        raise SystemExit("diffusers is not installed: `pip install diffusers` to compare against it") from None
    if not cfg.get("resample_with_conv", True):
        raise SystemExit("UNet2DModel has no conv-free resampling to match resample_with_conv=False")
    mult, base = cfg["channel_mult"], cfg["base_channels"]
    res = [image_size // 2**i for i in range(len(mult))]
    attn = [r in cfg["attn_resolutions"] for r in res]
    resample = "resnet" if cfg.get("resblock_updown") else "conv"
    unet = UNet2DModel(
        sample_size=image_size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(base * m for m in mult),
        layers_per_block=cfg["num_res_blocks"],
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        attention_head_dim=64,  # ours: one head per 64 channels
        norm_num_groups=num_groups(base),  # one group count for all widths; divides every multiple of base
        dropout=cfg.get("dropout", 0.0),
        downsample_type=resample,
        upsample_type=resample,
    )
    return DiffusersNet(unet)


def build(model: str, preset: str, image_size: int, channels: int) -> nn.Module:
    """Our UNet for a preset, or its diffusers twin."""
    cfg = dict(UNET_PRESETS[preset])
    if model == "ours":
        return UNet(image_size, channels, **cfg)  # type: ignore[arg-type]
    return diffusers_twin(cfg, image_size, channels)


def gflops_per_image(net: nn.Module, image_size: int, channels: int, device: torch.device) -> float:
    """Forward + backward GFLOP for one image (torch's FLOP counter: convolutions, matmuls, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(2, channels, image_size, image_size, device=device)
    with FlopCounterMode(display=False) as counter:
        net(x, torch.zeros(2, device=device)).sum().backward()
    net.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 2 / 1e9


def peak_memory_mb(device: torch.device, rss0_kb: int) -> float:
    """Peak memory of the run: CUDA allocator peak, or the growth of the process's max RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0_kb) / 1024


def sync(device: torch.device) -> None:
    """Wait for queued kernels, so that wall-clock times cover the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(
    model: ScoreModel, opt: torch.optim.Optimizer, x0: Tensor, precision: str, device: torch.device
) -> Callable[[torch.Generator], Tensor]:
    """One training step (DSM loss, backward, Adam) as a closure over the batch."""
    dtype = PRECISIONS[precision]
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    def step(g: torch.Generator) -> Tensor:
        autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with autocast:
            loss = dsm_loss(model, x0, g).mean()
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        return loss.detach()

    return step


def run_one(args: argparse.Namespace) -> dict[str, Any]:
    """Time one model (in this process) and return its figures."""
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    net = build(args.worker, args.preset, args.image_size, args.channels).to(device)
    params = sum(p.numel() for p in net.parameters())
    gflops = gflops_per_image(net, args.image_size, args.channels, device)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model = ScoreModel(net, VPSDE()).to(memory_format=fmt)
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    g = torch.Generator(device).manual_seed(0)
    x0 = (torch.rand(args.batch_size, args.channels, args.image_size, args.image_size, generator=g, device=device) * 2 - 1)
    x0 = x0.contiguous(memory_format=fmt)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if args.compile:
        model.net = torch.compile(model.net)  # type: ignore[assignment]
    step = make_step(model, opt, x0, args.precision, device)
    for _ in range(args.warmup):
        step(g)
    sync(device)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        loss = step(g)
        sync(device)
        times.append(time.perf_counter() - t0)
    if not math.isfinite(float(loss)):
        raise SystemExit(f"{args.worker}: loss is not finite")
    return {
        "model": args.worker,
        "params_M": params / 1e6,
        "gflop_per_image": gflops,
        "step_s": times,
        "peak_memory_MB": peak_memory_mb(device, rss0),
    }


def summarise(runs: list[dict[str, Any]], batch_size: int) -> dict[str, Any]:
    """Pool one model's rounds: median step time, throughput, and the largest peak memory."""
    times = [t for r in runs for t in r["step_s"]]
    med = statistics.median(times)
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [med, med, med]
    params, gflops = runs[0]["params_M"], runs[0]["gflop_per_image"]
    ips = batch_size / med
    return {
        "model": runs[0]["model"],
        "params_M": params,
        "gflop_per_image": gflops,
        "timed_steps": len(times),
        "step_ms_median": med * 1e3,
        "step_ms_iqr": (q[2] - q[0]) * 1e3,
        "images_per_s": ips,
        "images_per_s_per_Mparam": ips / params,
        "Mparam_images_per_s": ips * params,
        "achieved_gflops": ips * gflops,
        "peak_memory_MB": max(r["peak_memory_MB"] for r in runs),
    }


def run_in_subprocess(model: str, argv: list[str]) -> dict[str, Any] | None:
    """Time one model in a fresh interpreter (clean peak memory); None if it could not run."""
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--worker", model]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"[{model}] skipped: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace, device: str) -> None:
    """A plain-text table of the figures."""
    print(
        f"train step, preset {args.preset}, {args.image_size}x{args.image_size}x{args.channels}, batch {args.batch_size}, "
        f"{args.precision}, device {device}, threads {args.threads or torch.get_num_threads()}, compile {args.compile}, "
        f"channels_last {args.channels_last}; median of {args.rounds} rounds x {args.steps} steps, "
        f"each round a fresh process with {args.warmup} warm-up steps"
    )
    head = f"{'model':<10}{'params':>9}{'GFLOP/img':>11}{'step ms':>10}{'IQR ms':>9}{'img/s':>9}{'img/s/Mp':>10}{'Mp*img/s':>10}{'GFLOP/s':>9}{'peak MB':>9}"
    print(head)
    for r in rows:
        print(
            f"{r['model']:<10}{r['params_M']:>8.3f}M{r['gflop_per_image']:>11.2f}{r['step_ms_median']:>10.1f}{r['step_ms_iqr']:>9.1f}"
            f"{r['images_per_s']:>9.1f}{r['images_per_s_per_Mparam']:>10.1f}{r['Mparam_images_per_s']:>10.1f}"
            f"{r['achieved_gflops']:>9.1f}{r['peak_memory_MB']:>9.0f}"
        )


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """Command-line flags (and the argv to hand to the per-model subprocesses)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32", help="autocast dtype (weights stay fp32)")
    p.add_argument("--compile", action="store_true", help="torch.compile the training step")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=5, help="timed steps per round (the median over all rounds is reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps at the start of each round")
    p.add_argument("--rounds", type=int, default=3, help="fresh processes per model, alternating between models")
    p.add_argument("--preset", choices=sorted(UNET_PRESETS), default="tiny", help="our U-Net config; diffusers' is matched to it")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false", help="keep NCHW memory layout")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of: " + ", ".join(MODELS))
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--worker", choices=MODELS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if min(args.steps, args.batch_size, args.rounds) < 1:
        p.error("--steps, --batch-size and --rounds must be >= 1")
    raw = list(sys.argv[1:] if argv is None else argv)
    raw = [a for a in raw if a != "--json"] + ["--device", args.device]
    return args, raw


def main(argv: list[str] | None = None) -> None:
    """Time each model in turn and print a table (or JSON)."""
    args, raw = parse_args(argv)
    if args.worker:
        print(json.dumps(run_one(args)))
        return
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; use a subset of {list(MODELS)}")
    if "diffusers" in models:
        try:
            import diffusers  # noqa: F401
        except ImportError:
            print("diffusers is not installed: timing only our U-Net (`pip install diffusers` to compare)", file=sys.stderr)
            models.remove("diffusers")
    # Rounds alternate the models, so that load from other processes falls on both alike.
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in models}
    for _ in range(args.rounds):
        for m in models:
            r = run_in_subprocess(m, raw)
            if r is not None:
                runs[m].append(r)
    rows = [summarise(rs, args.batch_size) for rs in runs.values() if rs]
    if args.json:
        print(json.dumps({"config": {k: v for k, v in vars(args).items() if k != "worker"}, "results": rows}, indent=2))
    else:
        print_table(rows, args, args.device)


if __name__ == "__main__":
    main()
