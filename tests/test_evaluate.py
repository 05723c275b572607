"""`diffuse evaluate`: FID/IS of folders and of a model's samples against the engine, the statistics cache, bits/dim, bad input."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import warnings
from pathlib import Path
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import torch
from conftest import tiny_train_config
from PIL import Image
from pytorch_fid import fid_score
from safetensors.torch import save_file
from typer.testing import CliRunner

from diffusers_cli import models
from diffusers_cli.cli import app
from diffusers_cli.config.schema import SampleConfig, SamplerConfig
from diffusers_cli.config.defaults import DEFAULT_GUIDANCE
from diffusers_cli.data import load_dataset
from diffusers_cli.engine.likelihood import bits_per_dim
from diffusers_cli.engine.metrics import (
    FID_WEIGHTS_NAME,
    FID_WEIGHTS_SHA256,
    IMAGES,
    METRICS,
    WEIGHTS_ENV,
    Figures,
    InceptionV3Features,
    Inputs,
    MetricOptions,
    MetricsError,
    compute_statistics,
    extract_features,
    folder_features,
    folder_images,
    frechet_distance,
    frechet_distance_low_rank,
    hub_weights_path,
    inception_score,
    load_inception,
    load_statistics,
)
from diffusers_cli.engine.metrics.kid import NO_REFERENCE_FEATURES
from diffusers_cli.engine.score import make_score_fn
from diffusers_cli.jobs.evaluate import bpd_generator
from diffusers_cli.jobs.sample import sample_images
from diffusers_cli.support.image_grids import to_uint8

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
    # One key per metric asked for, in registry order, then what produced them.
    assert list(s) == ["fid", "is", "provenance"]
    assert s["fid"]["fid"] == pytest.approx(nuclear_fid(fa, fb), rel=1e-5) and s["fid"]["fid"] > 1.0
    assert (s["fid"]["std_method"], s["fid"]["bootstrap"]) == ("bootstrap", 20) and s["fid"]["std"] > 0
    is_mean, is_std = inception_score(la, splits=1)
    assert s["is"] == {"mean": pytest.approx(is_mean, rel=1e-5), "std": is_std, "splits": 1, "std_method": "splits"}
    assert s["is"]["mean"] > 1.0
    p = s["provenance"]
    assert p["num_samples"] == 4 and p["images"] == str(a) and p["sampler"] is None and p["model"] is None
    assert p["reference"] == {"description": f"images in {b.resolve()} (3)", "num_samples": 3, "stats": str(stats), "reused": False}
    assert p["inception"] == {"weights": str(weights), "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
                              "official": False, "origin": "argument"}
    assert any("FID from 4 samples is meaningless" in w for w in p["warnings"])
    assert any("not pytorch-fid's official ones" in w for w in p["warnings"])
    assert "diffuse: warning: evaluated images: FID from 4 samples is meaningless" in res.stderr
    assert set(p["seconds"]) == {"inception"}
    # pytorch-fid cannot even batch A's mixed sizes.
    with pytest.raises(RuntimeError, match="stack expects each tensor to be equal size"):
        fid_score.get_activations(folder_images(a, recursive=True), torch.nn.Identity(), batch_size=4, num_workers=0)

    # The cache holds B's statistics under pytorch-fid's keys, plus what they are of.
    with np.load(stats) as f:
        np.testing.assert_allclose(f["mu"], fb.mean(axis=0), rtol=0, atol=1e-6)
        np.testing.assert_allclose(f["sigma"], np.cov(fb, rowvar=False), rtol=0, atol=1e-6)
        assert int(f["num_samples"]) == 3 and str(f["reference"]) == p["reference"]["description"]
    # Weights in torch's hub cache, as a user converts the .pth there; B against its own statistics file is 0.
    empty_hub.parent.mkdir(parents=True)
    shutil.copy(weights, empty_hub.with_suffix(".safetensors"))
    own = ok_json(invoke("--images", b, "--reference", stats, "--metrics", "fid", "--allow-few", "--json"))
    assert abs(own["fid"]["fid"]) < 1e-6 and list(own) == ["fid", "provenance"]
    own_ref, own_inception = own["provenance"]["reference"], own["provenance"]["inception"]
    assert own_ref["description"] == f"statistics {stats} of {p['reference']['description']}" and own_ref["num_samples"] == 3
    assert own_ref["stats"] is None and own_ref["reused"] is False
    assert own_inception["origin"] == "torch hub cache" and own_inception["weights"] == str(empty_hub.with_suffix(".safetensors"))
    # The same reference again reuses the cache and gives the same FID.
    res = invoke("--images", a, "--reference", b, "--metrics", "fid", "--allow-few", "--save-reference-stats", stats, "--json")
    reused = ok_json(res)
    assert f"reusing reference statistics from {stats}" in res.stderr
    assert reused["provenance"]["reference"]["reused"] is True and reused["provenance"]["reference"]["stats"] == str(stats)
    assert reused["fid"]["fid"] == pytest.approx(s["fid"]["fid"], rel=1e-9)
    # Another reference under the same path recomputes and overwrites it; FID is symmetric.
    res = invoke("--images", b, "--reference", a, "--metrics", "fid", "--allow-few", "--save-reference-stats", stats, "--json")
    recomputed = ok_json(res)
    assert recomputed["fid"]["fid"] == pytest.approx(s["fid"]["fid"], rel=1e-5) and f"recomputing {stats}" in res.stderr
    assert recomputed["provenance"]["reference"]["reused"] is False
    assert int(load_statistics(stats).extra["num_samples"]) == 4


def test_model_samples_against_dataset_end_to_end(tiny_run: Path, weights: Path, tmp_path: Path) -> None:
    res = invoke("--model", tiny_run, "--metrics", "fid,is", "-n", 8, "--allow-few", "--sampler", "ddpm", "--steps", 3,
                 "--reference-examples", 3, "--batch-size", 4, "--inception-weights", weights, "--device", "cpu", "--json")
    s = ok_json(res)
    p = s["provenance"]
    assert (p["num_samples"], p["sampler"], p["steps"], p["nfe"], p["seed"], p["guidance"]) == (8, "ddpm", 3, 4, 0, None)
    assert p["model"] == str(tiny_run / "model.safetensors") and p["images"] is None
    assert p["reference"] == {"description": "shapes train at 8x8 (3)", "num_samples": 3, "stats": None, "reused": False}
    assert set(p["seconds"]) == {"sampling", "inception"}
    # The same samples `diffuse sample` draws, and the reference images as training reads them.
    cfg = SampleConfig(model=tiny_run, sampler=SamplerConfig(name="ddpm", steps=3), n=8, batch_size=4, out=tmp_path / "s.png", device="cpu")
    samples = to_uint8(sample_images(cfg).images)
    ds, _ = load_dataset("shapes", 8, split="train", num_examples=3)
    ref = to_uint8(torch.stack([ds[i][0] for i in range(3)]))
    features, logits = extract_features(load_inception(weights), [samples, ref])
    assert s["fid"]["fid"] == pytest.approx(nuclear_fid(features[:8], features[8:]), rel=1e-5)
    assert s["is"]["mean"] == pytest.approx(inception_score(logits[:8], splits=1)[0], rel=1e-5) and s["is"]["splits"] == 1


def test_class_conditional_model_is_scored_on_its_guided_samples(weights: Path, tmp_path: Path) -> None:
    from diffusers_cli.jobs.train import train

    run = train(tiny_train_config(tmp_path, steps=3, class_conditional=True)).run_dir
    common = ["--model", run, "--metrics", "fid", "-n", 6, "--allow-few", "--sampler", "ddpm", "--steps", 3,
              "--reference-examples", 3, "--batch-size", 4, "--inception-weights", weights, "--device", "cpu", "--json"]
    s = ok_json(invoke(*common))
    assert s["provenance"]["guidance"] == DEFAULT_GUIDANCE
    # The same samples `diffuse sample` draws by default: classes in turn, guided (over two batches).
    cfg = SampleConfig(model=run, sampler=SamplerConfig(name="ddpm", steps=3), n=6, batch_size=4, out=tmp_path / "s.png", device="cpu")
    samples = to_uint8(sample_images(cfg).images)
    ds, _ = load_dataset("shapes", 8, split="train", num_examples=3)
    features, _ = extract_features(load_inception(weights), [samples, to_uint8(torch.stack([ds[i][0] for i in range(3)]))])
    assert s["fid"]["fid"] == pytest.approx(nuclear_fid(features[:6], features[6:]), rel=1e-5)
    unguided = ok_json(invoke(*common, "--guidance", 0))
    assert unguided["provenance"]["guidance"] == 0 and unguided["fid"]["fid"] != pytest.approx(s["fid"]["fid"], rel=1e-6)


def test_bits_per_dim_runs_mean_and_spread(tiny_run: Path) -> None:
    # No Inception weights anywhere: bits/dim does not need them.
    s = ok_json(invoke("--model", tiny_run, "--metrics", "bpd", "--bpd-runs", 2, "--bpd-examples", 4, "--bpd-rtol", 1e-3,
                       "--bpd-atol", 1e-3, "--batch-size", 4, "--device", "cpu", "--json"))
    assert list(s) == ["bpd", "provenance"]
    bpd = s["bpd"]
    assert bpd["runs"] == 2 and bpd["examples"] == 4 and bpd["data"] == "shapes test at 8x8"
    p = s["provenance"]
    assert p["reference"] is None and p["inception"] is None and p["warnings"] == [] and p["num_samples"] is None
    assert p["model"] == str(tiny_run / "model.safetensors") and p["sampler"] is None and set(p["seconds"]) == {"bpd"}
    per_run = bpd["per_run"]
    assert len(per_run) == 2 and np.isfinite(bpd["mean"]) and bpd["mean"] > 0
    assert bpd["mean"] == pytest.approx(np.mean(per_run)) and bpd["std"] == pytest.approx(np.std(per_run))
    assert bpd["std"] > 0  # the two runs draw different dequantisation noise and probes
    # Run 1 is bits_per_dim of the test examples with run 1's generator.
    model, _ = models.load_score_model(tiny_run)
    ds, _ = load_dataset("shapes", 8, split="test", num_examples=4)
    x = torch.stack([ds[i][0] for i in range(4)])
    bpd = bits_per_dim(model.sde, make_score_fn(model), x, generator=bpd_generator(0, 1, 0, torch.device("cpu")), rtol=1e-3, atol=1e-3)
    assert per_run[1] == pytest.approx(float(bpd.double().mean()), rel=1e-6)


def test_sampling_settings_where_nothing_is_sampled_exit_2(tiny_run: Path, weights: Path, folders: tuple[Path, Path]) -> None:
    """Bits/dim alone, or given images, draws no samples: --guidance, --eps, --sampler there are refused, not ignored."""
    line = one_error_line(invoke("--model", tiny_run, "--metrics", "bpd", "--guidance", 2, "--eps", 1e-3, "--device", "cpu"))
    assert line == ("diffuse: error: --eps, --guidance set how samples are drawn, and bits/dim draws no samples: drop them, "
                    "or ask for a metric of generated samples (--metrics fid,is,kid)")
    line = one_error_line(invoke("--model", tiny_run, "--metrics", "bpd", "--set", "sampler.steps=5", "--device", "cpu"))
    assert line.startswith("diffuse: error: --steps sets how samples are drawn, and bits/dim draws no samples: drop it")
    a, b = folders
    line = one_error_line(invoke("--images", a, "--reference", b, "--metrics", "fid", "--allow-few", "--sampler", "ei",
                                 "--inception-weights", weights, "--device", "cpu"))
    assert line.startswith(f"diffuse: error: --sampler sets how samples are drawn, and the images in {a} are evaluated as they are")


class MeanNorm:
    """A toy metric, registered only here: the mean norm of the scored images' features; refuses fewer than 4."""

    name = "toy"
    description = "mean L2 norm of the Inception features (a test's toy)"
    needs = frozenset({IMAGES})

    def check(self, what: str, n: int, options: MetricOptions) -> str | None:
        """At least 4 images; a warning line either way."""
        if n < 4:
            raise MetricsError(f"toy needs at least 4 {what}; got {n}")
        return f"toy of {n} {what} is a toy"

    def compute(self, inputs: Inputs) -> Figures:
        """{"mean_norm"}, and a warning."""
        assert inputs.features is not None
        return Figures({"mean_norm": float(np.linalg.norm(inputs.features, axis=1).mean())}, ("toy: computed",))

    def describe(self, values: Mapping[str, Any], scored: str, reference: str | None) -> str:
        """toy 1.234  (what)."""
        return f"toy {values['mean_norm']:.3f}  ({scored})"


