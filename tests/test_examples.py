"""The example configs validate and describe the networks they claim."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffusers_cli.parts.build import build_unet, network_kwargs
from diffusers_cli.config.schema import TrainConfig, build_config

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("name, preset, size, params_m", [("cifar10-ncsnpp.yaml", "ncsnpp-cifar10", 32, (55, 70)),
                                                           ("cars64.yaml", "cars64", 64, (25, 45))])
def test_reference_configs(name: str, preset: str, size: int, params_m: tuple[float, float]) -> None:
    cfg = build_config(TrainConfig, EXAMPLES / name, {})
    assert cfg.network.preset == preset and cfg.data.image_size == size
    net = build_unet(network_kwargs(cfg.network), size, 3)
    millions = sum(p.numel() for p in net.parameters()) / 1e6
    assert params_m[0] < millions < params_m[1]
