"""The recipe of `builtin:mnist-judge`: an independent MNIST judge, trained on 8,000 real digits, measured on 2,000 more.

    python examples/builtin_judge.py [--data-dir DIR] [--steps 1500] [--threads 2]   # DIR: MNIST's IDX files (data/mnist)

Trains ``engine.networks.judge.Judge`` (ten digits + "none of them") on the first 8,000 digits of MNIST's test split
(the only MNIST this project holds), with the benchmarks' augmentations (small warps, mild noise) and negatives
(noise, blobs, blanks, blends of two digits) for the reject class. Packs the EMA weights in fp16 with a card, then
measures the *packed* file on the last 2,000 digits, which it never saw: accuracy, and the share it recognises
(a digit with confidence >= 0.9). Those figures go in the card, which `diffuse models` shows.

The lessons use it to say how many samples are recognisable digits, because the classifier that steers guidance
must not grade its own work.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from diffusers_cli.checkpoints.card import ModelCard
from diffusers_cli.checkpoints.weights import load_model, save_model
from diffusers_cli.config.sde import VPConfig
from diffusers_cli.data import load_dataset
from diffusers_cli.engine.networks.judge import Judge, judge_images, negatives, warp

from builtin_models import commit, cpu_name  # the recipes' shared provenance (this folder is on sys.path when run)

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "src" / "diffusers_cli" / "models" / "weights" / "mnist-judge.safetensors"
#: Digits 0 .. TRAIN-1 of the test split train the judge; the rest (2,000) are held out to measure it.
TRAIN = 8000
THRESHOLD = 0.9


def train(x: torch.Tensor, y: torch.Tensor, steps: int, seed: int) -> Judge:
    """A judge trained on images ``x`` in [-1, 1] with labels ``y``; returns its EMA weights (eval mode)."""
    torch.manual_seed(seed)  # the initial weights
    judge = Judge(in_channels=1, num_classes=11)
    ema = Judge(in_channels=1, num_classes=11)
    ema.load_state_dict(judge.state_dict())
    opt = torch.optim.Adam(judge.parameters(), lr=2e-3)
    # Annealing the rate makes the judge confident on clean real digits, not only right.
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(seed)
    batch, n_neg = 96, 24
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=g)
        xb, yb = x[idx], y[idx]
        xb = torch.cat([warp(xb, g), negatives(xb, yb, n_neg, g)])
        yb = torch.cat([yb, torch.full((n_neg,), 10)])
        # Noise up to 0.25 on real digits: a noisy digit is still that digit, so only the absence of one,
        # not noise, may send an image to "none".
        strength = torch.cat([0.25 * torch.rand(batch, 1, 1, 1, generator=g), torch.full((n_neg, 1, 1, 1), 0.05)])
        loss = torch.nn.functional.cross_entropy(judge(xb + strength * torch.randn(xb.shape, generator=g)), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():  # EMA smooths the last steps' noise out of the weights the package ships
            for e, p in zip(ema.parameters(), judge.parameters()):
                e.lerp_(p, 0.01)
    return ema.eval()


def measure(judge: Judge, x: torch.Tensor, y: torch.Tensor) -> dict[str, float | int]:
    """Held-out accuracy (the reject class counts as wrong), recognised share, and pure noise read as "none"."""
    cls, recognised = judge_images(judge, x, THRESHOLD)
    noise = torch.randn(1000, *x.shape[1:], generator=torch.Generator().manual_seed(1)).clamp(-1, 1)
    noise_cls, _ = judge_images(judge, noise, THRESHOLD)
    return {"n": len(x), "accuracy": round((cls == y).float().mean().item(), 4),
            "recognised": round(recognised.float().mean().item(), 4),
            "recognised_correct": round((recognised & (cls == y)).float().mean().item(), 4),
            "threshold": THRESHOLD, "noise_recognised_as_none": round((noise_cls == 10).float().mean().item(), 4)}


def main() -> None:
    """Train, pack in fp16 with a card, measure the packed file, and write the card's figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "mnist")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ds, _ = load_dataset("mnist", 28, data_dir=args.data_dir, split="test")
    x, y = ds.images.float() / 127.5 - 1, ds.labels.long()
    at = commit()  # the code the judge is trained by, before anything this run writes
    t0 = time.perf_counter()
    judge = train(x[:TRAIN], y[:TRAIN], args.steps, args.seed)
    seconds = time.perf_counter() - t0
    info = {
        "description": "independent judge of clean MNIST digits (plain CNN, ten digits + 'none of them'): the lessons' "
                       "and benchmarks' reader of samples, never the model that steered them",
        "recipe": f"python examples/builtin_judge.py --steps {args.steps} --seed {args.seed} --threads {args.threads}",
        "data": f"the first {TRAIN:,} digits of the MNIST test split (data/mnist, as --download fetches it); "
                f"the last {len(x) - TRAIN:,} held out to measure it",
        "commit": at, "dtype": "fp16", "parameters": sum(p.numel() for p in judge.parameters()),
        "train_seconds": round(seconds, 1), "train_threads": args.threads, "cpu": cpu_name(),
    }
    card = ModelCard(kind="judge", arch="judge", network=dict(judge.config),
                     sde=VPConfig(),  # the card format requires one; a judge reads clean images and never uses it
                     image_shape=(1, 28, 28), class_names=(*(str(d) for d in range(10)), "none"), dataset="mnist",
                     step=args.steps, ema_updates=args.steps, extra={"builtin": info})
    weights = {f"ema.{k}": v.half() for k, v in judge.state_dict().items()}
    save_model(args.out, weights, card)
    # Measure the file as shipped (fp16 weights read back into a float32 judge), then write the figures in its card.
    tensors, _ = load_model(args.out)
    packed = Judge(**judge.config)
    packed.load_state_dict({k[4:]: v.float() for k, v in tensors.items()})
    info["quality"] = measure(packed.eval(), x[TRAIN:], y[TRAIN:])
    save_model(args.out, weights, ModelCard(**{**card.__dict__, "extra": {"builtin": info}}))
    print(f"{args.out}: {os.path.getsize(args.out):,} bytes, {seconds:.0f} s; held out: {info['quality']}")


if __name__ == "__main__":
    main()
