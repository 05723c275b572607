"""`builtin:mnist-judge`: shipped small, loads offline, reads held-out real digits as its card says, and says "none"
of noise; a file that is no judge is one clear line (a UsageError, exit 2 in any command)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffusers_cli.checkpoints.card import CheckpointError
from diffusers_cli.checkpoints.weights import read_card
from diffusers_cli.data import load_dataset
from diffusers_cli.models.builtin import BUILTIN_MODELS, describe, weights_dir
from diffusers_cli.parts.judging import judge, load_judge
from diffusers_cli.support.errors import UsageError

from conftest import SHARED_MNIST

PATH = weights_dir() / BUILTIN_MODELS["mnist-judge"]


def test_the_judge_ships_small_with_a_card_of_its_recipe_and_accuracy() -> None:
    assert PATH.stat().st_size < 300_000
    card = read_card(PATH)
    info = card.extra["builtin"]
    assert card.kind == "judge" and card.image_shape == (1, 28, 28) and card.class_names[-1] == "none"
    assert info["recipe"].startswith("python examples/builtin_judge.py") and "8,000" in info["data"]
    q = info["quality"]
    assert q["n"] == 2000 and q["accuracy"] >= 0.97 and 0.85 <= q["recognised"] <= 1 and q["threshold"] == 0.9
    assert describe("mnist-judge")["sde"] == {"kind": "no"}  # a judge reads clean images


def test_it_loads_offline_as_a_float32_judge() -> None:
    net, card = load_judge("builtin:mnist-judge")
    assert all(p.dtype == torch.float32 for p in net.parameters()) and not net.training
    assert net.reject_class == 10 == len(card.class_names) - 1


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason=f"no MNIST at {SHARED_MNIST} (the held-out digits the card was measured on)")
def test_held_out_accuracy_of_the_card_is_reproduced() -> None:
    ds, _ = load_dataset("mnist", 28, data_dir=SHARED_MNIST, split="test")
    x, y = ds.images[8000:].float() / 127.5 - 1, ds.labels[8000:].long()
    classes, confidence = judge(x)
    q = read_card(PATH).extra["builtin"]["quality"]
    assert abs((classes == y).float().mean().item() - q["accuracy"]) <= 0.005
    assert abs(((confidence >= 0.9) & (classes < 10)).float().mean().item() - q["recognised"]) <= 0.005


def test_noise_and_blank_images_are_none() -> None:
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(64, 1, 28, 28, generator=g).clamp(-1, 1)
    blank = torch.full((8, 1, 28, 28), -1.0)
    classes, _ = judge(torch.cat([noise, blank]))
    assert (classes == 10).float().mean().item() >= 0.95


def test_a_file_that_is_no_judge_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a judge; pass builtin:mnist-judge"):
        load_judge("builtin:mnist")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(UsageError) as err:
        load_judge(junk)
    assert "\n" not in str(err.value)
    with pytest.raises(UsageError, match=r"reads images \[n, 1, 28, 28\]"):
        judge(torch.zeros(2, 3, 28, 28))
