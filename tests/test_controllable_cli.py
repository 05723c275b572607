"""`diffuse condition` and `diffuse impute` end to end on tiny runs, and their bad-input messages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import engine_draw, grid_pixels, png_pixels, tiny_train_config
from PIL import Image
from test_cli import invoke, one_error_line

from diffusers_cli.models import load_classifier, load_score_model
from diffusers_cli.engine.guidance import classifier_fn, guided
from diffusers_cli.engine.score import make_score_fn
from diffusers_cli.jobs.train import train


def write_image(path: Path, size: tuple[int, int], mode: str = "RGB") -> np.ndarray:
    rng = np.random.default_rng(0)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    arr = rng.integers(0, 256, shape, dtype=np.uint8)
    Image.fromarray(arr, mode).save(path)
    return arr


def write_mask(path: Path, size: tuple[int, int], fill_cols: slice) -> None:
    arr = np.zeros((size[1], size[0]), dtype=np.uint8)
    arr[:, fill_cols] = 255  # white = fill
    Image.fromarray(arr, "L").save(path)


def test_condition_writes_images_of_a_named_class(tiny_run: Path, tiny_classifier: Path, tmp_path: Path) -> None:
    base = ["condition", "--model", tiny_run, "--classifier", tiny_classifier, "--class", "Triangle", "--sampler", "ddpm",
            "--steps", "4", "-n", "3", "--json"]
    res = invoke(*base, "--scale", "2", "--out", tmp_path / "c.png")
    assert res.exit_code == 0, res.stderr
    s = json.loads(res.stdout)
    assert s["class"] == 2 and s["class_name"] == "triangle" and s["nfe"] == 5
    assert Image.open(tmp_path / "c.png").size == (22, 22)
    # The grid is the engine's classifier-guided sample of class 2 at scale 2, image i from generator (seed 0, i).
    model, _ = load_score_model(tiny_run)
    net, _, _ = load_classifier(tiny_classifier)
    score = guided(make_score_fn(model), classifier_fn(net, model.sde), 2, 2.0)
    want = engine_draw(model.sde, score, (3, 8, 8), 3, "ddpm", 4)
    assert np.array_equal(png_pixels(tmp_path / "c.png"), grid_pixels(want))
    # Scale 0 drops the classifier's gradient: the plain sample, other pixels.
    assert invoke(*base, "--scale", "0", "--out", tmp_path / "c0.png").exit_code == 0
    plain = png_pixels(tmp_path / "c0.png")
    assert np.array_equal(plain, grid_pixels(engine_draw(model.sde, make_score_fn(model), (3, 8, 8), 3, "ddpm", 4)))
    assert np.abs(plain.astype(int) - png_pixels(tmp_path / "c.png")).mean() > 1.0


def test_condition_bad_inputs(tiny_run: Path, tiny_classifier: Path, tmp_path: Path) -> None:
    base = ["condition", "--model", tiny_run, "--classifier", tiny_classifier, "--steps", "2", "--out", tmp_path / "c.png"]
    assert "hexagon" in one_error_line(invoke(*base, "--class", "hexagon"))
    # The score model used as a classifier, and a classifier for another SDE.
    assert "not a classifier" in one_error_line(invoke("condition", "--model", tiny_run, "--classifier", tiny_run, "--class", "0"))
    other = train(tiny_train_config(tmp_path, steps=1, task="classifier", name="ve-clf",
                                    **{"classifier.preset": "wrn-10-2", "classifier.widen": 1, "sde": {"kind": "ve"}})).run_dir
    line = one_error_line(invoke("condition", "--model", tiny_run, "--classifier", other, "--class", "0", "--out", tmp_path / "x.png"))
    assert "trained for the ve SDE" in line
    big = train(tiny_train_config(tmp_path, steps=1, task="classifier", name="big-clf",
                                  **{"classifier.preset": "wrn-10-2", "classifier.widen": 1, "data.image_size": 16})).run_dir
    line = one_error_line(invoke("condition", "--model", tiny_run, "--classifier", big, "--class", "0", "--out", tmp_path / "x.png"))
    assert "expects images of shape (3, 16, 16) (C, H, W) but the model makes (3, 8, 8)" in line


@pytest.mark.parametrize("method", ["twisted", "smc", "replacement", "repaint"])
def test_impute_keeps_known_pixels_exactly_at_any_size(method: str, tiny_run: Path, tmp_path: Path) -> None:
    img = write_image(tmp_path / "img.png", (20, 12))  # not the model's 8x8, not square
    write_mask(tmp_path / "mask.png", (20, 12), slice(10, 20))
    extra = ["--set", "resample=2", "--set", "jump_length=2"] if method == "repaint" else []
    res = invoke("impute", tmp_path / "img.png", tmp_path / "mask.png", "--model", tiny_run, "--method", method,
                 "--steps", "4", "-n", "2", "--out", tmp_path / "f.png", "--json", *extra)
    assert res.exit_code == 0, res.stderr
    s = json.loads(res.stdout)
    assert s["outputs"] == [str(tmp_path / "f_00.png"), str(tmp_path / "f_01.png")] and s["size"] == [12, 20]
    for p in s["outputs"]:
        out = np.asarray(Image.open(p))
        assert out.shape == img.shape
        assert np.array_equal(out[:, :10], img[:, :10])  # known pixels are the input's
        assert not np.array_equal(out[:, 10:], img[:, 10:])  # the masked ones were generated


def test_impute_auto_method_follows_the_mask(tiny_run: Path, tmp_path: Path) -> None:
    write_image(tmp_path / "img.png", (8, 8))
    base = ["impute", tmp_path / "img.png", "--model", tiny_run, "--steps", "2", "--out", tmp_path / "o.png", "--json"]
    half = json.loads(invoke(*base, "--mask", "half").stdout)  # 32 of 64 known: at the limit, twisted
    assert half["method"] == "twisted" and "--method auto chose twisted (32 of 64 pixels known at 8x8)" in half["notes"]
    assert half["particles"] == 5
    most = json.loads(invoke(*base, "--mask", "box", "--mask-fraction", "0.25").stdout)  # 48 known
    assert most["method"] == "repaint" and most["nfe"] > 2
    # An option only one method takes overrides the mask's choice.
    forced = json.loads(invoke(*base, "--mask", "box", "--mask-fraction", "0.25", "--particles", "2").stdout)
    assert forced["method"] == "twisted" and "--method auto chose twisted (particles is set)" in forced["notes"]


def test_impute_generated_mask_and_greyscale_conversion(tiny_run: Path, tmp_path: Path) -> None:
    grey = write_image(tmp_path / "g.png", (8, 8), mode="L")
    res = invoke("impute", tmp_path / "g.png", "--mask", "half", "--mask-side", "left", "--model", tiny_run,
                 "--steps", "3", "--out", tmp_path / "o.png", "--json")
    assert res.exit_code == 0, res.stderr
    s = json.loads(res.stdout)
    assert "converted the L image g.png to RGB" in s["notes"][0]
    out = np.asarray(Image.open(tmp_path / "o.png"))
    assert np.array_equal(out[:, 4:, 0], grey[:, 4:])  # right half kept (grey replicated to RGB)


def test_impute_bad_inputs(tiny_run: Path, tmp_path: Path) -> None:
    write_image(tmp_path / "img.png", (8, 8))
    write_mask(tmp_path / "small.png", (6, 8), slice(0, 3))
    base = ["impute", tmp_path / "img.png"]
    assert "make the mask the same size" in one_error_line(invoke(*base, tmp_path / "small.png", "--model", tiny_run))
    write_mask(tmp_path / "none.png", (8, 8), slice(0, 0))
    assert "mask fills no pixel" in one_error_line(invoke(*base, tmp_path / "none.png", "--model", tiny_run))
    write_mask(tmp_path / "all.png", (8, 8), slice(0, 8))
    line = one_error_line(invoke(*base, tmp_path / "all.png", "--model", tiny_run))
    assert "mask fills every pixel (white = fill, black = keep), so nothing is known: keep some black" in line
    assert "give exactly one of a MASK image or --mask" in one_error_line(invoke(*base, "--model", tiny_run))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    assert "bad.png is not a readable image" in one_error_line(invoke("impute", tmp_path / "bad.png", "--mask", "box", "--model", tiny_run))
