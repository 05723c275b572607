"""Tests of the metrics engine: FID/IS/KID maths against pytorch-fid and numpy, FID's bootstrap, Inception weights, statistics files."""

from __future__ import annotations

import hashlib
import http.server
import re
import shutil
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_fid import fid_score
from pytorch_fid import inception as pf_inception
from safetensors.torch import save_file

from diffusers_cli.engine.metrics import (
    FID_WEIGHTS_NAME,
    FID_WEIGHTS_SHA256,
    FID_WEIGHTS_URL,
    IMAGES,
    LIKELIHOOD,
    METRICS,
    NEEDS,
    REFERENCE,
    REFERENCE_FEATURES,
    WEIGHTS_ENV,
    InceptionV3Features,
    Inputs,
    LikelihoodTable,
    MetricOptions,
    MetricsError,
    ReferenceStatistics,
    bootstrap_fids,
    check_fid_count,
    check_kid_count,
    check_metrics,
    check_sample_count,
    check_state_dict,
    compute_statistics,
    convert_weights,
    download_weights,
    extract_features,
    fid_against,
    folder_features,
    folder_images,
    frechet_distance,
    frechet_distance_low_rank,
    hub_weights_path,
    inception_score,
    kid_values,
    load_inception,
    load_statistics,
    locate_weights,
    mmd2_unbiased,
    read_weights,
    save_statistics,
    stack_images,
)
from diffusers_cli.engine.metrics import fid as fid_module
from diffusers_cli.engine.metrics import weights as weights_module
from diffusers_cli.engine.metrics.kid import NO_REFERENCE_FEATURES

SRC = Path(__file__).resolve().parents[1] / "src" / "diffusers_cli" / "engine" / "metrics"


# ----------------------------------------------------------------------------------------------
# Helpers: a made Inception state dict (random, seeded), images, an isolated torch hub cache.


