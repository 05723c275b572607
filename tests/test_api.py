"""The Python face (``import diffusers_cli as dc``): one path with the commands, the same images, the same errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import diffusers_cli as dc
from diffusers_cli.cli import app
from diffusers_cli.support.errors import UsageError
from diffusers_cli.support.image_grids import to_uint8

from conftest import tiny_train_config

runner = CliRunner()


def invoke(*args: object) -> object:
    return runner.invoke(app, [str(a) for a in args])


def pixels(path: Path) -> torch.Tensor:
    """A PNG as uint8 [C, H, W]."""
    arr = np.asarray(Image.open(path))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1) if arr.ndim == 3 else torch.from_numpy(arr.copy())[None]


@pytest.fixture(scope="module")
def cc_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny class-conditional run (classifier-free guidance)."""
    from diffusers_cli.jobs.train import train

    return train(tiny_train_config(tmp_path_factory.mktemp("cc"), steps=12, class_conditional=True, name="cc")).run_dir


def test_import_is_light_and_lists_the_api() -> None:
    # The package's top level must not load torch: `diffuse --help` imports it first.
    code = "import sys, diffusers_cli as dc; print('torch' in sys.modules, callable(dc.sample))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True"]
    assert {"load_model", "sample", "condition", "impute", "evaluate", "train", "grid", "to_pil"} <= set(dir(dc))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        dc.nope  # noqa: B018


def test_no_api_name_is_shadowed_by_a_submodule() -> None:
    # Importing diffusers_cli.X sets the package attribute X to the module, hiding a lazy dc.X of the same name
    # (dc.models was hidden this way once diffusers_cli.models was imported).
    import importlib.util

    for name in dc.API:
        assert importlib.util.find_spec(f"diffusers_cli.{name}") is None, f"dc.{name} collides with diffusers_cli.{name}"
    import diffusers_cli.models  # noqa: F401

    assert callable(dc.list_models) and dc.list_models()[0]["name"].startswith("builtin:")


def test_sample_equals_the_command_byte_for_byte(cc_run: Path, tmp_path: Path) -> None:
    args = ["--model", cc_run, "--sampler", "ei", "--steps", "4", "-n", "6", "--seed", "5", "--batch-size", "4",
            "--class", "ring", "--guidance", "1.5", "--order", "2", "--device", "cpu"]
    result = invoke("sample", *args, "--out", tmp_path / "cli.png", "--individual")
    assert result.exit_code == 0, result.stderr
    model = dc.load_model(cc_run)
    x = dc.sample(model, 6, sampler="ei", steps=4, seed=5, batch_size=2, label="ring", guidance=1.5, order=2, device="cpu",
                  out=tmp_path / "api.png", individual=True)
    assert x.shape == (6, 3, 8, 8) and x.dtype == torch.float32 and float(x.min()) >= -1.0001
    for i in range(6):
        cli_file, api_file = tmp_path / f"cli_{i:05d}.png", tmp_path / f"api_{i:05d}.png"
        assert cli_file.read_bytes() == api_file.read_bytes()
        # The returned tensor is what was written.
        assert torch.equal(to_uint8(x[i:i + 1])[0], pixels(cli_file))
    # The label and the guidance reach the model: another class gives other images from the same noise.
    other = dc.sample(model, 6, sampler="ei", steps=4, seed=5, label="square", guidance=1.5, order=2, device="cpu")
    assert (other - x).abs().mean() > 1e-3
    # A spec string is loaded as --model is.
    assert torch.equal(dc.sample(str(cc_run), 6, sampler="ei", steps=4, seed=5, label="ring", guidance=1.5, order=2), x)


def test_bad_arguments_raise_the_commands_message(tiny_run: Path) -> None:
    result = invoke("sample", "--model", tiny_run, "--sampler", "ei", "-o", "bogus=1", "-n", "1")
    cli_line = result.stderr.strip().removeprefix("diffuse: error: ")
    assert result.exit_code == 2
    with pytest.raises(UsageError) as err:
        dc.sample(tiny_run, 1, sampler="ei", bogus=1)
    assert str(err.value) == cli_line and "bogus" in cli_line and "order" in cli_line  # names the real options
    with pytest.raises(UsageError, match="unknown sampler 'nope'"):
        dc.sample(tiny_run, 1, sampler="nope")
    with pytest.raises(UsageError, match="unconditional model"):
        dc.sample(tiny_run, 1, label=1)
    with pytest.raises(UsageError, match="builtin:mnist"):
        dc.load_model("builtin:nope")


