"""`diffuse sample --labels`: captions under each image and under each --trajectory column, the images untouched."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from typer.testing import CliRunner

from diffusers_cli.checkpoints.card import ModelCard
from diffusers_cli.cli import app
from diffusers_cli.config.sde import VPConfig
from diffusers_cli.support.labelled_grids import MIN_TILE, labelled_grid, scale_for
from diffusers_cli.jobs.sample import image_captions
from diffusers_cli.support.image_grids import to_uint8
from diffusers_cli.parts.drawing import Trajectory

runner = CliRunner()
PAD, LINE = 4, 14  # grid_labels' gap between tiles and the height of one caption line


def invoke(*args: object) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def enlarged(img: torch.Tensor, k: int) -> np.ndarray:
    """uint8 [C, H, W] enlarged k times by nearest neighbour, as [H, W, C]."""
    return img.repeat_interleave(k, 1).repeat_interleave(k, 2).permute(1, 2, 0).numpy()


def ink(region: np.ndarray) -> int:
    """Pixels darker than mid-grey in a caption area (the text)."""
    return int((region < 128).sum())


def test_captions_go_under_each_image_and_the_pixels_stay_the_images() -> None:
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    k = scale_for(8, 8)
    assert k == 9 and 8 * k >= MIN_TILE
    out = labelled_grid(x, nrow=2, captions=["#0 circle", "", "#2 a very long class name indeed", "#3 ring"])
    tile, cell = 8 * k, 8 * k + PAD + LINE
    assert out.dtype == torch.uint8 and tuple(out.shape) == (3, PAD + 2 * cell, PAD + 2 * (tile + PAD))
    hwc = out.permute(1, 2, 0).numpy()
    for i in range(4):
        r, c = divmod(i, 2)
        top, left = PAD + r * cell, PAD + c * (tile + PAD)
        assert np.array_equal(hwc[top : top + tile, left : left + tile], enlarged(to_uint8(x)[i], k))
    caption = lambda i: hwc[PAD + (i // 2) * cell + tile : PAD + (i // 2 + 1) * cell, PAD + (i % 2) * (tile + PAD) :][:, :tile]  # noqa: E731
    assert ink(caption(0)) > 20 and ink(caption(1)) == 0 and ink(caption(2)) > 20  # the long name is cut to fit, not dropped
    grey = labelled_grid(x[:, :1], nrow=4, column_captions=["a", "b", "c", "d"])
    assert tuple(grey.shape) == (1, PAD + tile + PAD + LINE, PAD + 4 * (tile + PAD))


def test_image_captions_name_each_images_index_and_class() -> None:
    card = ModelCard(kind="score", arch="unet", network={"num_classes": 3}, sde={"kind": "vp"}, image_shape=(1, 8, 8),
                     class_names=("a", "b", "c"), dataset="x", parameterization="eps")
    assert image_captions(card, None, 2, 4) == ["#2 c", "#3 a", "#4 b", "#5 c"]  # the classes in turn, as sampled
    assert image_captions(card, 1, 0, 2) == ["#0 b", "#1 b"]
    plain = ModelCard(**{**card.__dict__, "network": {}})
    assert image_captions(plain, None, 7, 2) == ["#7", "#8"]


def test_trajectory_captions_give_the_step_and_sigma_of_each_column() -> None:
    sde = VPConfig().build()
    traj = Trajectory(steps=20)
    ts = torch.linspace(1.0, 1e-3, 20)
    for i, t in enumerate(ts.tolist()):
        traj({"i": i, "t": t, "x": torch.zeros(2, 1, 4, 4)})
    assert [i for i, _ in traj.marks] == [1, 3, 5, 7, 9, 11, 13, 15, 17, 19]  # every 2nd step: 10 frames
    captions = traj.captions(sde)
    assert len(captions) == len(traj.frames) + 1 and captions[-1] == "result"
    for (step, t), text in zip(traj.marks, captions):
        mean, std = sde.marginal(torch.tensor([t], dtype=torch.float64))
        assert text == f"step {step}\nsigma {float(std / mean):.3g}"  # sigma: the noise-to-signal ratio at t
    strip = traj.strip(torch.zeros(2, 1, 4, 4), captions)
    tile = 4 * scale_for(4, 4)
    assert tuple(strip.shape) == (1, PAD + 2 * (tile + PAD) + 2 * LINE, PAD + 11 * (tile + PAD))


def test_sample_labels_caption_the_grid_and_the_strip(tiny_run: Path, tmp_path: Path) -> None:
    common = ["sample", "--model", tiny_run, "--sampler", "ddpm", "--steps", "4", "-n", "4", "--seed", "3"]
    res = invoke(*common, "--out", tmp_path / "plain.png")
    assert res.exit_code == 0, res.stderr
    res = invoke(*common, "--out", tmp_path / "grid.png", "--labels", "--trajectory", tmp_path / "strip.png")
    assert res.exit_code == 0, res.stderr
    plain, grid = np.asarray(Image.open(tmp_path / "plain.png")), np.asarray(Image.open(tmp_path / "grid.png"))
    k = scale_for(8, 8)
    tile, cell = 8 * k, 8 * k + PAD + LINE
    assert grid.shape[:2] == (PAD + 2 * cell, PAD + 2 * (tile + PAD))
    for i in range(4):  # each labelled tile is the plain grid's image, enlarged
        r, c = divmod(i, 2)
        img = torch.from_numpy(plain[2 + r * 10 : 10 + r * 10, 2 + c * 10 : 10 + c * 10].copy()).permute(2, 0, 1)
        top, left = PAD + r * cell, PAD + c * (tile + PAD)
        assert np.array_equal(grid[top : top + tile, left : left + tile], enlarged(img, k))
        assert ink(grid[top + tile : top + cell, left : left + tile]) > 10  # "#i" under it
    strip = np.asarray(Image.open(tmp_path / "strip.png"))
    # 4 rows (one per image), 4 steps + the result as columns, two caption lines (step, sigma) under them.
    assert strip.shape[:2] == (PAD + 4 * (tile + PAD) + 2 * LINE, PAD + 5 * (tile + PAD))
    captions = strip[PAD + 4 * (tile + PAD) :]
    assert all(ink(captions[:, PAD + c * (tile + PAD) : PAD + c * (tile + PAD) + tile]) > 10 for c in range(5))