def test_a_metric_is_one_registry_entry(monkeypatch: pytest.MonkeyPatch, weights: Path, folders: tuple[Path, Path]) -> None:
    monkeypatch.setitem(METRICS, "toy", MeanNorm())
    a, b = folders
    line = one_error_line(invoke("--images", a, "--metrics", "fid,prd", "--allow-few"))
    assert "unknown metric 'prd'; use a comma-separated list of fid, is, bpd, kid, toy" in line
    # Its check runs before any long work: no Inception weights are looked for.
    assert "toy needs at least 4 evaluated images; got 3" in one_error_line(invoke("--images", b, "--metrics", "toy"))
    args = ["--images", a, "--reference", b, "--metrics", "toy,is,fid", "--allow-few", "--inception-weights", weights]
    s = ok_json(invoke(*args, "--json"))
    assert list(s) == ["fid", "is", "toy", "provenance"]
    fa, _ = folder_features(load_inception(weights), a, recursive=True)
    assert s["toy"] == {"mean_norm": pytest.approx(float(np.linalg.norm(fa, axis=1).mean()), rel=1e-5)}
    assert s["fid"]["fid"] == pytest.approx(nuclear_fid(fa, folder_features(load_inception(weights), b)[0]), rel=1e-5)
    warned = s["provenance"]["warnings"]
    assert "toy of 4 evaluated images is a toy" in warned and warned[-1] == "toy: computed"
    # The terminal lines: each metric's own, in registry order, then the weights (what `diffuse evaluate` always printed).
    res = invoke(*args)
    assert res.exit_code == 0, res.stderr
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert res.stdout.splitlines() == [
        f"FID {s['fid']['fid']:.4f} +- {s['fid']['std']:.4f}  (bootstrap over 20 resamples; 4 images in {a} vs images in {b.resolve()} (3))",
        f"IS {s['is']['mean']:.4f} +- {s['is']['std']:.4f}  (4 images in {a}, 1 split(s))",
        f"toy {s['toy']['mean_norm']:.3f}  (4 images in {a})",
        f"Inception weights {weights} (SHA-256 {sha[:12]}..., NOT the official pytorch-fid weights)",
    ]
    assert "diffuse: warning: toy: computed" in res.stderr


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
    line = one_error_line(invoke("--images", a, "--metrics", "fid,prd", "--allow-few"))
    assert "unknown metric 'prd'; use a comma-separated list of fid, is, bpd, kid" in line
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


