"""What checking a card against its weights costs: the meta-device build and header read beside the whole model load.

    python benchmarks/card_check.py --preset cars64 --size 64 --repeats 7

Writes one model file of the preset (random weights, a real card), then, interleaved A/B in one process,
times ``models.ours.check_card_fits`` (the network built on the meta device, the shapes read from the
safetensors header) and ``models.ours.load_net`` (which runs the check, reads the tensors, builds the network
on the CPU and loads it). Prints the medians in milliseconds and their ratio as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from diffusers_cli.checkpoints.card import ModelCard
from diffusers_cli.checkpoints.weights import save_model
from diffusers_cli.engine.networks.unet import UNET_PRESETS, UNet
from diffusers_cli.models.ours import check_card_fits, load_net


def main() -> None:
    """Time the check and the load, interleaved, and print their medians."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cars64", choices=sorted(UNET_PRESETS))
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(1)
    net = UNet(image_size=args.size, in_channels=3, **UNET_PRESETS[args.preset])  # type: ignore[arg-type]
    card = ModelCard(kind="score", arch="unet", network=dict(net.config), sde={"kind": "vp"}, image_shape=(3, args.size, args.size),
                     class_names=(), dataset="none", parameterization="edm")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        save_model(path, {f"ema.{k}": v for k, v in net.state_dict().items()}, card)
        check_card_fits(path, card, "ema")  # warm: imports and file cache
        load_net(path, "score")
        check_ms, load_ms = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            check_card_fits(path, card, "ema")
            check_ms.append(1e3 * (time.perf_counter() - t0))
            t0 = time.perf_counter()
            load_net(path, "score")
            load_ms.append(1e3 * (time.perf_counter() - t0))
    check, load = statistics.median(check_ms), statistics.median(load_ms)
    print(json.dumps({"preset": args.preset, "size": args.size, "parameters": sum(p.numel() for p in net.parameters()),
                      "check_ms": round(check, 1), "load_ms": round(load, 1), "check_share_of_load": round(check / load, 3)}))


if __name__ == "__main__":
    main()
