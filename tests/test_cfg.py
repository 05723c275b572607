"""Classifier-free guidance: the guided score's formula, its samples against exact class-conditionals, training and CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import engine_draw, grid_pixels, png_pixels, tiny_train_config
from test_cli import TINY, invoke, one_error_line
from torch import Tensor

from diffusers_cli.models import load_score_model
from diffusers_cli.checkpoints.weights import load_weights
from diffusers_cli.config.defaults import DEFAULT_GUIDANCE
from diffusers_cli.engine.analytic import GaussianMixture
from diffusers_cli.engine.guidance import classifier_free, cycle_labels
from diffusers_cli.engine.samplers import sample
from diffusers_cli.engine.sde import VPSDE


class ExactConditional:
    """Stands in for a class-conditional ScoreModel: s(x, t | k) of component k, s(x, t) of the mixture for label -1."""

    def __init__(self, gm: GaussianMixture) -> None:
        self.gm, self.sde, self.calls = gm, VPSDE(), []
        self.parts = [GaussianMixture(gm.means[k : k + 1], gm.variances[k : k + 1]) for k in range(gm.means.shape[0])]

    def score(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        self.calls.append(x.shape[0])
        out = self.gm.score(x, t, self.sde)
        for k, part in enumerate(self.parts):
            mine = (labels == k).view(-1, *[1] * (x.ndim - 1))
            out = torch.where(mine, part.score(x, t, self.sde), out)
        return out


def separated() -> GaussianMixture:
    """Two well separated 2x2 Gaussians, +-1.5 with variance 0.1, weights 0.5 each."""
    mu = torch.full((1, 2, 2), 1.5)
    return GaussianMixture(torch.stack([mu, -mu]), torch.tensor(0.1))


def test_formula_and_one_batched_forward() -> None:
    model = ExactConditional(separated())
    x, t = torch.randn(6, 1, 2, 2), torch.full((6,), 0.4)
    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    cond, uncond = model.score(x, t, labels), model.score(x, t, torch.full_like(labels, -1))
    model.calls.clear()
    got = classifier_free(model, labels, 2.5)(x, t)  # type: ignore[arg-type]
    assert torch.allclose(got, uncond + 2.5 * (cond - uncond), atol=1e-6)
    assert model.calls == [12]  # conditional and unconditional halves in one forward pass
    assert torch.equal(classifier_free(model, labels, 1.0)(x, t), cond)  # type: ignore[arg-type]
    assert torch.equal(classifier_free(model, labels, 0.0)(x, t), uncond)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="guidance scale must be >= 0"):
        classifier_free(model, labels, -1.0)  # type: ignore[arg-type]


def test_scale_one_samples_each_class_and_zero_the_mixture() -> None:
    gm = separated()
    model = ExactConditional(gm)
    labels = cycle_labels(0, 2000, 2)
    assert labels[:5].tolist() == [0, 1, 0, 1, 0]
    x = sample(model.sde, classifier_free(model, labels, 1.0), (2000, 1, 2, 2), "em", 100, torch.Generator().manual_seed(0))  # type: ignore[arg-type]
    flat = x.flatten(1).double()
    for k, sign in ((0, 1.0), (1, -1.0)):
        mine = flat[labels == k]
        assert torch.allclose(mine.mean(0), torch.full((4,), 1.5 * sign, dtype=torch.float64), atol=0.04)
        assert torch.allclose(mine.var(0), torch.full((4,), 0.1, dtype=torch.float64), rtol=0.15)
    x0 = sample(model.sde, classifier_free(model, labels, 0.0), (2000, 1, 2, 2), "em", 100, torch.Generator().manual_seed(1))  # type: ignore[arg-type]
    positive = float((x0.flatten(1).mean(1) > 0).double().mean())
    assert abs(positive - 0.5) < 0.04  # the mixture's weights, whatever the labels


def test_guidance_above_one_sharpens_an_overlapping_class() -> None:
    # 1-d, components at -1 and +1 with variance 0.5: plain p(x | y = 1) puts 8 % of its mass below 0;
    # guidance pushes samples away from the other class, so that share must fall (monotone in the scale).
    gm = GaussianMixture(torch.tensor([-1.0, 1.0]).reshape(2, 1, 1, 1), torch.tensor(0.5))
    model = ExactConditional(gm)
    labels = torch.ones(4000, dtype=torch.long)
    below = []
    for scale in (1.0, 3.0):
        x = sample(model.sde, classifier_free(model, labels, scale), (4000, 1, 1, 1), "em", 100, torch.Generator().manual_seed(0))  # type: ignore[arg-type]
        below.append(float((x.flatten() < 0).double().mean()))
    assert abs(below[0] - 0.0786) < 0.015  # P(N(1, 0.5) < 0) = Phi(-1 / sqrt(0.5))
    assert below[1] < below[0] / 2


def test_label_dropout_trains_the_no_class_embedding(tmp_path: Path) -> None:
    from diffusers_cli.parts import build
    from diffusers_cli.jobs.train import train

    rows = {}
    for p in (0.0, 0.5):
        cfg = tiny_train_config(tmp_path / str(p), steps=4, class_conditional=True, label_dropout=p)
        tensors, meta = load_weights(train(cfg).run_dir / "model.safetensors")
        assert meta["network"]["num_classes"] == 5
        rows[p] = tensors["online.label_emb.weight"][5]  # the "no class" row
    torch.manual_seed(cfg.seed)  # the training job's initial weights
    initial = build.build_unet({**build.network_kwargs(cfg.network), "num_classes": 5}, 8, 3).label_emb.weight[5]
    # With no label dropped the "no class" row gets no gradient and keeps its initial value; with half
    # of them dropped it is trained, so the net learns the unconditional score CFG needs.
    assert torch.equal(rows[0.0], initial.detach())
    assert not torch.allclose(rows[0.5], initial.detach())


def test_cli_conditional_train_and_sample(tmp_path: Path) -> None:
    # A short warm-up and a large rate: three steps move the net enough for guidance to show in 8-bit pixels.
    r = invoke("train", *TINY, "--steps", "3", "--class-conditional", "--set", "optim.warmup=2", "--set", "optim.lr=0.01",
               "--out", tmp_path, "--name", "c", "--json")
    assert r.exit_code == 0, r.stderr
    r = invoke("sample", "--model", tmp_path / "c", "--sampler", "ddpm", "--steps", "3", "-n", "4", "--out", tmp_path / "a.png", "--json")
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["guidance"] == DEFAULT_GUIDANCE and summary["class"] is None
    # Image i is of class i mod 5, guided at the default scale: the engine's sample with generator (seed 0, i).
    model, card = load_score_model(tmp_path / "c")
    shape = card.image_shape
    cfg_score = classifier_free(model, cycle_labels(0, 4, 5), DEFAULT_GUIDANCE)
    assert np.array_equal(png_pixels(tmp_path / "a.png"), grid_pixels(engine_draw(model.sde, cfg_score, shape, 4, "ddpm", 3)))
    ring = ["sample", "--model", tmp_path / "c", "--sampler", "ddpm", "--steps", "3", "-n", "2", "--class", "ring", "--json"]
    r = invoke(*ring, "--guidance", "1.5", "--out", tmp_path / "b.png")
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert (summary["class"], summary["guidance"]) == ("ring", 1.5)
    ring_index = card.class_names.index("ring")
    want = engine_draw(model.sde, classifier_free(model, ring_index, 1.5), shape, 2, "ddpm", 3)
    assert np.array_equal(png_pixels(tmp_path / "b.png"), grid_pixels(want))
    # Guidance 0 is the unconditional score: the same seeds give other images.
    assert invoke(*ring, "--guidance", "0", "--out", tmp_path / "b0.png").exit_code == 0
    unguided = png_pixels(tmp_path / "b0.png")
    assert np.array_equal(unguided, grid_pixels(engine_draw(model.sde, classifier_free(model, ring_index, 0.0), shape, 2, "ddpm", 3)))
    assert np.abs(unguided.astype(int) - png_pixels(tmp_path / "b.png")).mean() > 1.0
    line = one_error_line(invoke("sample", "--model", tmp_path / "c", "--class", "hexagon", "--out", tmp_path / "x.png"))
    assert "unknown class 'hexagon'" in line
    # `condition` without a classifier: the class-conditional model guides itself (5 images: batches of 4 and 1).
    r = invoke("condition", "--model", tmp_path / "c", "--class", "square", "--scale", "2", "--sampler", "ddpm", "--steps", "3",
               "-n", "5", "--batch-size", "4", "--out", tmp_path / "sq.png", "--json")
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert (summary["class"], summary["class_name"], summary["classifier"]) == (1, "square", None)
    square = classifier_free(model, 1, 2.0)
    want = torch.cat([engine_draw(model.sde, square, shape, 4, "ddpm", 3), engine_draw(model.sde, square, shape, 1, "ddpm", 3, first=4)])
    assert np.array_equal(png_pixels(tmp_path / "sq.png"), grid_pixels(want))


def test_cli_guidance_errors(tiny_run: Path, tmp_path: Path) -> None:
    line = one_error_line(invoke("sample", "--model", tiny_run, "--guidance", "2", "--out", tmp_path / "x.png"))
    assert "is an unconditional model" in line and "--class-conditional" in line
    line = one_error_line(invoke("condition", "--model", tiny_run, "--class", "0", "--out", tmp_path / "x.png"))
    assert "is an unconditional model: pass --classifier RUN" in line
    line = one_error_line(invoke("train", *TINY, "--task", "classifier", "--class-conditional", "--out", tmp_path))
    assert "--class-conditional is for score models" in line
    line = one_error_line(invoke("train", *TINY, "--class-conditional", "--label-dropout", "1", "--out", tmp_path))
    assert line.endswith("invalid config: label_dropout: Input should be less than 1 (got 1.0)")
    folder = tmp_path / "imgs"
    folder.mkdir()
    from PIL import Image

    for i in range(4):
        Image.new("RGB", (8, 8), (i * 60, 0, 0)).save(folder / f"{i}.png")
    line = one_error_line(invoke("train", *TINY, "--set", "data.num_examples=4", "--dataset", folder, "--class-conditional",
                                 "--out", tmp_path / "r"))
    assert "at least 2 classes" in line
