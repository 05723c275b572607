"""`diffuse evaluate`: FID/IS of folders and of a model's samples against the engine, the statistics cache, bits/dim, bad input."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import tiny_train_config
from PIL import Image
from pytorch_fid import fid_score
from safetensors.torch import save_file
from typer.testing import CliRunner

from diffusers_cli import build
from diffusers_cli.cli import app
from diffusers_cli.config import DEFAULT_GUIDANCE, SampleConfig, SamplerConfig
from diffusers_cli.data import load_dataset
from diffusers_cli.engine.likelihood import bits_per_dim
from diffusers_cli.engine.metrics import (
    FID_WEIGHTS_NAME,
    FID_WEIGHTS_SHA256,
    WEIGHTS_ENV,
    InceptionV3Features,
    compute_statistics,
    extract_features,
    folder_features,
    folder_images,
    frechet_distance,
    hub_weights_path,
    inception_score,
    load_inception,
    load_statistics,
)
from diffusers_cli.engine.score import make_score_fn
from diffusers_cli.jobs.evaluate import bpd_generator, frechet_distance_low_rank
from diffusers_cli.jobs.sample import sample_images
from diffusers_cli.runs import to_uint8

runner = CliRunner()


def invoke(*args: object) -> Any:
    return runner.invoke(app, ["evaluate", *[str(a) for a in args]])


def one_error_line(result: Any, code: int = 2) -> str:
    """Assert the exit code and that stderr is exactly one 'diffuse: error:' line (no traceback); return it."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("diffuse: error: ") and "Traceback" not in result.stderr
    return lines[0]


def ok_json(result: Any) -> dict[str, Any]:
    """The --json summary of a successful run."""
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    return json.loads(result.stdout)


def made_inception_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """The FID Inception's state dict with seeded random weights scaled so that activations stay O(1)."""
    gen = torch.Generator().manual_seed(seed)
    net = InceptionV3Features()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / m.weight[0].numel()) ** 0.5)
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
        net.fc.weight.copy_(torch.randn(net.fc.weight.shape, generator=gen) / 2048**0.5)
    return {k: v.clone() for k, v in net.state_dict().items()}


def write_images(folder: Path, sizes: list[tuple[int, int]], seed: int, grey: int | None = None) -> Path:
    """Seeded smooth-plus-noise PNGs of the given (width, height); image ``grey`` saved as greyscale."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i, (w, h) in enumerate(sizes):
        base = np.linspace(0, 255, w)[None, :, None] * rng.uniform(0.2, 1, size=3) + np.linspace(0, 255, h)[:, None, None] * rng.uniform(0, 0.5, size=3)
        img = Image.fromarray(np.clip(base / 1.5 + rng.normal(0, 30, size=(h, w, 3)), 0, 255).astype(np.uint8))
        (img.convert("L") if i == grey else img).save(folder / f"img_{i}.png")
    return folder


def nuclear_fid(f1: np.ndarray, f2: np.ndarray) -> float:
    """FID of two small feature sets by the cross-Gram identity Tr sqrt(S1 S2) = ||A1 A2^T||_* / sqrt((n1-1)(n2-1))."""
    a1, a2 = f1 - f1.mean(axis=0), f2 - f2.mean(axis=0)
    n1, n2 = len(f1), len(f2)
    cross = np.linalg.svd(a1 @ a2.T, compute_uv=False).sum() / np.sqrt((n1 - 1) * (n2 - 1))
    diff = f1.mean(axis=0) - f2.mean(axis=0)
    return float(diff @ diff + (a1 * a1).sum() / (n1 - 1) + (a2 * a2).sum() / (n2 - 1) - 2 * cross)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Made Inception weights as a .safetensors file (the form a user converts pytorch-fid's .pth to)."""
    path = tmp_path_factory.mktemp("weights") / "inception.safetensors"
    save_file(made_inception_state(), str(path))
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A: 4 images of mixed sizes (one greyscale, one in a subfolder); B: 3 images of 16x16."""
    root = tmp_path_factory.mktemp("folders")
    a = write_images(root / "a", [(16, 16), (16, 16), (24, 20), (16, 16)], seed=1, grey=1)
    (a / "sub").mkdir()
    (a / "img_3.png").rename(a / "sub" / "img_3.png")
    b = write_images(root / "b", [(16, 16)] * 3, seed=2)
    return a, b


@pytest.fixture(autouse=True)
def empty_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache (TORCH_HOME) and no $DIFFUSE_INCEPTION_WEIGHTS, so no real weights are ever found."""
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    return hub_weights_path()