def test_kid_on_folders_and_its_reference_features(weights: Path, folders: tuple[Path, Path], tmp_path: Path) -> None:
    """KID of A against B from the CLI equals the test's own unbiased MMD^2 over the same subsets; a cache keeps B's features."""
    a, b = folders
    stats = tmp_path / "ref.npz"
    s = ok_json(invoke("--images", a, "--reference", b, "--metrics", "kid", "--allow-few", "--inception-weights", weights,
                       "--save-reference-stats", stats, "--json"))
    net = load_inception(weights)
    fa, _ = folder_features(net, a, recursive=True)
    fb, _ = folder_features(net, b)
    d = fa.shape[1]
    k = lambda x, y: (x @ y.T / d + 1) ** 3  # noqa: E731

    def mmd(x: np.ndarray, y: np.ndarray) -> float:
        m, n = len(x), len(y)
        kxx, kyy = k(x, x), k(y, y)
        return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * k(x, y).mean())

    # 4 scored and 3 reference images: subsets of 3, so each of the 100 subsets (drawn with the seed-0 generator) is 3 of A's 4
    # rows against the whole of B.
    rng = np.random.default_rng(0)
    values = [mmd(fa[rng.choice(4, 3, replace=False)], fb) for _ in range(100)]
    assert (s["kid"]["subsets"], s["kid"]["subset_size"], s["kid"]["std_method"]) == (100, 3, "subsets")
    assert s["kid"]["mean"] == pytest.approx(np.mean(values), rel=1e-6) and s["kid"]["std"] == pytest.approx(np.std(values), rel=1e-6)
    assert abs(np.mean(values) - mmd(fa, fa)) > 1e-3 * abs(np.mean(values))  # B, not A itself, is the reference
    # The cache written for KID holds B's features: as --reference it serves KID again, with the same figure.
    again = ok_json(invoke("--images", a, "--reference", stats, "--metrics", "kid", "--allow-few", "--inception-weights", weights, "--json"))
    assert again["kid"]["mean"] == pytest.approx(s["kid"]["mean"], rel=1e-9)
    # Subsets of 2: both sides drawn, the scored images' rows first, then the reference's.
    pairs = ok_json(invoke("--images", a, "--reference", stats, "--metrics", "kid", "--allow-few", "--inception-weights", weights,
                           "--kid-subset-size", 2, "--kid-subsets", 7, "--json"))
    rng = np.random.default_rng(0)
    values = [mmd(fa[rng.choice(4, 2, replace=False)], fb[rng.choice(3, 2, replace=False)]) for _ in range(7)]
    assert (pairs["kid"]["subsets"], pairs["kid"]["subset_size"]) == (7, 2)
    assert pairs["kid"]["mean"] == pytest.approx(np.mean(values), rel=1e-6) and pairs["kid"]["std"] == pytest.approx(np.std(values), rel=1e-6)
    # The same options by name (--metric-option, any MetricOptions field), winning over their flags: the same figures.
    named = ok_json(invoke("--images", a, "--reference", stats, "--metrics", "kid", "--metric-option", "allow_few=true",
                           "--inception-weights", weights, "--kid-subsets", 50, "--metric-option", "kid_subset_size=2",
                           "--metric-option", "kid_subsets=7", "--json"))
    assert named["kid"] == pairs["kid"]
    # A pytorch-fid statistics file (mu and sigma only) cannot: one line says what to pass instead.
    plain = tmp_path / "plain.npz"
    np.savez(plain, mu=fb.mean(axis=0), sigma=np.cov(fb, rowvar=False))
    line = one_error_line(invoke("--images", a, "--reference", plain, "--metrics", "kid", "--allow-few", "--inception-weights", weights))
    assert line.endswith(NO_REFERENCE_FEATURES)  # what KID lacks and the three --reference forms that give it
