"""Issue 2's measure of the quickstart: share of 256 generated shapes a trained judge recognises with confidence >= 0.9.

The judge (shapes_judge.py) also has a "none of them" class, so noise and blobs are not recognised.

    python benchmarks/shapes_quality.py --model runs/quickstart [--sampler ei --steps 30] [--train-seconds SECONDS]
    python benchmarks/shapes_quality.py --model runs/mnist --data-dir ../shared/data/mnist   # an MNIST run

The judge is trained on the run's own dataset (shapes, or MNIST from --data-dir). A class-conditional
run (`diffuse train --class-conditional`) is sampled as `diffuse sample` does by default: the classes in
turn with classifier-free guidance (--guidance, default DEFAULT_GUIDANCE); the report then also says how
many samples the judge puts in the class that was asked for, and the same at other scales (--sweep; 0 is
the unconditional model). judge_fd is
the Frechet distance between the judge's features of the samples and of as many real images (the real
against real floor beside it): guidance that buys recognisable shapes with sameness shows there.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shapes_judge import cached_judge, judge_images

from diffusers_cli.models import load_score_model
from diffusers_cli.checkpoints.card import ModelCard
from diffusers_cli.config.defaults import DEFAULT_GUIDANCE
from diffusers_cli.engine.guidance import cycle_labels
from diffusers_cli.engine.metrics.fid import frechet_distance
from diffusers_cli.engine.samplers import sample
from diffusers_cli.engine.score import ScoreFn, ScoreModel, make_score_fn
from diffusers_cli.parts.drawing import guided_score_fns
from diffusers_cli.parts.judging import real_images

#: Seed of the real images judge_fd compares against (not the training seed 0, not the judge's).
REAL_SEED = 7


def features(judge: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The judge's penultimate features (float64, for the covariance)."""
    with torch.no_grad():
        return judge.features(x).double()


def judge_fd(judge: torch.nn.Module, x: torch.Tensor, real: torch.Tensor) -> float:
    """Frechet distance between judge features of x and of real images."""
    a, b = features(judge, x), features(judge, real)
    return frechet_distance(a.mean(0).numpy(), torch.cov(a.T).numpy(), b.mean(0).numpy(), torch.cov(b.T).numpy())


def score_for(model: ScoreModel, card: ModelCard, n: int, guidance: float | None) -> tuple[ScoreFn, torch.Tensor | None]:
    """The score `diffuse sample` uses by default, and the labels asked for (None: unconditional)."""
    k = card.network.get("num_classes")
    if k is None:
        return make_score_fn(model), None
    scale = DEFAULT_GUIDANCE if guidance is None else guidance
    return guided_score_fns(model, k, None, scale, torch.device("cpu"))(0, n), cycle_labels(0, n, k)


def load_real(dataset: str, image_size: int, channels: int, data_dir: Path, n: int) -> torch.Tensor:
    """n real images of a dataset in [-1, 1], from a seed neither the model nor the judge trained on."""
    return real_images(dataset, image_size, channels, n, data_dir if dataset == "mnist" else None, REAL_SEED)


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
    ap.add_argument("--judge-cache", type=Path, default=None,
                    help="a .safetensors file: the judge is read from it, or trained and written there")
    ap.add_argument("--train-seconds", type=float, default=None, help="wall time of the training run, to report beside")
    ap.add_argument("--guidance", type=float, default=None, help=f"class-conditional runs: guidance scale (default {DEFAULT_GUIDANCE})")
    ap.add_argument("--sweep", default="0,1,2,3,5", help="class-conditional runs: also these guidance scales (0: unconditional)")
    args = ap.parse_args()

    model, card = load_score_model(args.model)
    t0 = time.perf_counter()
    dataset = card.dataset or "shapes"
    if dataset not in ("shapes", "mnist"):
        raise SystemExit(f"the judge knows shapes and mnist, not {dataset!r}")
    judge, acc, real_share = cached_judge(card.image_hw[0], args.judge_cache, dataset, args.data_dir)
    t_judge = time.perf_counter() - t0
    t0 = time.perf_counter()
    shape = (args.n, card.channels, *card.image_hw)
    score_fn, labels = score_for(model, card, args.n, args.guidance)
    x = sample(model.sde, score_fn, shape, args.sampler, args.steps, torch.Generator().manual_seed(args.seed))
    t_sample = time.perf_counter() - t0
    cls, confident = judge_images(judge, x, args.threshold)
    # The reject class at work: Gaussian noise must not count as recognised (a judge without it said "ring").
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(args.seed))
    _, noise_recognised = judge_images(judge, noise, args.threshold)
    counts = torch.bincount(cls[confident], minlength=len(card.class_names)).tolist()
    real = load_real(dataset, card.image_hw[0], card.channels, args.data_dir, 2 * args.n)
    result = {
        "model": str(args.model), "steps_trained": card.step, "sampler": args.sampler, "sampler_steps": args.steps,
        "n": args.n, "recognised_share": round(confident.float().mean().item(), 4), "threshold": args.threshold,
        "per_class_recognised": dict(zip(card.class_names, counts)),
        "judged_no_class_share": round((cls == len(card.class_names)).float().mean().item(), 4),
        "judge_fd": round(judge_fd(judge, x, real[: args.n]), 3),
        "judge_fd_real_vs_real": round(judge_fd(judge, real[args.n:], real[: args.n]), 3),
        "judge_accuracy": round(acc, 4),
        "real_recognised_share": round(real_share, 4),
        "noise_recognised_share": round(noise_recognised.float().mean().item(), 4),
        "sample_seconds": round(t_sample, 1), "judge_seconds": round(t_judge, 1), "train_seconds": args.train_seconds,
    }
    if labels is not None:
        result["guidance"] = DEFAULT_GUIDANCE if args.guidance is None else args.guidance
        result["recognised_as_asked_share"] = round((confident & (cls == labels)).float().mean().item(), 4)
        sweep = []
        for scale in (float(v) for v in args.sweep.split(",") if v.strip()):
            xs = sample(model.sde, score_for(model, card, args.n, scale)[0], shape, args.sampler, args.steps,
                        torch.Generator().manual_seed(args.seed))
            c, ok = judge_images(judge, xs, args.threshold)
            sweep.append({"guidance": scale, "recognised_share": round(ok.float().mean().item(), 4),
                          "recognised_as_asked_share": round((ok & (c == labels)).float().mean().item(), 4),
                          "judge_fd": round(judge_fd(judge, xs, real[: args.n]), 3)})
        result["guidance_sweep"] = sweep  # guidance 0 is the unconditional model (the "no class" label)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as err:  # the package's errors for bad runs and data are ValueErrors
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
