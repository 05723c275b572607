"""The shell around the engine: options from signatures reach every command, per-image seeds, non-square images."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pytest
from PIL import Image
from torch import Tensor
from typer.testing import CliRunner

from diffusers_cli.cli import app
from diffusers_cli.engine.imputation import METHODS
from diffusers_cli.engine.masks import make_mask
from diffusers_cli.engine.options import Opt
from diffusers_cli.engine.samplers import SAMPLERS, SamplerSpec

runner = CliRunner()


def invoke(*args: object) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def digests(folder: Path, pattern: str = "*.png") -> dict[str, str]:
    """File name -> SHA-256 of every PNG in ``folder``."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob(pattern))}


def test_ei_corrector_and_lower_order_final_are_reachable_and_change_the_output(tiny_run: Path, tmp_path: Path) -> None:
    base = ["sample", "--model", tiny_run, "--sampler", "ei", "--steps", "6", "-n", "4", "--seed", "1", "--json"]
    plain = invoke(*base, "--out", tmp_path / "plain.png")
    unipc = invoke(*base, "--out", tmp_path / "unipc.png", "-o", "corrector=true", "-o", "lower_order_final=false")
    again = invoke(*base, "--out", tmp_path / "again.png", "--option", "corrector=true", "--set", "sampler.options.lower_order_final=false")
    assert plain.exit_code == unipc.exit_code == again.exit_code == 0, (plain.stderr, unipc.stderr, again.stderr)
    assert json.loads(unipc.stdout)["nfe"] == json.loads(plain.stdout)["nfe"] == 7  # UniPC's corrector costs no NFE
    assert (tmp_path / "plain.png").read_bytes() != (tmp_path / "unipc.png").read_bytes()
    assert (tmp_path / "unipc.png").read_bytes() == (tmp_path / "again.png").read_bytes()  # -o and --set are one path


def test_an_unknown_option_names_the_real_ones_on_every_sampling_command(tiny_run: Path, tiny_classifier: Path, tmp_path: Path) -> None:
    image = tmp_path / "in.png"
    Image.new("RGB", (8, 8), (200, 30, 30)).save(image)
    commands = [
        ["sample", "--model", tiny_run, "--sampler", "ddim", "--out", tmp_path / "a.png"],
        ["condition", "--model", tiny_run, "--classifier", tiny_classifier, "--class", "0", "--sampler", "ddim", "--out", tmp_path / "b.png"],
        ["evaluate", "--model", tiny_run, "--sampler", "ddim", "--metrics", "is", "-n", "4"],
        ["train", "--sampler", "ddim", "--out", tmp_path / "runs", "--steps", "1"],
    ]
    for cmd in commands:
        res = invoke(*cmd, "-o", "nosuch=1")
        assert res.exit_code == 2, (cmd, res.stderr)
        assert "sampler 'ddim' (grid 'quadratic') has no option 'nosuch'; its options are: eta (default 0.0)" in res.stderr, res.stderr
        assert "Traceback" not in res.stderr
    res = invoke("impute", image, "--mask", "half", "--model", tiny_run, "--method", "repaint", "-o", "nosuch=1", "--out", tmp_path / "c.png")
    assert res.exit_code == 2 and "imputation method 'repaint' has no option 'nosuch'; its options are: steps" in res.stderr, res.stderr
    assert not list(tmp_path.glob("*.png"))[1:] and not (tmp_path / "runs").exists()


