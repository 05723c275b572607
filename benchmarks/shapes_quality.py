"""Issue 2's measure of the quickstart: share of 256 generated shapes a trained judge recognises with confidence >= 0.9.

The judge (shapes_judge.py) also has a "none of them" class, so noise and blobs are not recognised.

    python benchmarks/shapes_quality.py --model runs/quickstart [--sampler ei --steps 30] [--train-seconds SECONDS]
    python benchmarks/shapes_quality.py --model runs/mnist --data-dir ../shared/data/mnist   # an MNIST run

The judge is trained on the run's own dataset (shapes, or MNIST from --data-dir).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shapes_judge import judge_images, train_judge  # noqa: E402

from diffusers_cli.build import load_score_model  # noqa: E402
from diffusers_cli.engine.samplers import sample  # noqa: E402
from diffusers_cli.engine.score import make_score_fn  # noqa: E402


def main() -> None:
    """Sample 256 images from a run and report how many the judge recognises confidently."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--sampler", default="ei")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("-n", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist",
                    help="where MNIST's IDX files are, for an MNIST run")
    ap.add_argument("--train-seconds", type=float, default=None, help="wall time of the training run, to report beside")
    args = ap.parse_args()

    model, meta = load_score_model(args.model)
    t0 = time.perf_counter()
    dataset = meta.get("dataset", "shapes")
    if dataset not in ("shapes", "mnist"):
        raise SystemExit(f"the judge knows shapes and mnist, not {dataset!r}")
    judge, acc, real_share = train_judge(meta["image_size"], dataset=dataset, data_dir=args.data_dir)
    t_judge = time.perf_counter() - t0
    t0 = time.perf_counter()
    x = sample(model.sde, make_score_fn(model), (args.n, meta["channels"], meta["image_size"], meta["image_size"]),
               args.sampler, args.steps, torch.Generator().manual_seed(args.seed))
    t_sample = time.perf_counter() - t0
    cls, confident = judge_images(judge, x, args.threshold)
    # The reject class at work: Gaussian noise must not count as recognised (a judge without it said "ring").
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(args.seed))
    _, noise_recognised = judge_images(judge, noise, args.threshold)
    counts = torch.bincount(cls[confident], minlength=len(meta["class_names"])).tolist()
    result = {
        "model": str(args.model), "steps_trained": meta["step"], "sampler": args.sampler, "sampler_steps": args.steps,
        "n": args.n, "recognised_share": round(confident.float().mean().item(), 4), "threshold": args.threshold,
        "per_class_recognised": dict(zip(meta["class_names"], counts)),
        "judged_no_class_share": round((cls == len(meta["class_names"])).float().mean().item(), 4),
        "judge_accuracy": round(acc, 4),
        "real_recognised_share": round(real_share, 4),
        "noise_recognised_share": round(noise_recognised.float().mean().item(), 4),
        "sample_seconds": round(t_sample, 1), "judge_seconds": round(t_judge, 1), "train_seconds": args.train_seconds,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as err:  # the package's errors for bad runs and data are ValueErrors
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
