"""What one in-training evaluation costs (`diffuse train --eval-every`), as a share of training time, on this machine.

For each image size it times, in this process and with the same threads: training steps of the
tiny U-Net at batch 64 (the Quickstart's setting), then one evaluation as the hook runs it: M EMA
samples drawn by the evaluation sampler (ei, 20 steps) and pytorch-fid's Inception on them. The
Inception weights are random (pytorch-fid's cannot be downloaded here): the network and so its
cost are the real one, the figures are not. Reference statistics are computed once per run and
not counted (their cost is Inception on the reference, the same per image as below).

    python benchmarks/eval_cost.py --sizes 16,32 -m 1000 --runs 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from machine import cpu_model  # benchmarks/machine.py

from diffusers_cli.config.schema import SamplerConfig, TrainConfig
from diffusers_cli.parts.build import build_objective, build_sde, build_unet, network_kwargs
from diffusers_cli.support.distributed import World
from diffusers_cli.engine.metrics import InceptionV3Features, extract_features
from diffusers_cli.engine.score import ScoreModel
from diffusers_cli.engine.training import EMA
from diffusers_cli.support.progress import SilentReporter
from diffusers_cli.checkpoints.card import ModelCard
from diffusers_cli.parts.evaluation import draw_samples, tensor_batches


def time_training(size: int, steps: int, batch: int) -> float:
    """Seconds per training step of the tiny U-Net on random data (the loop's work: forward, backward, AdamW, EMA)."""
    cfg = TrainConfig.model_validate({"data": {"image_size": size}, "batch_size": batch})
    net = build_unet(network_kwargs(cfg.network), size, 3)
    objective = build_objective(cfg, net, build_sde(cfg.sde))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    ema = EMA(net)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(batch, 3, size, size) * 2 - 1, torch.zeros(batch, dtype=torch.long)

    def step() -> None:
        loss, _ = objective(**objective.draw(x, y, gen))
        opt.zero_grad(set_to_none=True)
        loss.mean().backward()
        opt.step()
        ema.update(net)

    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps


def time_evaluation(size: int, m: int, batch: int, sampler: SamplerConfig) -> tuple[float, float, int]:
    """(sampling seconds, Inception seconds, NFE per sample) of one evaluation of M samples."""
    cfg = TrainConfig.model_validate({"data": {"image_size": size}})
    net = build_unet(network_kwargs(cfg.network), size, 3).eval()
    model = ScoreModel(net, build_sde(cfg.sde), cfg.network.parameterization)
    card = ModelCard(kind="score", arch="unet", network=dict(net.config), sde={"kind": "vp"}, image_shape=(3, size, size),
                     class_names=(), dataset="shapes", parameterization="edm")
    world = World()
    t0 = time.perf_counter()
    samples, nfe, _ = draw_samples(model, card, Path("bench"), m, sampler, batch, 0, None, torch.device("cpu"), world, SilentReporter())
    t1 = time.perf_counter()
    inception = InceptionV3Features().eval().requires_grad_(False)
    extract_features(inception, tensor_batches(samples, batch))
    return t1 - t0, time.perf_counter() - t1, nfe


def main() -> None:
    """Time training steps and one evaluation per size; print a table and optional JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="16,32")
    ap.add_argument("-m", "--samples", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3, help="evaluations timed per size (median reported)")
    ap.add_argument("--train-steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--every", type=int, default=500, help="training steps between evaluations, for the share")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    sampler = SamplerConfig(name="ei", steps=20)
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        step_s = time_training(size, args.train_steps, args.batch_size)
        runs = [time_evaluation(size, args.samples, args.batch_size, sampler) for _ in range(args.runs)]
        sampling = statistics.median(r[0] for r in runs)
        inception = statistics.median(r[1] for r in runs)
        total = sampling + inception
        rows.append({"size": size, "train_step_s": step_s, "sampling_s": sampling, "inception_s": inception,
                     "eval_s": total, "nfe": runs[0][2], "eval_in_train_steps": total / step_s,
                     "share_at_every": total / (total + args.every * step_s)})
    print(f"cpu: {cpu_model()}, torch threads {torch.get_num_threads()}, M = {args.samples}, ei 20 steps, batch {args.batch_size}")
    print(f"{'size':>5} {'train step':>11} {'sampling':>9} {'Inception':>10} {'one eval':>9} {'= steps':>8} {'share at every ' + str(args.every):>18}")
    for r in rows:
        print(f"{r['size']:>5} {r['train_step_s']:>10.3f}s {r['sampling_s']:>8.1f}s {r['inception_s']:>9.1f}s {r['eval_s']:>8.1f}s "
              f"{r['eval_in_train_steps']:>8.0f} {100 * r['share_at_every']:>17.1f}%")
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