def test_a_toy_sampler_with_an_option_is_reached_through_the_cli(tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Adding a sampler is one function plus one SAMPLERS line: its option works from the command line at once."""

    def sample_scaled(sde: Any, score_fn: Any, x: Tensor, ts: Tensor, *, generator: Any = None, callback: Any = None,
                      gain: Annotated[float, Opt("multiply x_T by this", gt=0)] = 1.0) -> Tensor:
        return x * gain

    monkeypatch.setitem(SAMPLERS, "scaled", SamplerSpec(sample_scaled, "uniform", "toy: x_T times a gain"))
    outs = {}
    for gain in ("0.1", "0.2"):
        res = invoke("sample", "--model", tiny_run, "--sampler", "scaled", "--no-denoise", "-n", "1", "--steps", "1",
                     "-o", f"gain={gain}", "--individual", "--out", tmp_path / f"g{gain}.png", "--json")
        assert res.exit_code == 0, res.stderr
        outs[gain] = np.asarray(Image.open(tmp_path / f"g{gain}_00000.png")).astype(float)
    # Pixels are 127.5 (x + 1): doubling the gain doubles each pixel's distance from mid-grey.
    dev1, dev2 = np.abs(outs["0.1"] - 127.5), np.abs(outs["0.2"] - 127.5)
    assert dev2.sum() == pytest.approx(2 * dev1.sum(), rel=0.05)
    bad = invoke("sample", "--model", tiny_run, "--sampler", "scaled", "-o", "gain=-1", "--out", tmp_path / "x.png")
    assert bad.exit_code == 2 and "sampler 'scaled' option gain must be > 0, got -1" in bad.stderr
    listed = json.loads(invoke("samplers", "--json").stdout)
    toy = next(s for s in listed["samplers"] if s["name"] == "scaled")
    assert toy["options"][0]["name"] == "gain" and toy["options"][0]["default"] == 1.0 and toy["options"][0]["limits"] == "> 0"


def test_samplers_listing_is_read_from_the_registries() -> None:
    res = invoke("samplers", "--json")
    assert res.exit_code == 0, res.stderr
    data = json.loads(res.stdout)
    assert [s["name"] for s in data["samplers"]] == list(SAMPLERS)
    for entry in data["samplers"]:
        assert entry["grid"] == SAMPLERS[entry["name"]].grid
        assert [o["name"] for o in entry["options"]] == list(SAMPLERS[entry["name"]].options())
    ei = next(s for s in data["samplers"] if s["name"] == "ei")
    assert {o["name"]: o["default"] for o in ei["options"]} == {"order": 2, "mode": "data", "lower_order_final": True, "corrector": False}
    heun = next(s for s in data["samplers"] if s["name"] == "heun")
    assert {o["name"] for o in heun["options"]} == {"s_churn", "s_tmin", "s_tmax", "s_noise"}
    assert next(g for g in data["grids"] if g["name"] == "karras")["options"][0]["name"] == "rho"
    assert [m["name"] for m in data["imputation_methods"]] == list(METHODS)
    text = invoke("samplers").stdout
    assert "-o corrector=false" in text and "-o s_churn=0.0" in text and "-o particles=16" in text


def test_legacy_flat_sampler_keys_in_a_config_file_still_work(tiny_run: Path, tmp_path: Path) -> None:
    old = tmp_path / "old.yaml"
    old.write_text("sampler:\n  name: pc\n  steps: 3\n  snr: 0.1\n  predictor: ancestral\nn: 2\n")
    new = tmp_path / "new.yaml"
    new.write_text("sampler:\n  name: pc\n  steps: 3\n  options:\n    snr: 0.1\n    predictor: ancestral\nn: 2\n")
    for cfg, out in ((old, "old.png"), (new, "new.png")):
        res = invoke("sample", "--model", tiny_run, "--config", cfg, "--out", tmp_path / out, "--json")
        assert res.exit_code == 0, res.stderr
        assert json.loads(res.stdout)["nfe"] == 7
    assert (tmp_path / "old.png").read_bytes() == (tmp_path / "new.png").read_bytes()
    typo = tmp_path / "typo.yaml"
    typo.write_text("sampler:\n  name: pc\n  snrr: 0.1\n")
    res = invoke("sample", "--model", tiny_run, "--config", typo, "--out", tmp_path / "t.png")
    assert res.exit_code == 2 and "has no option 'snrr'; its options are: snr (default 0.16)" in res.stderr


@pytest.mark.parametrize("sampler", ["ddpm", "ei", "heun"])
def test_image_i_depends_only_on_seed_and_i(sampler: str, tiny_run: Path, tmp_path: Path) -> None:
    """--batch-size 1, 7 and 64 give byte-identical PNGs; another seed gives others."""
    runs = {}
    for bs in (1, 7, 64):
        out = tmp_path / f"bs{bs}"
        res = invoke("sample", "--model", tiny_run, "--sampler", sampler, "--steps", "4", "-n", "9", "--batch-size", bs,
                     "--seed", "5", "--individual", "--out", out / "img.png")
        assert res.exit_code == 0, res.stderr
        runs[bs] = digests(out)
    assert len(runs[1]) == 9 and runs[1] == runs[7] == runs[64]
    # Image 4 alone: -n 5 makes images 0..4, the first five of the nine, whatever the batch size.
    res = invoke("sample", "--model", tiny_run, "--sampler", sampler, "--steps", "4", "-n", "5", "--batch-size", "2",
                 "--seed", "5", "--individual", "--out", tmp_path / "five" / "img.png")
    assert res.exit_code == 0 and digests(tmp_path / "five") == {k: v for k, v in runs[1].items() if k <= "img_00004.png"}
    # ... and image 6 alone, with --first: the same bytes under the same name.
    res = invoke("sample", "--model", tiny_run, "--sampler", sampler, "--steps", "4", "--first", "6", "-n", "1",
                 "--seed", "5", "--individual", "--out", tmp_path / "six" / "img.png")
    assert res.exit_code == 0 and digests(tmp_path / "six") == {"img_00006.png": runs[1]["img_00006.png"]}
    res = invoke("sample", "--model", tiny_run, "--sampler", sampler, "--steps", "4", "-n", "9", "--seed", "6",
                 "--individual", "--out", tmp_path / "other" / "img.png")
    assert res.exit_code == 0 and set(digests(tmp_path / "other").values()).isdisjoint(runs[1].values())


def test_condition_and_impute_have_per_image_seeds_too(tiny_run: Path, tiny_classifier: Path, tmp_path: Path) -> None:
    for bs in (1, 5):
        res = invoke("condition", "--model", tiny_run, "--classifier", tiny_classifier, "--class", "1", "--sampler", "ddim",
                     "--steps", "4", "-n", "5", "--batch-size", bs, "--seed", "2", "--individual", "--out", tmp_path / f"c{bs}" / "c.png")
        assert res.exit_code == 0, res.stderr
    assert digests(tmp_path / "c1") == digests(tmp_path / "c5") and len(digests(tmp_path / "c1")) == 5
    image = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(image)
    for n in (1, 3):
        res = invoke("impute", image, "--mask", "half", "--model", tiny_run, "--method", "repaint", "--steps", "5",
                     "-o", "resample=2", "-o", "jump_length=2", "-n", n, "--seed", "4", "--out", tmp_path / f"i{n}" / "f.png")
        assert res.exit_code == 0, res.stderr
    first = (tmp_path / "i1" / "f.png").read_bytes()
    assert (tmp_path / "i3" / "f_00.png").read_bytes() == first  # candidate 0 is the same whatever -n is
    assert (tmp_path / "i3" / "f_01.png").read_bytes() != first


@pytest.mark.slow
def test_two_processes_draw_the_same_images_as_one(tiny_run: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["sample", "--model", str(tiny_run), "--sampler", "ddpm", "--steps", "4", "-n", "7", "--batch-size", "2",
            "--seed", "9", "--individual", "--device", "cpu"]
    one = subprocess.run([sys.executable, "-m", "diffusers_cli", *args, "--out", str(tmp_path / "one" / "i.png")],
                         capture_output=True, text=True, env=env, timeout=300)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                          "diffusers_cli", *args, "--batch-size", "3", "--out", str(tmp_path / "two" / "i.png")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0 and two.returncode == 0, (one.stderr, two.stderr)
    assert len(digests(tmp_path / "one")) == 7 and digests(tmp_path / "one") == digests(tmp_path / "two")


def test_non_square_images_end_to_end(tmp_path: Path) -> None:
    """--image-size 8x16: train, sample, condition-free guidance and impute all keep (H, W) = (8, 16)."""
    runs = tmp_path / "runs"
    res = invoke("train", "--image-size", "8x16", "--steps", "3", "--batch-size", "4", "--set", "data.num_examples=16",
                 "--set", "network.base_channels=8", "--set", "sampler.name=ddim", "--set", "sampler.steps=2", "--set", "sample_n=2",
                 "--set", "optim.warmup=2", "--set", "optim.lr=0.01",  # enough for guidance to show in 8-bit pixels
                 "--class-conditional", "--device", "cpu", "--out", runs, "--name", "wide", "--json")
    assert res.exit_code == 0, res.stderr
    assert Image.open(runs / "wide" / "samples.png").size == (2 * 18 + 2, 10 + 2)  # 2 tiles of 16 x 8 with padding
    res = invoke("sample", "--model", runs / "wide", "--sampler", "ddim", "--steps", "2", "-n", "2", "--individual",
                 "--out", tmp_path / "s" / "w.png")
    assert res.exit_code == 0, res.stderr
    assert Image.open(tmp_path / "s" / "w_00000.png").size == (16, 8)  # PIL sizes are (W, H)
    # Classifier-free guidance toward one class moves the pixels away from the unconditional sample of the same seed.
    pixels = {}
    for guidance in ("3", "0"):
        res = invoke("sample", "--model", runs / "wide", "--sampler", "ddim", "--steps", "2", "-n", "2", "--class", "ring",
                     "--guidance", guidance, "--individual", "--out", tmp_path / f"g{guidance}" / "w.png")
        assert res.exit_code == 0, res.stderr
        pixels[guidance] = np.asarray(Image.open(tmp_path / f"g{guidance}" / "w_00000.png")).astype(int)
    assert pixels["3"].shape == (8, 16, 3) and np.abs(pixels["3"] - pixels["0"]).mean() > 1.0
    image = tmp_path / "photo.png"
    Image.new("RGB", (32, 16), (10, 200, 10)).save(image)
    res = invoke("impute", image, "--mask", "box", "--model", runs / "wide", "--method", "replacement", "--sampler", "ddim",
                 "--steps", "2", "--out", tmp_path / "filled.png")
    assert res.exit_code == 0, res.stderr
    filled = np.asarray(Image.open(tmp_path / "filled.png")).astype(int)
    assert filled.shape == (16, 32, 3)
    known = make_mask("box", (16, 32))[0, 0].bool().numpy()  # the frame around the box, at the image's own size
    assert 0 < known.sum() < known.size
    assert (filled[known] == [10, 200, 10]).all()  # kept exactly
    assert np.abs(filled[~known] - [10, 200, 10]).mean() > 10  # the box was generated, not copied