# ----------------------------------------------------------------------------------------------


def test_low_rank_frechet_distance_equals_engine() -> None:
    rng = np.random.default_rng(0)
    d = 16
    many = rng.normal(size=(40, d)) @ rng.normal(size=(d, d))
    other = rng.normal(size=(55, d)) * 1.5 + 0.2
    ref = compute_statistics(other, allow_few=True)
    # More samples than dimensions: pytorch-fid's sqrtm route and the eigen route agree to rounding.
    assert frechet_distance_low_rank(many, *ref) == pytest.approx(frechet_distance(*compute_statistics(many), *ref), rel=1e-10)
    few = many[:5]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine = frechet_distance(*compute_statistics(few, allow_few=True), *ref)
        engine_self = frechet_distance(*compute_statistics(few, allow_few=True), *compute_statistics(few, allow_few=True))
    assert frechet_distance_low_rank(few, *ref) == pytest.approx(engine, rel=1e-7)
    assert frechet_distance_low_rank(few, *ref) == pytest.approx(nuclear_fid(few, other), rel=1e-10)
    # Against itself the exact route gives 0 to rounding where sqrtm of the singular product does not.
    assert abs(frechet_distance_low_rank(few, *compute_statistics(few, allow_few=True))) < 1e-10 < abs(engine_self)


