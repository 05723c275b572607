"""Training: EMA, warm-up, data order, loss decrease, checkpoint round trip and exact resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import tiny_train_config
from safetensors.torch import load_file, save_file

from diffusers_cli.build import load_score_model
from diffusers_cli.checkpoints import (
    CheckpointError,
    load_weights,
    read_meta,
    save_weights,
)
from diffusers_cli.engine.losses import dsm_loss
from diffusers_cli.engine.networks.unet import UNet
from diffusers_cli.engine.score import ScoreModel
from diffusers_cli.engine.sde import VPSDE
from diffusers_cli.engine.training import EMA, batch_indices, warmup_lr
from diffusers_cli.jobs.train import train


def test_ema_warmup_and_average() -> None:
    lin = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(lin.weight)
    ema = EMA(lin, decay=0.9, warmup=True)
    assert ema.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    ema.update(lin)
    assert ema.module.weight.item() == pytest.approx(0.9)  # moved 1 - 0.1 of the way
    ema.warmup = False
    ema.update(lin)
    assert ema.module.weight.item() == pytest.approx(0.9 + 0.1 * 0.1)


def test_warmup_lr() -> None:
    assert warmup_lr(0, 1.0, 10) == pytest.approx(0.1)
    assert warmup_lr(9, 1.0, 10) == 1.0
    assert warmup_lr(50, 1.0, 10) == 1.0
    assert warmup_lr(0, 1.0, 0) == 1.0


def test_lr_decay_anneals_to_zero_after_warmup() -> None:
    # Warm-up 10 of 110 steps: the decay runs over the last 100, so step 60 is its midpoint.
    assert warmup_lr(4, 2.0, 10, "cosine", 110) == pytest.approx(1.0)  # still warming up
    assert warmup_lr(10, 2.0, 10, "cosine", 110) == pytest.approx(2.0)
    assert warmup_lr(60, 2.0, 10, "cosine", 110) == pytest.approx(1.0)
    assert warmup_lr(35, 2.0, 10, "cosine", 110) == pytest.approx(1.0 + math.cos(math.pi / 4))
    assert warmup_lr(60, 2.0, 10, "linear", 110) == pytest.approx(1.0)
    assert warmup_lr(85, 2.0, 10, "linear", 110) == pytest.approx(0.5)
    assert warmup_lr(110, 2.0, 10, "linear", 110) == 0.0
    assert warmup_lr(60, 2.0, 10, "none", 110) == 2.0
    with pytest.raises(ValueError, match="cosine"):
        warmup_lr(60, 2.0, 10, "step", 110)


def test_batch_indices_cover_each_epoch_once() -> None:
    seen = torch.cat([batch_indices(10, 5, 3, s) for s in range(2)])
    assert sorted(seen.tolist()) == list(range(10))
    assert torch.equal(batch_indices(10, 5, 3, 7), batch_indices(10, 5, 3, 7))
    assert not torch.equal(batch_indices(10, 5, 3, 0), batch_indices(10, 5, 4, 0))
    assert len(batch_indices(10, 4, 0, 2)) == 4  # wraps across the epoch boundary


def test_loss_decreases_on_a_tiny_problem() -> None:
    torch.manual_seed(0)
    net = UNet(image_size=8, in_channels=1, base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0)
    model = ScoreModel(net, VPSDE(), "eps")
    # Data: two fixed 8x8 images (a memorisable distribution).
    data = torch.stack([torch.ones(1, 8, 8) * 0.8, -torch.ones(1, 8, 8) * 0.8])
    batch = data.repeat(16, 1, 1, 1)

    def eval_loss() -> float:
        with torch.no_grad():
            return dsm_loss(model, batch.repeat(4, 1, 1, 1), torch.Generator().manual_seed(123), "eps").mean().item()

    before = eval_loss()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(80):
        loss = dsm_loss(model, batch, g, "eps").mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert before > 0.9  # an untrained eps-model predicts ~0: the loss is E||eps||^2 / D = 1
    assert after < 0.6 * before


def test_checkpoint_round_trip(tiny_run: Path) -> None:
    model, meta = load_score_model(tiny_run / "model.safetensors")
    assert meta["kind"] == "score" and meta["image_size"] == 8 and meta["channels"] == 3
    assert meta["class_names"][:3] == ["circle", "square", "triangle"]
    tensors, _ = load_weights(tiny_run / "model.safetensors")
    ema = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
    for k, v in model.net.state_dict().items():
        assert torch.equal(v, ema[k])
    online, _ = load_score_model(tiny_run, use_ema=False)
    diff = sum((a - b).abs().sum().item() for a, b in zip(online.net.parameters(), model.net.parameters()))
    assert diff > 0  # EMA and online weights are both stored, and differ after training


def test_foreign_and_corrupt_checkpoints(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="not a diffusers-cli checkpoint"):
        read_meta(foreign)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        read_meta(corrupt)
    pth = tmp_path / "model.pt"
    pth.write_bytes(b"PK\x03\x04 this would be a pickle zip")
    with pytest.raises(CheckpointError):
        read_meta(pth)


def test_weights_are_written_atomically_with_metadata(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_weights(path, {"a": torch.arange(3.0)}, {"kind": "score", "step": 3})
    assert read_meta(path) == {"kind": "score", "step": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]  # no temp file left
    assert torch.equal(load_file(str(path))["a"], torch.arange(3.0))


@pytest.mark.parametrize("conditional", [False, True])
def test_resume_gives_the_same_weights(tmp_path: Path, conditional: bool) -> None:
    # A class-conditional run also draws its label dropout from the saved generator.
    full = train(tiny_train_config(tmp_path / "a", steps=6, class_conditional=conditional, label_dropout=0.5))
    train(tiny_train_config(tmp_path / "b", steps=3, class_conditional=conditional, label_dropout=0.5))
    resumed = train(tiny_train_config(tmp_path / "b", steps=6, resume=True, class_conditional=conditional, label_dropout=0.5))
    assert resumed.start_step == 3 and resumed.step == 6
    wa, _ = load_weights(full.run_dir / "model.safetensors")
    wb, _ = load_weights(resumed.run_dir / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    log = [json.loads(line) for line in (resumed.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]


def test_existing_run_needs_resume(tmp_path: Path) -> None:
    from diffusers_cli.config import ConfigError

    train(tiny_train_config(tmp_path, steps=1))
    with pytest.raises(ConfigError, match="already exists; pass --resume"):
        train(tiny_train_config(tmp_path, steps=1))