def test_trajectory_strip_matches_the_command(tiny_run: Path, tmp_path: Path) -> None:
    result = invoke("sample", "--model", tiny_run, "--sampler", "heun", "--steps", "5", "-n", "3", "--trajectory",
                    tmp_path / "t.png", "--out", tmp_path / "s.png", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    x, strip = dc.sample(tiny_run, 3, sampler="heun", steps=5, trajectory=True)
    assert torch.equal(strip, pixels(tmp_path / "t.png"))
    assert torch.equal(to_uint8(x[:1])[0], strip[:, 2:10, -10:-2])  # the last column is the result


def test_condition_with_a_classifier_equals_the_command(tiny_run: Path, tiny_classifier: Path, tmp_path: Path) -> None:
    args = ["--model", tiny_run, "--classifier", tiny_classifier, "--class", "1", "--scale", "4", "--sampler", "ei",
            "--steps", "4", "-n", "3", "--device", "cpu"]
    assert invoke("condition", *args, "--out", tmp_path / "c.png").exit_code == 0
    x = dc.condition(tiny_run, 1, 3, classifier=dc.load_model(tiny_classifier), scale=4, sampler="ei", steps=4)
    # dc.grid draws the grid the command writes.
    assert torch.equal(torch.from_numpy(np.asarray(dc.grid(x)).copy()).permute(2, 0, 1), pixels(tmp_path / "c.png"))
    # The classifier's gradient is in there: scale 0 is the plain model.
    plain = dc.condition(tiny_run, 1, 3, classifier=tiny_classifier, scale=0, sampler="ei", steps=4)
    assert (plain - x).abs().mean() > 1e-3
    with pytest.raises(UsageError, match="not a classifier"):
        dc.condition(tiny_run, 1, 3, classifier=dc.load_model(tiny_run))


def test_impute_tensors_and_files_agree_and_keep_known_pixels(tiny_run: Path, tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 8, 8, generator=g) * 2 - 1
    image = to_uint8(image[None]).float() / 127.5 - 1  # exactly representable as a PNG
    known = torch.ones(8, 8)
    known[:, 4:] = 0
    Image.fromarray(to_uint8(image)[0].permute(1, 2, 0).numpy()).save(tmp_path / "img.png")
    Image.fromarray(((1 - known) * 255).to(torch.uint8).numpy(), "L").save(tmp_path / "mask.png")
    args = ["--model", tiny_run, "--method", "repaint", "--steps", "6", "-n", "2", "--seed", "3", "--device", "cpu"]
    assert invoke("impute", tmp_path / "img.png", tmp_path / "mask.png", *args, "--out", tmp_path / "f.png").exit_code == 0
    x = dc.impute(tiny_run, image, known, method="repaint", steps=6, n=2, seed=3)
    assert x.shape == (2, 3, 8, 8)
    assert torch.equal(x[:, :, :, :4], image[:, :, :, :4].expand(2, -1, -1, -1))  # known pixels exactly
    for i in range(2):
        assert torch.equal(to_uint8(x[i:i + 1])[0], pixels(tmp_path / f"f_{i:02d}.png"))
    by_files = dc.impute(tiny_run, tmp_path / "img.png", tmp_path / "mask.png", method="repaint", steps=6, n=2, seed=3)
    assert torch.equal(to_uint8(by_files), to_uint8(x))
    halves = dc.impute(tiny_run, image, "half", method="replacement", sampler="ddim", steps=4, eta=0.0)
    assert halves.shape == (1, 3, 8, 8)
    with pytest.raises(UsageError, match="mask has shape"):
        dc.impute(tiny_run, image, torch.ones(4, 4))
    with pytest.raises(UsageError, match="particles"):
        dc.impute(tiny_run, image, known, method="repaint", particles=3)


def test_evaluate_bits_per_dim_equals_the_command(tiny_run: Path) -> None:
    args = ["--model", tiny_run, "--metrics", "bpd", "--bpd-examples", "4", "--bpd-rtol", "1e-3", "--bpd-atol", "1e-3"]
    result = invoke("evaluate", *args, "--json", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    cli = json.loads(result.stdout.strip().splitlines()[-1])
    res = dc.evaluate(tiny_run, metrics="bpd", bpd_examples=4, bpd_rtol=1e-3, bpd_atol=1e-3)
    assert res["bpd"]["mean"] == pytest.approx(cli["bpd"]["mean"], rel=1e-9) and 0 < res["bpd"]["mean"]
    with pytest.raises(UsageError, match="unknown key 'bpd_example'"):
        dc.evaluate(tiny_run, metrics="bpd", bpd_example=4)


def test_train_returns_the_trained_model(tmp_path: Path) -> None:
    model = dc.train(data={"dataset": "shapes", "image_size": 8, "num_examples": 32}, network={"base_channels": 16},
                     steps=3, batch_size=4, sample_every=0, out=tmp_path, name="api", device="cpu")
    assert model.card.step == 3 and model.card.image_shape == (3, 8, 8) and model.path == tmp_path / "api" / "model.safetensors"
    assert dc.sample(model, 2, sampler="ddim", steps=2).shape == (2, 3, 8, 8)
    with pytest.raises(UsageError, match="optim.lr"):
        dc.train(optim={"lr": -1}, out=tmp_path, name="bad")
    assert not (tmp_path / "bad").exists()


def test_grid_and_to_pil() -> None:
    x = torch.linspace(-1, 1, 4 * 3 * 5 * 5).reshape(4, 3, 5, 5)
    img = dc.grid(x, nrow=2)
    assert img.size == (2 * 7 + 2, 2 * 7 + 2) and img.mode == "RGB"
    assert dc.grid(x, nrow=4, scale=3).size == (3 * (4 * 7 + 2), 3 * 9)
    one = dc.to_pil(x[0])
    assert one.size == (5, 5) and np.asarray(one)[0, 0, 0] == 0 and np.asarray(dc.to_pil(x[-1]))[-1, -1, -1] == 255
    assert dc.to_pil(to_uint8(x[:1])[0]).tobytes() == one.tobytes()
