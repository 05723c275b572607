"""Issue 33: could a gate with no judge keep the tuner never worse? Distances to real images instead of a judge.

For every grid the tuner's held-out check kept (benchmarks/grid_seeds.py's search output: DIR/MODEL-seedS.json,
DIR/two/MODEL-seedS.json for 2 steps, and the package's grids.json for seed 0), both it and the default grid are
drawn on the judge gate's own noise (job seed ``parts.judging.CHECK_SEED`` + the tuning seed, 256 images, every
class in turn, guided) and compared with 256 real test images under the judge-free objectives of
``engine.grid_objectives`` (a fixed random network's features, pixel MMD, pixel moments), with the paired-bootstrap
held-out rule: kept when the tuned grid is nearer the real images by more than the SE of the gap. One JSON line per
grid; benchmarks/README.md ("grid_gates") sets these verdicts beside the judge's.

    python benchmarks/grid_gates.py --model shapes --reuse DIR
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

from builtin_models import MNIST  # noqa: E402

from diffusers_cli.config.defaults import DEFAULT_GUIDANCE  # noqa: E402
from diffusers_cli.engine.grid_objectives import OBJECTIVES, Context, held_out  # noqa: E402
from diffusers_cli.engine.grids import time_grid  # noqa: E402
from diffusers_cli.engine.rng import ImageGenerators  # noqa: E402
from diffusers_cli.engine.samplers import check_sampler, sample  # noqa: E402
from diffusers_cli.models import load_score_model  # noqa: E402
from diffusers_cli.models.builtin import weights_dir  # noqa: E402
from diffusers_cli.parts.drawing import guided_score_fns  # noqa: E402
from diffusers_cli.parts.judging import CHECK_SEED, real_images  # noqa: E402
from diffusers_cli.parts.tuned_grids import read_entries  # noqa: E402

#: The objectives that need no judge and compare distributions (a per-image one cannot compare with real images).
GATES = ("features", "mmd", "moments")


def main() -> None:
    """Print one JSON line per held-out winner: each judge-free gate's figures and verdict."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="shapes")
    ap.add_argument("--reuse", type=Path, required=True, help="grid_seeds' output folder (MODEL-seedS.json, two/...)")
    ap.add_argument("--sampler", default="ei")
    ap.add_argument("--steps", default="2,3,4,5,6", help="the step counts to gate (grid_seeds' cells)")
    ap.add_argument("-n", type=int, default=256)
    args = ap.parse_args()
    steps = {int(k) for k in args.steps.split(",")}
    net, card = load_score_model(f"builtin:{args.model}")
    net.requires_grad_(False)
    real = real_images(card.dataset, card.image_hw[0], card.channels, args.n, MNIST if card.dataset == "mnist" else None)
    score_fn = guided_score_fns(net, card.num_classes, None, DEFAULT_GUIDANCE, torch.device("cpu"))(0, args.n)
    ctx = Context(net.sde, score_fn)
    for seed in (0, 1, 2):
        files = [args.reuse / f"{args.model}-seed{seed}.json", args.reuse / "two" / f"{args.model}-seed{seed}.json"]
        if seed == 0:
            files.insert(0, weights_dir() / "grids.json")
        for f in (f for f in files if f.is_file()):
            for e in read_entries(f):
                if (e.get("model") != f"builtin:{args.model}" or e.get("seed", 0) != seed or e["sampler"] != args.sampler
                        or e["steps"] not in steps or not (e.get("held_out") or {}).get("kept")):
                    continue
                default = time_grid(net.sde, e["steps"], check_sampler(args.sampler).grid, net.sde.eps)
                with torch.no_grad():
                    x_t, x_d = (sample(net.sde, score_fn, (args.n, *card.image_shape), args.sampler, e["steps"],
                                       ImageGenerators.for_images(CHECK_SEED + seed, 0, args.n), grid=times)
                                for times in (torch.tensor(e["times"], dtype=torch.float64), default))
                out = {"model": args.model, "steps": e["steps"], "seed": seed}
                for name in GATES:
                    h = held_out(OBJECTIVES[name], x_t.double(), x_d.double(), real.double(), ctx)
                    out[name] = {"tuned": h.tuned, "default": h.default, "se": h.se, "kept": h.kept}
                print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