def test_folders_equal_engine_and_statistics_cache(weights: Path, folders: tuple[Path, Path], tmp_path: Path,
                                                   empty_hub: Path) -> None:
    a, b = folders
    stats = tmp_path / "ref.npz"
    res = invoke("--images", a, "--reference", b, "--metrics", "is,fid", "--allow-few", "--inception-weights", weights,
                 "--batch-size", 3, "--save-reference-stats", stats, "--json")
    s = ok_json(res)
    # Direct computation with the engine (one batch, so all four images of A are resized together).
    net = load_inception(weights)
    fa, la = folder_features(net, a, batch_size=50, recursive=True)
    fb, _ = folder_features(net, b, batch_size=50)
    assert s["fid"] == pytest.approx(nuclear_fid(fa, fb), rel=1e-5) and s["fid"] > 1.0
    is_mean, is_std = inception_score(la, splits=1)
    assert (s["is_mean"], s["is_std"], s["is_splits"]) == (pytest.approx(is_mean, rel=1e-5), is_std, 1) and s["is_mean"] > 1.0
    assert s["metrics"] == ["fid", "is"] and s["num_samples"] == 4 and s["reference_num_samples"] == 3
    assert s["reference"] == f"images in {b.resolve()} (3)" and s["bpd_mean"] is None and s["sampler"] is None
    assert s["inception_weights"] == str(weights) and s["inception_origin"] == "argument" and s["inception_official"] is False
    assert s["inception_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert any("FID from 4 samples is meaningless" in w for w in s["warnings"])
    assert any("not pytorch-fid's official ones" in w for w in s["warnings"])
    assert "diffuse: warning: evaluated images: FID from 4 samples is meaningless" in res.stderr
    assert s["reference_stats"] == str(stats) and s["reference_stats_reused"] is False
    # pytorch-fid cannot even batch A's mixed sizes.
    with pytest.raises(RuntimeError, match="stack expects each tensor to be equal size"):
        fid_score.get_activations(folder_images(a, recursive=True), torch.nn.Identity(), batch_size=4, num_workers=0)

    # The cache holds B's statistics under pytorch-fid's keys, plus what they are of.
    with np.load(stats) as f:
        np.testing.assert_allclose(f["mu"], fb.mean(axis=0), rtol=0, atol=1e-6)
        np.testing.assert_allclose(f["sigma"], np.cov(fb, rowvar=False), rtol=0, atol=1e-6)
        assert int(f["num_samples"]) == 3 and str(f["reference"]) == s["reference"]
    # Weights in torch's hub cache, as a user converts the .pth there; B against its own statistics file is 0.
    empty_hub.parent.mkdir(parents=True)
    shutil.copy(weights, empty_hub.with_suffix(".safetensors"))
    own = ok_json(invoke("--images", b, "--reference", stats, "--metrics", "fid", "--allow-few", "--json"))
    assert abs(own["fid"]) < 1e-6 and own["reference"] == f"statistics {stats} of {s['reference']}" and own["reference_num_samples"] == 3
    assert own["inception_origin"] == "torch hub cache" and own["inception_weights"] == str(empty_hub.with_suffix(".safetensors"))
    # The same reference again reuses the cache and gives the same FID.
    res = invoke("--images", a, "--reference", b, "--metrics", "fid", "--allow-few", "--save-reference-stats", stats, "--json")
    reused = ok_json(res)
    assert f"reusing reference statistics from {stats}" in res.stderr and reused["reference_stats_reused"] is True
    assert reused["fid"] == pytest.approx(s["fid"], rel=1e-9)
    # Another reference under the same path recomputes and overwrites it; FID is symmetric.
    res = invoke("--images", b, "--reference", a, "--metrics", "fid", "--allow-few", "--save-reference-stats", stats, "--json")
    assert ok_json(res)["fid"] == pytest.approx(s["fid"], rel=1e-5) and f"recomputing {stats}" in res.stderr
    assert int(load_statistics(stats).extra["num_samples"]) == 4


def test_model_samples_against_dataset_end_to_end(tiny_run: Path, weights: Path, tmp_path: Path) -> None:
    res = invoke("--model", tiny_run, "--metrics", "fid,is", "-n", 8, "--allow-few", "--sampler", "ddpm", "--steps", 3,
                 "--reference-examples", 3, "--batch-size", 4, "--inception-weights", weights, "--device", "cpu", "--json")
    s = ok_json(res)
    assert (s["num_samples"], s["sampler"], s["steps"], s["nfe"], s["seed"], s["guidance"]) == (8, "ddpm", 3, 4, 0, None)
    assert s["model"] == str(tiny_run / "model.safetensors") and s["reference"] == "shapes train at 8x8 (3)"
    # The same samples `diffuse sample` draws, and the reference images as training reads them.
    cfg = SampleConfig(model=tiny_run, sampler=SamplerConfig(name="ddpm", steps=3), n=8, batch_size=4, out=tmp_path / "s.png", device="cpu")
    samples = to_uint8(sample_images(cfg).images)
    ds, _ = load_dataset("shapes", 8, split="train", num_examples=3)
    ref = to_uint8(torch.stack([ds[i][0] for i in range(3)]))
    features, logits = extract_features(load_inception(weights), [samples, ref])
    assert s["fid"] == pytest.approx(nuclear_fid(features[:8], features[8:]), rel=1e-5)
    assert s["is_mean"] == pytest.approx(inception_score(logits[:8], splits=1)[0], rel=1e-5)


def test_class_conditional_model_is_scored_on_its_guided_samples(weights: Path, tmp_path: Path) -> None:
    from diffusers_cli.jobs.train import train

    run = train(tiny_train_config(tmp_path, steps=3, class_conditional=True)).run_dir
    common = ["--model", run, "--metrics", "fid", "-n", 6, "--allow-few", "--sampler", "ddpm", "--steps", 3,
              "--reference-examples", 3, "--batch-size", 4, "--inception-weights", weights, "--device", "cpu", "--json"]
    s = ok_json(invoke(*common))
    assert s["guidance"] == DEFAULT_GUIDANCE
    # The same samples `diffuse sample` draws by default: classes in turn, guided (over two batches).
    cfg = SampleConfig(model=run, sampler=SamplerConfig(name="ddpm", steps=3), n=6, batch_size=4, out=tmp_path / "s.png", device="cpu")
    samples = to_uint8(sample_images(cfg).images)
    ds, _ = load_dataset("shapes", 8, split="train", num_examples=3)
    features, _ = extract_features(load_inception(weights), [samples, to_uint8(torch.stack([ds[i][0] for i in range(3)]))])
    assert s["fid"] == pytest.approx(nuclear_fid(features[:6], features[6:]), rel=1e-5)
    unguided = ok_json(invoke(*common, "--guidance", 0))
    assert unguided["guidance"] == 0 and unguided["fid"] != pytest.approx(s["fid"], rel=1e-6)


def test_bits_per_dim_runs_mean_and_spread(tiny_run: Path) -> None:
    # No Inception weights anywhere: bits/dim does not need them.
    s = ok_json(invoke("--model", tiny_run, "--metrics", "bpd", "--bpd-runs", 2, "--bpd-examples", 4, "--bpd-rtol", 1e-3,
                       "--bpd-atol", 1e-3, "--batch-size", 4, "--device", "cpu", "--json"))
    assert s["bpd_runs"] == 2 and s["bpd_examples"] == 4 and s["bpd_data"] == "shapes test at 8x8"
    assert s["fid"] is None and s["inception_weights"] is None and s["warnings"] == []
    per_run = s["bpd_per_run"]
    assert np.isfinite(s["bpd_mean"]) and s["bpd_mean"] > 0
    assert s["bpd_mean"] == pytest.approx(np.mean(per_run)) and s["bpd_std"] == pytest.approx(np.std(per_run))
    assert s["bpd_std"] > 0  # the two runs draw different dequantisation noise and probes
    # Run 1 is bits_per_dim of the test examples with run 1's generator.
    model, _ = build.load_score_model(tiny_run)
    ds, _ = load_dataset("shapes", 8, split="test", num_examples=4)
    x = torch.stack([ds[i][0] for i in range(4)])
    bpd = bits_per_dim(model.sde, make_score_fn(model), x, generator=bpd_generator(0, 1, 0, torch.device("cpu")), rtol=1e-3, atol=1e-3)
    assert per_run[1] == pytest.approx(float(bpd.double().mean()), rel=1e-6)


# ----------------------------------------------------------------------------------------------
# Bad input: exit 2 with one line, before any long work.


def test_bad_input_exits_2_with_one_line(folders: tuple[Path, Path], weights: Path, tmp_path: Path, empty_hub: Path) -> None:
    a, b = folders
    (tmp_path / "empty").mkdir()
    line = one_error_line(invoke("--images", tmp_path / "empty", "--reference", b, "--allow-few"))
    assert f"no images in or below {tmp_path / 'empty'}" in line
    keys = tmp_path / "keys.npz"
    np.savez(keys, mu=np.zeros(3), cov=np.eye(3))
    line = one_error_line(invoke("--images", a, "--reference", keys, "--allow-few"))
    assert "lacks 'sigma' (found: cov, mu); expected pytorch-fid's keys 'mu' and 'sigma'" in line
    line = one_error_line(invoke("--images", a, "--reference", b))
    assert re.search(r"evaluated images: FID needs more images than feature dimensions: got 4, need at least 2,049 .*; "
                     r"pass --allow-few to compute it anyway", line)
    line = one_error_line(invoke("--images", a, "--reference", b, "--allow-few"))
    assert f"put {FID_WEIGHTS_NAME} (SHA-256 {FID_WEIGHTS_SHA256}) at {empty_hub}, or pass --inception-weights PATH" in line
    line = one_error_line(invoke("--images", a, "--metrics", "fid,kid", "--allow-few"))
    assert "unknown metric 'kid'; use a comma-separated list of fid, is, bpd" in line
    line = one_error_line(invoke("--model", tmp_path / "no-such-run", "--metrics", "bpd"))
    assert f"model {tmp_path / 'no-such-run'} does not exist" in line
    line = one_error_line(invoke("--images", a, "--metrics", "fid", "--allow-few"))
    assert "FID needs a reference: pass --reference" in line
    line = one_error_line(invoke("--images", a, "--reference", "imagenet", "--allow-few"))
    assert "unknown reference 'imagenet': use a dataset name (shapes, mnist" in line
    line = one_error_line(invoke("--images", a, "--metrics", "is"))
    assert "Inception Score in 10 splits needs at least 10 images; got 4" in line
    theirs = tmp_path / "theirs.npz"
    np.savez(theirs, mu=np.zeros(2048), sigma=np.eye(2048))
    line = one_error_line(invoke("--images", a, "--reference", b, "--allow-few", "--inception-weights", weights, "--save-reference-stats", theirs))
    assert f"{theirs} exists but was not written by diffuse evaluate" in line
