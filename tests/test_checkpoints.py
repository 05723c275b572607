"""Model cards: written and read in one place, validated, versioned; files made by older diffusers-cli still load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from diffusers_cli.models import load_score_model
from diffusers_cli.checkpoints.card import FORMAT, FORMAT_VERSION, CheckpointError, ModelCard
from diffusers_cli.checkpoints.weights import read_card, save_model
from diffusers_cli.engine.score import make_score_fn

FIXTURES = Path(__file__).parent / "fixtures"
#: Written by `diffuse train` at commit ffa0cf6 (format 1, before model cards): a class-conditional 8x8 shapes U-Net,
#: base_channels 8, channel_mult (1, 1), 2 steps. Its outputs below were computed by that commit's code.
V1_FILE = FIXTURES / "v1_score_conditional.safetensors"
V1_SCORE_ABS_SUM = 233.72549438476562
V1_SCORE_FIRST = [1.4229718446731567, 1.4155315160751343, 1.4080934524536133, 1.4006609916687012]
V1_NET_ABS_SUM = {"ema": 0.013276823796331882, "ema_class": 0.013276837766170502, "online": 0.015152127481997013}


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.linspace(-1, 1, 2 * 3 * 8 * 8).reshape(2, 3, 8, 8), torch.tensor([0.3, 0.7])


def test_a_version_1_file_is_migrated_and_computes_what_it_did() -> None:
    card = read_card(V1_FILE)
    assert card.kind == "score" and card.arch == "unet" and card.source == "diffuse"
    assert card.image_shape == (3, 8, 8) and card.image_hw == (8, 8) and card.channels == 3
    assert card.class_names == ("circle", "square", "triangle", "cross", "ring") and card.num_classes == 5
    assert card.class_conditional and card.parameterization == "edm" and card.step == 2 and card.dataset == "shapes"
    assert card.network["image_size"] == 8 and card.network["in_channels"] == 3 and card.network["num_classes"] == 5
    assert card.sde == {"schedule": "linear", "beta_min": 0.1, "beta_max": 20.0, "cosine_s": 0.008, "kind": "vp"}
    x, t = _inputs()
    model, _ = load_score_model(V1_FILE)
    with torch.no_grad():
        score = make_score_fn(model)(x, t)
        assert float(model(x, t).abs().sum()) == pytest.approx(V1_NET_ABS_SUM["ema"], rel=1e-5)
        assert float(model(x, t, class_labels=torch.tensor([1, 3])).abs().sum()) == pytest.approx(V1_NET_ABS_SUM["ema_class"], rel=1e-5)
        online, _ = load_score_model(V1_FILE, use_ema=False)
        assert float(online(x, t).abs().sum()) == pytest.approx(V1_NET_ABS_SUM["online"], rel=1e-5)
    assert float(score.abs().sum()) == pytest.approx(V1_SCORE_ABS_SUM, rel=1e-5)
    torch.testing.assert_close(score.flatten()[:4], torch.tensor(V1_SCORE_FIRST), rtol=1e-5, atol=1e-6)


def test_a_migrated_card_round_trips_as_version_2(tmp_path: Path) -> None:
    card = read_card(V1_FILE)
    out = tmp_path / "v2.safetensors"
    save_model(out, load_file(str(V1_FILE)), card)
    with safe_open(str(out), framework="pt") as f:
        header = f.metadata()
    assert header["format"] == FORMAT and header["format_version"] == str(FORMAT_VERSION) == "2"
    assert json.loads(header["meta"])["card_version"] == 2
    assert read_card(out) == card
    x, t = _inputs()
    with torch.no_grad():
        a = make_score_fn(load_score_model(V1_FILE)[0])(x, t)
        b = make_score_fn(load_score_model(out)[0])(x, t)
    assert torch.equal(a, b)


def _write(path: Path, meta: dict[str, object], version: str = "2") -> Path:
    save_file({"w": torch.zeros(1)}, str(path), metadata={"format": FORMAT, "format_version": version, "meta": json.dumps(meta)})
    return path


def test_cards_are_validated_on_read(tmp_path: Path) -> None:
    good = json.loads(read_card(V1_FILE).to_json())
    with pytest.raises(CheckpointError, match="newer diffusers-cli"):
        read_card(_write(tmp_path / "newer.safetensors", {**good, "card_version": 3}))
    with pytest.raises(CheckpointError, match="invalid model card"):
        read_card(_write(tmp_path / "noshape.safetensors", {k: v for k, v in good.items() if k != "image_shape"}))
    with pytest.raises(CheckpointError, match="invalid model card"):
        read_card(_write(tmp_path / "arch.safetensors", {**good, "arch": "transformer"}))
    with pytest.raises(CheckpointError, match="names no parameterization"):
        read_card(_write(tmp_path / "param.safetensors", {**good, "parameterization": None}))
    with pytest.raises(CheckpointError, match="damaged version-1"):
        read_card(_write(tmp_path / "v1bad.safetensors", {"kind": "score", "network": {}}, version="1"))
    with pytest.raises(CheckpointError, match="training state, not a model"):
        read_card(_write(tmp_path / "state.safetensors", {"kind": "train-state", "step": 3}))


def test_a_non_square_card_builds_its_network(tmp_path: Path) -> None:
    from diffusers_cli.engine.networks.unet import UNet

    net = UNet((8, 12), 3, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=())
    card = ModelCard(kind="score", arch="unet", network=dict(net.config), sde={"kind": "ve"}, image_shape=(3, 8, 12),
                     class_names=(), dataset="toy", parameterization="edm")
    path = tmp_path / "wide.safetensors"
    tensors = {f"{p}.{k}": v.clone() for p in ("ema", "online") for k, v in net.state_dict().items()}
    save_model(path, tensors, card)
    model, back = load_score_model(path)
    assert back.image_hw == (8, 12) and back.network["image_size"] == [8, 12]
    assert model.net(torch.zeros(1, 3, 8, 12), torch.zeros(1)).shape == (1, 3, 8, 12)
