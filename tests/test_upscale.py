"""`--upscale K` (issue 32): sample, condition and impute write their PNGs K times larger by nearest neighbour, so
each written pixel is a K x K block of the 1x pixel and nothing else changes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from diffusers_cli.cli import app

runner = CliRunner()


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def _blocks(small: np.ndarray, k: int) -> np.ndarray:
    """Each pixel of ``small`` as a k x k block (channels, if any, kept)."""
    return small.repeat(k, axis=0).repeat(k, axis=1)


def _run(*args: object) -> None:
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.stderr


@pytest.mark.parametrize("individual", [False, True])
def test_sample_upscale_writes_k_by_k_blocks_of_the_same_images(tiny_run: Path, tmp_path: Path, individual: bool) -> None:
    common = ["sample", "--model", tiny_run, "--sampler", "ddim", "--steps", 3, "-n", 4, "--seed", 3, "--device", "cpu",
              *(["--individual"] if individual else [])]
    _run(*common, "--out", tmp_path / "one.png")
    _run(*common, "--out", tmp_path / "three.png", "--upscale", 3)
    ones = sorted(tmp_path.glob("one*.png"))
    threes = sorted(tmp_path.glob("three*.png"))
    assert len(ones) == len(threes) == (4 if individual else 1)
    for a, b in zip(ones, threes):
        small, big = _pixels(a), _pixels(b)
        assert big.shape[:2] == (3 * small.shape[0], 3 * small.shape[1])
        assert np.array_equal(big, _blocks(small, 3))


def test_impute_upscale(tiny_run: Path, tmp_path: Path) -> None:
    image = tmp_path / "img.png"
    Image.fromarray(np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)).save(image)
    common = ["impute", image, "--mask", "half", "--model", tiny_run, "--method", "replacement", "--sampler", "ddim",
              "--steps", 3, "--device", "cpu"]
    _run(*common, "--out", tmp_path / "a.png")
    _run(*common, "--out", tmp_path / "b.png", "--upscale", 2)
    assert np.array_equal(_pixels(tmp_path / "b.png"), _blocks(_pixels(tmp_path / "a.png"), 2))


def test_upscale_below_one_exits_2_with_one_line(tiny_run: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["sample", "--model", str(tiny_run), "--upscale", "0", "--out", str(tmp_path / "x.png")])
    assert res.exit_code == 2
    assert res.stderr == "diffuse: error: invalid config: upscale: Input should be greater than 0 (got 0)\n"
    assert not (tmp_path / "x.png").exists()


def test_condition_upscale(tmp_path: Path) -> None:
    common = ["condition", "--model", "builtin:shapes", "--classifier", "builtin:shapes-classifier", "--class", "ring",
              "--scale", 2, "--sampler", "ddim", "--steps", 3, "-n", 4, "--seed", 1, "--device", "cpu"]
    _run(*common, "--out", tmp_path / "a.png")
    _run(*common, "--out", tmp_path / "b.png", "--upscale", 4)
    small, big = _pixels(tmp_path / "a.png"), _pixels(tmp_path / "b.png")
    assert big.shape[:2] == (4 * small.shape[0], 4 * small.shape[1]) and np.array_equal(big, _blocks(small, 4))