def make_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict of the FID Inception whose activations stay O(1), so feature comparisons mean something."""
    gen = torch.Generator().manual_seed(seed)
    net = InceptionV3Features()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
            elif isinstance(m, torch.nn.BatchNorm2d):
                # Every BatchNorm tensor random, so a wrong eps or a skipped buffer would show.
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
        net.fc.weight.copy_(torch.randn(net.fc.weight.shape, generator=gen) / 2048**0.5)
        net.fc.bias.copy_(torch.randn(net.fc.bias.shape, generator=gen))
    return {k: v.clone() for k, v in net.state_dict().items()}


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The made state dict, saved as a .safetensors and as a .pth (as a user would place them)."""
    state = make_state_dict()
    folder = tmp_path_factory.mktemp("weights")
    st, pth = folder / "made.safetensors", folder / "made.pth"
    save_file(state, str(st))
    torch.save(state, pth)  # writing a pickle here is fine: only the code under test reads it, weights_only
    return {"state": state, "safetensors": st, "pth": pth}


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 small PNGs (7 RGB, 1 greyscale), 32x32, seeded: smooth gradients plus noise."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 32)
    for i in range(8):
        base = (ramp[None, :, None] * rng.uniform(0.2, 1, size=3) + ramp[:, None, None] * rng.uniform(0, 0.5, size=3)) / 1.5
        img = np.clip(base + rng.normal(0, 25, size=(32, 32, 3)), 0, 255).astype(np.uint8)
        pil = Image.fromarray(img).convert("L") if i == 3 else Image.fromarray(img)
        pil.save(folder / f"img_{i}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def model(made: dict[str, object]) -> InceptionV3Features:
    """The network loaded from the made .safetensors through the explicit-path route."""
    return load_inception(made["safetensors"])


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache under tmp (TORCH_HOME), no $DIFFUSE_INCEPTION_WEIGHTS; returns its checkpoints folder."""
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)  # undo any torch.hub.set_dir elsewhere
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    assert hub_weights_path() == checkpoints / FID_WEIGHTS_NAME
    return checkpoints


def assert_same_state(net: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Every tensor of ``state`` is loaded bit-for-bit into ``net``."""
    loaded = net.state_dict()
    assert set(state) == set(loaded)
    for k, v in state.items():
        assert torch.equal(loaded[k].cpu(), v), k


# ----------------------------------------------------------------------------------------------
# Frechet distance and statistics.


def random_stats(seed: int, n: int, d: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Statistics of two correlated random feature sets of n samples each."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
    b = rng.normal(size=(n + 7, d)) * rng.uniform(0.5, 2, size=d) + 0.3
    return (*compute_statistics(a, allow_few=True), *compute_statistics(b, allow_few=True))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frechet_distance_equals_pytorch_fid(seed: int) -> None:
    stats = random_stats(seed, n=200)
    ours = frechet_distance(*stats)
    assert ours == pytest.approx(fid_score.calculate_frechet_distance(*stats), abs=1e-6)
    assert ours > 1.0


def test_frechet_distance_near_singular_equals_pytorch_fid() -> None:
    # 10 samples in 32 dimensions: both covariances have rank 9.
    stats = random_stats(5, n=10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = fid_score.calculate_frechet_distance(*stats)
        assert frechet_distance(*stats) == pytest.approx(ref, abs=1e-6)


def test_frechet_distance_eps_fallback_equals_pytorch_fid() -> None:
    # sigma1 sigma2 is nilpotent, so sqrtm is infinite and both retry with eps on the diagonals.
    s1, s2 = np.diag([1.0, 0.0]), np.array([[0.0, 1e-7], [1e-7, 0.0]])
    mu1, mu2 = np.zeros(2), np.array([0.5, -1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = fid_score.calculate_frechet_distance(mu1, s1, mu2, s2)
    with pytest.warns(RuntimeWarning, match=r"adding 1e-06 to their diagonals"):
        ours = frechet_distance(mu1, s1, mu2, s2)
    assert ours == pytest.approx(ref, abs=1e-6)
    assert ours == pytest.approx(1.25 + 1.0, abs=1e-2)


def test_frechet_distance_analytic_and_zero() -> None:
    # Diagonal covariances: d^2 = |dmu|^2 + sum (sqrt(a) - sqrt(b))^2.
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(5.0 + 1.0 + 1.0, abs=1e-12)
    mu, sigma, _, _ = random_stats(3, n=200)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-8


def test_frechet_distance_bad_input() -> None:
    with pytest.raises(MetricsError, match=r"imaginary component 1 "):
        frechet_distance(np.zeros(4), np.eye(4), np.zeros(4), -np.eye(4))
    with pytest.raises(MetricsError, match=r"mean vectors differ in length: \(4,\) vs \(3,\)"):
        frechet_distance(np.zeros(4), np.eye(4), np.zeros(3), np.eye(3))
    with pytest.raises(MetricsError, match=r"covariances \(4, 4\) and \(3, 3\) do not match means of length 4"):
        frechet_distance(np.zeros(4), np.eye(4), np.zeros(4), np.eye(3))


def test_compute_statistics_is_float64_mean_and_cov() -> None:
    feats = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)
    mu, sigma = compute_statistics(feats)
    assert mu.dtype == sigma.dtype == np.float64
    np.testing.assert_array_equal(mu, np.mean(feats.astype(np.float64), axis=0))
    np.testing.assert_array_equal(sigma, np.cov(feats.astype(np.float64), rowvar=False))


def test_too_few_samples_refused_unless_allowed() -> None:
    feats = np.random.default_rng(0).normal(size=(8, 2048))
    message = (
        "FID needs more images than feature dimensions: got 8, need at least 2,049 "
        "(with n <= 2048 the 2048x2048 covariance is singular and FID is meaningless; 50,000 is standard)"
    )
    with pytest.raises(MetricsError, match=re.escape(message)):
        compute_statistics(feats)
    assert compute_statistics(feats, allow_few=True)[1].shape == (2048, 2048)
    assert "meaningless" in str(check_sample_count(8, allow_few=True))


def test_sample_count_warning() -> None:
    assert check_sample_count(50_000) is None
    assert check_sample_count(10_000) == (
        "FID from 10,000 samples is biased upward (published FIDs use 50,000); "
        "compare only FIDs computed from the same number of samples"
    )
    with pytest.raises(MetricsError, match="got 2,048, need at least 2,049"):
        check_sample_count(2048)


def test_fid_against_takes_the_low_rank_route_for_few_images(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    d = 16
    many = rng.normal(size=(40, d)) @ rng.normal(size=(d, d))
    other = rng.normal(size=(55, d)) * 1.5 + 0.2
    few = many[:5]
    mu, sigma = compute_statistics(other)
    low_rank, sqrtm = fid_module.frechet_distance_low_rank, fid_module.frechet_distance
    routes: list[str] = []
    monkeypatch.setattr(fid_module, "frechet_distance_low_rank", lambda *a: routes.append("low rank") or low_rank(*a))
    monkeypatch.setattr(fid_module, "frechet_distance", lambda *a: routes.append("sqrtm") or sqrtm(*a))
    # More images than dimensions on both sides: pytorch-fid's route, equal to pytorch-fid, and the exact route agrees.
    fid, lines = fid_against(many, mu, sigma, other)
    assert routes == ["sqrtm"] and lines == [] and fid > 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert fid == pytest.approx(fid_score.calculate_frechet_distance(*compute_statistics(many), mu, sigma), abs=1e-6)
    assert fid == pytest.approx(low_rank(many, mu, sigma), rel=1e-10)
    assert fid_against(many, mu, sigma)[0] == fid  # statistics alone: the same route
    # n <= D images: the exact low-rank route, which gives an image set against itself 0.
    routes.clear()
    assert fid_against(few, mu, sigma, other) == (low_rank(few, mu, sigma), []) and routes == ["low rank"]
    routes.clear()
    assert abs(fid_against(few, *compute_statistics(few, allow_few=True), few)[0]) < 1e-10 and routes == ["low rank"]
    # n <= D reference images (their features known): the low-rank route on that side, FID being symmetric.
    routes.clear()
    fid, _ = fid_against(many, *compute_statistics(few, allow_few=True), few)
    assert routes == ["low rank"] and fid == pytest.approx(low_rank(few, *compute_statistics(many)), rel=1e-12)


def test_fid_against_reports_numerical_warnings() -> None:
    # sigma1 sigma2 nilpotent (see above): the eps retry becomes a warning line, not a Python warning.
    feats = np.array([[1.0, 0.0], [-1.0, 0.0], [0.5, 0.0], [-0.5, 0.0]]) * np.sqrt(6 / 5)  # covariance diag(1, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fid, lines = fid_against(feats, np.array([0.5, -1.0]), np.array([[0.0, 1e-7], [1e-7, 0.0]]), None)
    assert "FID: singular product of covariances; adding 1e-06 to their diagonals" in lines  # scipy's sqrtm warns too
    assert all(line.startswith("FID: ") and not line.startswith("FID: FID") for line in lines)
    assert fid == pytest.approx(1.25 + 1.0, abs=1e-2)


def test_check_fid_count_names_the_flag() -> None:
    with pytest.raises(MetricsError, match=r"^reference images: FID needs more images .* pass --allow-few to compute it anyway"):
        check_fid_count(100, "reference images", allow_few=False)
    assert "meaningless" in str(check_fid_count(100, "reference images", allow_few=True))
    with pytest.raises(MetricsError, match="FID needs at least 2 evaluated images; got 1"):
        check_fid_count(1, "evaluated images", allow_few=True)
    assert check_fid_count(50_000, "evaluated images", allow_few=False) is None


# ----------------------------------------------------------------------------------------------
# FID's standard error: a bootstrap over the scored images, the reference fixed.


def gaussian(d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fixed random covariance factor L [d, d] (covariance L L^T, well conditioned) and a reference set of 5000 draws."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, d)) / np.sqrt(d)
    factor = np.linalg.cholesky(a @ a.T + 0.1 * np.eye(d))
    return factor, rng.normal(size=(5000, d)) @ factor.T


# Each route: D x D Gram in blocks of rows (n = 8000) and in one (300); r x r of Y's rows (80); r x r under sigma (40).
@pytest.mark.parametrize("n", [8000, 300, 80, 40])
def test_bootstrap_fids_are_the_fids_of_the_resamples(n: int) -> None:
    d = 64
    factor, ref = gaussian(d)
    mu, sigma = compute_statistics(ref)
    x = np.random.default_rng(1).normal(size=(n, d)) @ factor.T + 0.1
    fids = bootstrap_fids(x, mu, sigma, 4, np.random.default_rng(5))
    # The documented draw: resample b is rows rng.integers(0, n, size=(resamples, n))[b].
    rows = np.random.default_rng(5).integers(0, n, size=(4, n))
    if n > d:
        direct = [frechet_distance(*compute_statistics(x[r]), mu, sigma) for r in rows]
    else:
        direct = [frechet_distance_low_rank(x[r], mu, sigma) for r in rows]
    np.testing.assert_allclose(fids, direct, rtol=1e-7)
    assert len(set(fids.tolist())) == 4  # four different resamples
    np.testing.assert_array_equal(fids, bootstrap_fids(x, mu, sigma, 4, np.random.default_rng(5)))


def test_bootstrap_std_matches_the_spread_over_sample_sets() -> None:
    # FID's maths does not depend on the dimension: 64 keeps 20 independent sets fast.
    d, n, sets = 64, 500, 20
    factor, ref = gaussian(d)
    mu, sigma = compute_statistics(ref)

    def draw(seed: int) -> np.ndarray:
        """n features of a fixed Gaussian 0.3 away from the reference in every coordinate."""
        return np.random.default_rng(seed).normal(size=(n, d)) @ factor.T + 0.3

    spread = np.std([frechet_distance(*compute_statistics(draw(100 + s)), mu, sigma) for s in range(sets)], ddof=1)
    boot = np.std(bootstrap_fids(draw(7), mu, sigma, 20, np.random.default_rng(0)), ddof=1)
    assert 0.5 < boot / spread < 2.0, (boot, spread)
    # Four times the images, half the spread: the bootstrap follows the sample count.
    more = np.random.default_rng(8).normal(size=(4 * n, d)) @ factor.T + 0.3
    boot_more = np.std(bootstrap_fids(more, mu, sigma, 20, np.random.default_rng(0)), ddof=1)
    assert 0.3 < boot_more / boot < 0.7


def test_bootstrap_bad_input() -> None:
    with pytest.raises(MetricsError, match=r"do not match features of dimension 4"):
        bootstrap_fids(np.zeros((5, 4)), np.zeros(3), np.eye(3), 2, np.random.default_rng(0))
    for n in (5, 2):  # the two routes: more rows than dimensions, and fewer
        with pytest.raises(MetricsError, match=r"reference covariance is not positive semi-definite"):
            bootstrap_fids(np.random.default_rng(0).normal(size=(n, 3)), np.zeros(3), -np.eye(3), 2, np.random.default_rng(0))


def test_metric_options_refuse_unusable_settings() -> None:
    with pytest.raises(MetricsError, match=r"--fid-bootstrap must be 0 \(no std\) or at least 2 resamples; got 1"):
        MetricOptions(fid_bootstrap=1)
    with pytest.raises(MetricsError, match=r"--kid-subsets must be at least 1; got 0"):
        MetricOptions(kid_subsets=0)
    with pytest.raises(MetricsError, match=r"--kid-subset-size must be at least 2 \(MMD needs pairs\); got 1"):
        MetricOptions(kid_subset_size=1)


# ----------------------------------------------------------------------------------------------
# The registry: one entry per metric, each computing its figures from the inputs it names.


def test_registry_entries_carry_everything() -> None:
    assert list(METRICS) == ["fid", "is", "bpd", "kid"]
    for name, metric in METRICS.items():
        assert metric.name == name != "provenance"  # "provenance" is the summary's other key
        assert metric.description and "\n" not in metric.description
        assert metric.needs and metric.needs <= set(NEEDS)
    assert (METRICS["fid"].needs, METRICS["is"].needs, METRICS["bpd"].needs) == ({IMAGES, REFERENCE}, {IMAGES}, {LIKELIHOOD})
    assert METRICS["kid"].needs == {IMAGES, REFERENCE_FEATURES}


def test_registry_imports_no_torch() -> None:
    # `diffuse evaluate --help` lists METRICS: the registry, its entries and the package must load without them.
    code = ("import sys\nfrom diffusers_cli.engine.metrics import METRICS, check_metrics\ncheck_metrics(list(METRICS))\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'numpy', 'scipy', 'PIL', 'pytorch_fid'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    # The names that need them still come from the package, from their modules.
    import diffusers_cli.engine.metrics as package

    assert [name for name in package.__all__ if getattr(package, name) is None] == []
    assert package.fid_against is fid_module.fid_against and package.load_inception is load_inception
    # A submodule named like a lazy name would shadow it once imported.
    assert not {p.stem for p in SRC.glob("*.py")} & set(package.__all__)


def test_check_metrics_orders_and_refuses() -> None:
    assert list(check_metrics(["kid", "bpd", "is", "fid"])) == ["fid", "is", "bpd", "kid"]
    assert check_metrics(["is"]) == {"is": METRICS["is"]}
    with pytest.raises(MetricsError, match=r"unknown metric 'prd'; use a comma-separated list of fid, is, bpd, kid \(e\.g\. --metrics fid,is\)"):
        check_metrics(["fid", "prd"])
    with pytest.raises(MetricsError, match="no metric asked for; pass --metrics with some of fid, is, bpd, kid"):
        check_metrics([])


def test_metrics_compute_their_figures() -> None:
    rng = np.random.default_rng(0)
    feats, ref = rng.normal(size=(30, 8)), rng.normal(size=(40, 8)) + 0.5
    logits = rng.normal(scale=3.0, size=(23, 1008))
    mu, sigma = compute_statistics(ref)
    inputs = Inputs(MetricOptions(is_splits=5), feats, logits, ReferenceStatistics(mu, sigma, ref),
                    LikelihoodTable(np.array([[3.0, 4.0, 5.0], [3.5, 4.5, 4.0]]), "shapes test at 8x8"))
    fid = METRICS["fid"].compute(replace(inputs, options=MetricOptions(is_splits=5, fid_bootstrap=0)))
    assert fid.values == {"fid": frechet_distance(*compute_statistics(feats), mu, sigma), "std": None, "std_method": None,
                          "bootstrap": 0} and fid.warnings == ()
    assert METRICS["fid"].describe(fid.values, "30 images", "ref") == f"FID {fid.values['fid']:.4f}  (30 images vs ref)"
    # By default its std is that of 20 bootstrap resamples of the scored features (seeded by the options).
    boot = METRICS["fid"].compute(inputs).values
    assert boot["fid"] == fid.values["fid"] and (boot["std_method"], boot["bootstrap"]) == ("bootstrap", 20)
    assert boot["std"] == pytest.approx(np.std(bootstrap_fids(feats, mu, sigma, 20, np.random.default_rng(0)), ddof=1), rel=1e-12)
    assert METRICS["fid"].describe(boot, "30 images", "ref") == (
        f"FID {boot['fid']:.4f} +- {boot['std']:.4f}  (bootstrap over 20 resamples; 30 images vs ref)")
    mean, std = inception_score(logits, splits=5)
    assert METRICS["is"].compute(inputs).values == {"mean": mean, "std": std, "std_method": "splits", "splits": 5}
    assert METRICS["bpd"].compute(inputs).values == {
        "mean": 4.0, "std": pytest.approx(0.0), "se": pytest.approx(np.std([3.25, 4.25, 4.5], ddof=1) / 3**0.5), "per_run": [4.0, 4.0], "runs": 2, "examples": 3,
        "data": "shapes test at 8x8"}
    assert METRICS["bpd"].describe(METRICS["bpd"].compute(inputs).values, "", None) == (
        "bits/dim 4.0000 +- 0.0000  (std over 2 run(s); 3 examples of shapes test at 8x8)")
    # Too few images for the splits: refused before any work, or (--allow-few) one split with a warning.
    with pytest.raises(MetricsError, match=r"Inception Score in 5 splits needs at least 5 images; got 4 .*--allow-few"):
        METRICS["is"].check("evaluated images", 4, MetricOptions(is_splits=5))
    few = MetricOptions(allow_few=True, is_splits=30)
    assert "Inception Score of 23 images in one split" in str(METRICS["is"].check("evaluated images", 23, few))
    assert METRICS["is"].compute(replace(inputs, options=few)).values == {
        "mean": inception_score(logits, 1)[0], "std": 0.0, "std_method": "splits", "splits": 1}


# ----------------------------------------------------------------------------------------------
# Inception Score.


def direct_inception_score(logits: np.ndarray, splits: int) -> tuple[float, float]:
    """openai/improved-gan's computation, written out naively."""
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    preds = e / e.sum(axis=1, keepdims=True)
    n, scores = len(preds), []
    for i in range(splits):
        part = preds[i * n // splits : (i + 1) * n // splits]
        kl = part * (np.log(part) - np.log(np.mean(part, axis=0, keepdims=True)))
        scores.append(np.exp(np.mean(np.sum(kl, axis=1))))
    return float(np.mean(scores)), float(np.std(scores))


def test_inception_score_equals_direct_computation() -> None:
    logits = np.random.default_rng(0).normal(scale=3.0, size=(53, 1008))  # 53: splits of unequal size
    mean, std = inception_score(logits, splits=5)
    ref_mean, ref_std = direct_inception_score(logits, 5)
    assert mean == pytest.approx(ref_mean, rel=1e-10)
    assert std == pytest.approx(ref_std, rel=1e-8)
    assert 1.0 < mean < 1008.0 and std > 0
    assert inception_score(torch.from_numpy(logits).float(), splits=5)[0] == pytest.approx(ref_mean, rel=1e-5)


def test_inception_score_extremes() -> None:
    assert inception_score(np.zeros((20, 1008)), splits=2) == (pytest.approx(1.0, abs=1e-12), pytest.approx(0.0, abs=1e-12))
    # Perfectly confident predictions spread evenly over K classes in every split: IS = K.
    k = 10
    confident = np.full((100, k), -1e4)
    confident[np.arange(100), np.arange(100) % k] = 1e4
    mean, std = inception_score(confident, splits=10)
    assert mean == pytest.approx(k, rel=1e-12) and std == pytest.approx(0.0, abs=1e-9)
    over_all = np.full((1008, 1008), -1e4)
    np.fill_diagonal(over_all, 1e4)
    assert inception_score(over_all, splits=1)[0] == pytest.approx(1008.0, rel=1e-12)


def test_inception_score_bad_input() -> None:
    with pytest.raises(MetricsError, match="Inception Score with 10 splits needs at least 10 samples; got 4"):
        inception_score(np.zeros((4, 1008)))
    with pytest.raises(MetricsError, match=r"logits \[N, classes >= 2\]; got shape \(1008,\)"):
        inception_score(np.zeros(1008))


# ----------------------------------------------------------------------------------------------
# Kernel Inception Distance.


def direct_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased MMD^2 under k(a, b) = (a.b / d + 1)^3, written out pair by pair."""
    m, d = x.shape

    def k(a: np.ndarray, b: np.ndarray) -> float:
        return (float(np.dot(a, b)) / d + 1.0) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m)) - sum(k(x[i], x[i]) for i in range(m))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m)) - sum(k(y[i], y[i]) for i in range(m))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    return xx / (m * (m - 1)) + yy / (m * (m - 1)) - 2 * xy / m**2


def test_kid_equals_the_direct_estimator() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 2, size=(25, 8)), rng.uniform(0, 2, size=(25, 8)) + 0.2
    assert mmd2_unbiased(x, y) == pytest.approx(direct_mmd2(x, y), rel=1e-12)
    # Subsets as large as both sets: every subset is the whole of both, computed once.
    assert kid_values(x, y, np.random.default_rng(0), subsets=5, subset_size=1000).tolist() == [pytest.approx(direct_mmd2(x, y), rel=1e-12)]
    # Subsets of 12 of 25 and of 40: the documented draws, scored side first, without replacement.
    z = rng.uniform(0, 2, size=(40, 8))
    values = kid_values(x, z, np.random.default_rng(3), subsets=4, subset_size=12)
    draws = np.random.default_rng(3)
    direct = []
    for _ in range(4):
        a = x[draws.choice(25, 12, replace=False)]
        direct.append(direct_mmd2(a, z[draws.choice(40, 12, replace=False)]))
    np.testing.assert_allclose(values, direct, rtol=1e-12)
    # A side no larger than the subsets is whole in each (not drawn); only the other side's rows are.
    few = x[:12]
    for scored, ref in ((few, z), (z, few)):
        draws = np.random.default_rng(4)
        expected = [direct_mmd2(few, z[draws.choice(40, 12, replace=False)]) for _ in range(3)]
        np.testing.assert_allclose(kid_values(scored, ref, np.random.default_rng(4), subsets=3, subset_size=100), expected, rtol=1e-10)
    # The metric: mean and std (ddof 0, as torch-fidelity) of those, with the subsets' count and size.
    options = MetricOptions(kid_subsets=4, kid_subset_size=12, seed=3)
    figures = METRICS["kid"].compute(Inputs(options, x, None, ReferenceStatistics(*compute_statistics(z), z)))
    assert figures.values == {"mean": pytest.approx(np.mean(direct), rel=1e-12), "std": pytest.approx(np.std(direct), rel=1e-9),
                              "std_method": "subsets", "subsets": 4, "subset_size": 12}
    v = figures.values
    assert METRICS["kid"].describe(v, "25 images", "ref") == (
        f"KID {v['mean']:.6f} +- {v['std']:.6f}  (std over 4 subset(s) of 12; 25 images vs ref)")


def test_kid_near_zero_for_one_distribution_and_positive_for_two() -> None:
    d, n = 32, 1500
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)

    def draw(shift: float) -> np.ndarray:
        """Non-negative, correlated features (pool3 features are averages of ReLUs)."""
        return np.abs(rng.normal(size=(n, d)) @ mix + shift)

    ref, same, shifted = draw(0.0), draw(0.0), draw(0.5)
    options = MetricOptions(kid_subsets=20, kid_subset_size=500)
    stats = ReferenceStatistics(*compute_statistics(ref), ref)
    null = METRICS["kid"].compute(Inputs(options, same, None, stats)).values
    alt = METRICS["kid"].compute(Inputs(options, shifted, None, stats)).values
    assert abs(null["mean"]) < 3 * null["std"]
    assert alt["mean"] > 5 * alt["std"] > 0 and alt["mean"] > 20 * abs(null["mean"])
    # Reproducible with its seed; another seed draws other subsets.
    assert METRICS["kid"].compute(Inputs(options, same, None, stats)).values == null
    other = METRICS["kid"].compute(Inputs(replace(options, seed=1), same, None, stats)).values
    assert other["mean"] != null["mean"]


def test_kid_checks_counts_and_reference_features() -> None:
    kid, options = METRICS["kid"], MetricOptions()
    assert kid.check("evaluated images", 1000, options) is None
    assert kid.check("reference features", 50_000, options) is None
    assert kid.check("evaluated images", 300, options) == (
        "KID: 300 evaluated images, fewer than the subset size 1,000: subsets hold at most 300 (all of them); "
        "compare KIDs only at equal subset sizes")
    assert kid.check("evaluated images", 300, MetricOptions(kid_subset_size=300)) is None
    with pytest.raises(MetricsError, match="KID needs at least 2 evaluated images; got 1"):
        kid.check("evaluated images", 1, options)
    # A pytorch-fid statistics file offers no features: refused, saying what to pass instead.
    with pytest.raises(MetricsError) as err:
        kid.check("reference features", 0, options)
    assert str(err.value) == NO_REFERENCE_FEATURES and "\n" not in NO_REFERENCE_FEATURES
    assert "--reference" in NO_REFERENCE_FEATURES and "--save-reference-stats" in NO_REFERENCE_FEATURES
    feats = np.random.default_rng(0).normal(size=(10, 4))
    with pytest.raises(MetricsError, match=re.escape(NO_REFERENCE_FEATURES)):
        kid.compute(Inputs(options, feats, None, ReferenceStatistics(*compute_statistics(feats), None)))
    with pytest.raises(MetricsError, match=r"same D on both sides; got \(10, 4\) and \(10, 3\)"):
        kid_values(feats, feats[:, :3], np.random.default_rng(0))
    assert check_kid_count(5, "reference features", subset_size=5) is None


# ----------------------------------------------------------------------------------------------
# The network and its weights, offline.


def test_features_equal_pytorch_fid(model: InceptionV3Features, made: dict[str, object], image_dir: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # pytorch-fid's own network and loader, its download replaced by the same made state dict.
    monkeypatch.setattr(pf_inception, "load_state_dict_from_url", lambda *a, **k: made["state"])
    ref_model = pf_inception.InceptionV3([3], use_fid_inception=True)
    files = sorted(image_dir.glob("*.png"))
    ref = fid_score.get_activations(files, ref_model, batch_size=8, dims=2048, device="cpu", num_workers=0)

    pool, logits = folder_features(model, image_dir, batch_size=8)
    assert pool.shape == (8, 2048) and logits.shape == (8, 1008) and pool.dtype == np.float64
    assert ref.std() > 0.05  # the made weights give features worth comparing
    np.testing.assert_allclose(pool, ref, rtol=0, atol=1e-5)
    fc_w = made["state"]["fc.weight"].double().numpy()
    np.testing.assert_allclose(logits, ref @ fc_w.T, rtol=1e-4, atol=1e-4)
    mu, sigma = compute_statistics(pool, allow_few=True)
    np.testing.assert_allclose(mu, np.mean(ref, axis=0), atol=1e-6)
    np.testing.assert_allclose(sigma, np.cov(ref, rowvar=False), atol=1e-6)


def test_model_provenance_and_greyscale(model: InceptionV3Features, made: dict[str, object]) -> None:
    info = model.weights_info
    assert info is not None and info.origin == "argument" and info.path == made["safetensors"]
    assert info.sha256 == sha256_file(made["safetensors"]) and info.source_sha256 is None and not info.official
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    grey = torch.rand(1, 1, 24, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = model(grey), model(grey.repeat(1, 3, 1, 1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(MetricsError, match=r"\[B, 1 or 3, H, W\]; got a tensor of shape \(2, 2, 8, 8\)"):
        model(torch.zeros(2, 2, 8, 8))


def test_missing_weights_say_where_to_put_them(hub: Path) -> None:
    with pytest.raises(MetricsError) as err:
        load_inception()
    message = str(err.value)
    assert "\n" not in message
    for part in (FID_WEIGHTS_NAME, FID_WEIGHTS_SHA256, str(hub / FID_WEIGHTS_NAME), "--inception-weights",
                 WEIGHTS_ENV, f"or pass --download to fetch it from {FID_WEIGHTS_URL}"):
        assert part in message
    assert list(hub.iterdir()) == []  # nothing fetched without --download
    with pytest.raises(MetricsError, match=re.escape(f"Inception weights not found at {hub / 'nope.pth'} (from the given path); put")):
        load_inception(hub / "nope.pth")


def test_hub_cache_safetensors_then_env_then_argument(hub: Path, made: dict[str, object],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    beside = hub / FID_WEIGHTS_NAME.replace(".pth", ".safetensors")
    shutil.copy(made["safetensors"], beside)
    net = load_inception()
    assert net.weights_info.origin == "torch hub cache" and net.weights_info.path == beside
    assert_same_state(net, made["state"])
    # The environment variable beats the hub cache (a folder holding the file works too) ...
    other = hub.parent / "elsewhere"
    other.mkdir()
    shutil.copy(made["safetensors"], other / beside.name)
    monkeypatch.setenv(WEIGHTS_ENV, str(other))
    assert locate_weights() == (other / beside.name, f"${WEIGHTS_ENV}")
    # ... and an explicit path beats both.
    assert locate_weights(made["safetensors"]) == (made["safetensors"], "argument")


def test_made_pth_in_hub_cache_refused_by_checksum(hub: Path, made: dict[str, object]) -> None:
    shutil.copy(made["pth"], hub / FID_WEIGHTS_NAME)
    digest = sha256_file(made["pth"])
    with pytest.raises(MetricsError, match=f"has SHA-256 {digest}, not {FID_WEIGHTS_SHA256} \\({re.escape(FID_WEIGHTS_NAME)}\\)"):
        load_inception()


def test_verified_pth_loads_with_weights_only(made: dict[str, object], monkeypatch: pytest.MonkeyPatch) -> None:
    digest = sha256_file(made["pth"])
    monkeypatch.setattr(weights_module, "FID_WEIGHTS_SHA256", digest)
    calls = []
    real_load = torch.load

    def spy(*args: object, **kwargs: object) -> object:
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    net = load_inception(made["pth"])
    assert calls == [{"map_location": "cpu", "weights_only": True}]
    assert_same_state(net, made["state"])
    assert net.weights_info.sha256 == digest and net.weights_info.official


EXECUTED: list[str] = []


def _record(tag: str) -> None:
    """Stands for code a malicious pickle would run."""
    EXECUTED.append(tag)


class Payload:
    """Unpickling this calls _record: weights_only must refuse it."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return _record, ("executed",)


def test_pickle_with_code_refused_even_with_matching_checksum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    evil = tmp_path / "evil.pth"
    torch.save({"fc.weight": torch.zeros(2), "x": Payload()}, evil)
    monkeypatch.setattr(weights_module, "FID_WEIGHTS_SHA256", sha256_file(evil))
    with pytest.raises(MetricsError, match=r"could not be loaded as a plain state dict of tensors"):
        load_inception(evil)
    assert EXECUTED == []


def test_convert_weights_round_trip(made: dict[str, object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    digest = sha256_file(made["pth"])
    monkeypatch.setattr(weights_module, "FID_WEIGHTS_SHA256", digest)
    out = tmp_path / "sub" / "inception.safetensors"
    info = convert_weights(made["pth"], out)
    assert info.path == out and info.source_sha256 == digest and info.official
    assert info.sha256 == sha256_file(out) and sorted(p.name for p in out.parent.iterdir()) == ["inception.safetensors"]
    state, _ = read_weights(out)
    for k, v in made["state"].items():
        assert torch.equal(state[k], v), k


def test_wrong_weights_files(tmp_path: Path, made: dict[str, object]) -> None:
    tiny = tmp_path / "tiny.safetensors"
    save_file({"foo.weight": torch.zeros(3)}, str(tiny))
    with pytest.raises(MetricsError, match=r"does not fit pytorch-fid's FID Inception network: missing 472 key\(s\): "
                                           r"Conv2d_1a_3x3\.conv\.weight, .* \.\.\.; unexpected 1 key\(s\): foo\.weight; put"):
        load_inception(tiny)
    state = dict(made["state"])
    del state["fc.bias"]
    state["fc.weight"] = torch.zeros(10, 2048)
    state["extra.weight"] = torch.zeros(1)
    expected = ("missing 1 key(s): fc.bias; unexpected 1 key(s): extra.weight; "
                "wrong shape in 1 key(s): fc.weight (10, 2048) (expected (1008, 2048))")
    with pytest.raises(MetricsError, match=re.escape(expected)):
        check_state_dict(InceptionV3Features(), state, tmp_path / "x")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x07not safetensors at all")
    with pytest.raises(MetricsError, match=r"garbage\.safetensors is not a valid \.safetensors file"):
        load_inception(garbage)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder without logging each request to stderr."""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        """Say nothing."""


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served over HTTP on 127.0.0.1 (a thread of this process): (the folder, its base URL)."""
    folder = tmp_path / "served"
    folder.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_download_verifies_then_publishes(hub: Path, made: dict[str, object], served: tuple[Path, str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    folder, base = served
    shutil.copy(made["pth"], folder / FID_WEIGHTS_NAME)
    digest = sha256_file(made["pth"])
    monkeypatch.setattr(weights_module, "FID_WEIGHTS_SHA256", digest)  # the made file stands for pytorch-fid's
    monkeypatch.setattr(weights_module, "FID_WEIGHTS_URL", f"{base}/{FID_WEIGHTS_NAME}")
    net = load_inception(download=True)
    assert net.weights_info.downloaded and net.weights_info.origin == "downloaded to the torch hub cache"
    assert net.weights_info.path == hub / FID_WEIGHTS_NAME and net.weights_info.sha256 == digest
    assert_same_state(net, made["state"])
    assert [p.name for p in hub.iterdir()] == [FID_WEIGHTS_NAME]  # no temporary file left
    # Found in the cache next time: no download.
    again = load_inception(download=True)
    assert again.weights_info.origin == "torch hub cache" and not again.weights_info.downloaded


def test_download_from_a_file_url(tmp_path: Path, made: dict[str, object]) -> None:
    dest = tmp_path / "cache" / FID_WEIGHTS_NAME
    out = download_weights(dest, url=Path(made["pth"]).as_uri(), sha256=sha256_file(made["pth"]))
    assert out == dest and dest.read_bytes() == Path(made["pth"]).read_bytes()
    assert [p.name for p in dest.parent.iterdir()] == [FID_WEIGHTS_NAME]


def test_download_with_a_wrong_hash_leaves_nothing(hub: Path, made: dict[str, object], served: tuple[Path, str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    folder, base = served
    shutil.copy(made["pth"], folder / FID_WEIGHTS_NAME)
    monkeypatch.setattr(weights_module, "FID_WEIGHTS_URL", f"{base}/{FID_WEIGHTS_NAME}")
    digest = sha256_file(made["pth"])
    with pytest.raises(MetricsError) as err:
        load_inception(download=True)  # the real checksum, which the made file does not have
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"the file downloaded from {base}/{FID_WEIGHTS_NAME} has SHA-256 {digest}, not {FID_WEIGHTS_SHA256}")
    assert "it was deleted and nothing was saved" in message and "--download" not in message
    assert list(hub.iterdir()) == []
    # A missing file on the server, and a server that is not there: one line each, nothing left.
    monkeypatch.setattr(weights_module, "FID_WEIGHTS_URL", f"{base}/nope.pth")
    with pytest.raises(MetricsError, match=rf"cannot download the Inception weights from {re.escape(base)}/nope\.pth: HTTP Error 404"):
        load_inception(download=True)
    with pytest.raises(MetricsError, match=r"cannot download the Inception weights from file:///no/such/file\.pth: "):
        download_weights(hub / FID_WEIGHTS_NAME, url="file:///no/such/file.pth")
    assert list(hub.iterdir()) == []
    # A named file that is missing is not downloaded in its place.
    with pytest.raises(MetricsError, match="Inception weights not found at"):
        load_inception(hub / "nope.pth", download=True)


def test_only_torch_load_is_weights_only() -> None:
    lines = [ln for p in SRC.glob("*.py") for ln in p.read_text().splitlines() if "torch.load(" in ln]
    assert len(lines) == 1 and "weights_only=True" in lines[0]


# ----------------------------------------------------------------------------------------------
# Image folders and batches.


def test_folder_images(tmp_path: Path, image_dir: Path) -> None:
    assert [p.name for p in folder_images(image_dir)] == [f"img_{i}.png" for i in range(8)]
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (5, 5)).save(tmp_path / "sub" / "A.PNG")
    with pytest.raises(MetricsError, match=f"no images in {re.escape(str(tmp_path))} \\(looked for bmp, jpeg, jpg, pgm"):
        folder_images(tmp_path)
    assert [p.name for p in folder_images(tmp_path, recursive=True)] == ["A.PNG"]
    with pytest.raises(MetricsError, match="does not exist or is not a folder"):
        folder_images(tmp_path / "missing")


def test_mixed_sizes_resized_like_the_network() -> None:
    gen = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 32, 32, generator=gen), torch.rand(3, 40, 24, generator=gen)
    mixed = stack_images([a, b])
    assert mixed.shape == (2, 3, 299, 299)
    resize = torch.nn.functional.interpolate
    assert torch.equal(mixed[0], resize(a[None], size=(299, 299), mode="bilinear", align_corners=False)[0])
    # The network's own resize of a 299x299 input is the identity, so pre-resizing changes nothing.
    assert torch.equal(resize(mixed, size=(299, 299), mode="bilinear", align_corners=False), mixed)
    assert torch.equal(stack_images([a, a]), torch.stack([a, a]))


def test_bad_batches(model: InceptionV3Features, tmp_path: Path) -> None:
    with pytest.raises(MetricsError, match=re.escape("must lie in [0, 1]; got values in [-1, 1] (map [-1, 1] samples with (x + 1) / 2")):
        extract_features(model, [torch.linspace(-1, 1, 48).reshape(1, 3, 4, 4)])
    with pytest.raises(MetricsError, match="no images to compute Inception features of"):
        extract_features(model, [])
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(MetricsError, match="image .*broken.png is not a readable image"):
        folder_features(model, tmp_path)


# ----------------------------------------------------------------------------------------------
# Reference statistics files.


def test_statistics_round_trip_with_pytorch_fid(tmp_path: Path) -> None:
    mu, sigma, _, _ = random_stats(0, n=50, d=8)
    path = tmp_path / "ref.stats"  # any name: no ".npz" gets appended
    save_statistics(path, mu, sigma, num_samples=50, inception_sha256="ab12")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref.stats"]
    with np.load(path) as f:  # exactly how pytorch-fid reads a statistics file
        np.testing.assert_array_equal(f["mu"][:], mu)
        np.testing.assert_array_equal(f["sigma"][:], sigma)
    back = load_statistics(path)
    np.testing.assert_array_equal(back.mu, mu)
    np.testing.assert_array_equal(back.sigma, sigma)
    assert int(back.extra["num_samples"]) == 50 and str(back.extra["inception_sha256"]) == "ab12"
    # A file pytorch-fid wrote (np.savez_compressed) loads too, and through pytorch-fid's own path reader.
    theirs = tmp_path / "theirs.npz"
    np.savez_compressed(theirs, mu=mu, sigma=sigma)
    np.testing.assert_array_equal(load_statistics(theirs).sigma, sigma)
    ours_npz = save_statistics(tmp_path / "ours.npz", mu, sigma)
    m, s = fid_score.compute_statistics_of_path(str(ours_npz), None, 50, 8, "cpu")
    np.testing.assert_array_equal(m, mu)
    np.testing.assert_array_equal(s, sigma)


def test_bad_statistics_files(tmp_path: Path) -> None:
    text = tmp_path / "notes.npz"
    text.write_text("hello")
    with pytest.raises(MetricsError, match=r"notes\.npz is not an \.npz statistics file \(pytorch-fid format, arrays 'mu' and 'sigma'\)"):
        load_statistics(text)
    single = tmp_path / "single.npy"
    np.save(single, np.zeros(3))
    with pytest.raises(MetricsError, match="it holds a single array"):
        load_statistics(single)
    keys = tmp_path / "keys.npz"
    np.savez(keys, mu=np.zeros(3), cov=np.eye(3))
    with pytest.raises(MetricsError, match=r"lacks 'sigma' \(found: cov, mu\); expected pytorch-fid's keys 'mu' and 'sigma'"):
        load_statistics(keys)
    shapes = tmp_path / "shapes.npz"
    np.savez(shapes, mu=np.zeros(4), sigma=np.zeros((4, 3)))
    with pytest.raises(MetricsError, match=r"'mu' must be \[D\] and 'sigma' \[D, D\]; got mu \(4,\) and sigma \(4, 3\)"):
        load_statistics(shapes)
    with pytest.raises(MetricsError, match="statistics file .*missing.npz does not exist"):
        load_statistics(tmp_path / "missing.npz")


def test_statistics_with_features(tmp_path: Path) -> None:
    # Features from a float32 network are stored as float32 (nothing lost) and read back as float64.
    feats = np.random.default_rng(0).normal(size=(30, 8)).astype(np.float32).astype(np.float64)
    mu, sigma = compute_statistics(feats, allow_few=True)
    path = save_statistics(tmp_path / "ref.npz", mu, sigma, features=feats, num_samples=30)
    with np.load(path) as f:
        assert f["features"].dtype == np.float32 and sorted(f.files) == ["features", "mu", "num_samples", "sigma"]
    back = load_statistics(path)
    assert back.features is not None and back.features.dtype == np.float64 and "features" not in back.extra
    np.testing.assert_array_equal(back.features, feats)
    _, s = fid_score.compute_statistics_of_path(str(path), None, 50, 8, "cpu")  # pytorch-fid still reads it
    np.testing.assert_array_equal(s, sigma)
    # Features that float32 would round stay float64.
    fine = feats + 1e-9
    save_statistics(path, *compute_statistics(fine, allow_few=True), features=fine)
    np.testing.assert_array_equal(load_statistics(path).features, fine)
    # pytorch-fid's own files hold none.
    theirs = tmp_path / "theirs.npz"
    np.savez(theirs, mu=mu, sigma=sigma)
    assert load_statistics(theirs).features is None
    # Features that are not those of mu, or of the wrong shape, are refused.
    np.savez(theirs, mu=mu, sigma=sigma, features=feats + 1.0)
    with pytest.raises(MetricsError, match=r"'features' are not the ones 'mu' was computed from"):
        load_statistics(theirs)
    np.savez(theirs, mu=mu, sigma=sigma, features=feats[:, :4])
    with pytest.raises(MetricsError, match=r"'features' must be \[N >= 2, 8\] for 'mu' of length 8; got \(30, 4\)"):
        load_statistics(theirs)
