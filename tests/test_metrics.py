"""Tests of the metrics engine: FID/IS maths against pytorch-fid and numpy, offline Inception weights, statistics files."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import warnings
from dataclasses import replace
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
    WEIGHTS_ENV,
    InceptionV3Features,
    Inputs,
    LikelihoodTable,
    MetricOptions,
    MetricsError,
    ReferenceStatistics,
    check_fid_count,
    check_metrics,
    check_sample_count,
    check_state_dict,
    compute_statistics,
    convert_weights,
    extract_features,
    fid_against,
    folder_features,
    folder_images,
    frechet_distance,
    hub_weights_path,
    inception_score,
    load_inception,
    load_statistics,
    locate_weights,
    read_weights,
    save_statistics,
    stack_images,
)
from diffusers_cli.engine.metrics import fid as fid_module
from diffusers_cli.engine.metrics import weights as weights_module

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
# The registry: one entry per metric, each computing its figures from the inputs it names.


def test_registry_entries_carry_everything() -> None:
    assert list(METRICS) == ["fid", "is", "bpd"]
    for name, metric in METRICS.items():
        assert metric.name == name != "provenance"  # "provenance" is the summary's other key
        assert metric.description and "\n" not in metric.description
        assert metric.needs and metric.needs <= set(NEEDS)
    assert (METRICS["fid"].needs, METRICS["is"].needs, METRICS["bpd"].needs) == ({IMAGES, REFERENCE}, {IMAGES}, {LIKELIHOOD})


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
    assert list(check_metrics(["bpd", "is", "fid"])) == ["fid", "is", "bpd"]
    assert check_metrics(["is"]) == {"is": METRICS["is"]}
    with pytest.raises(MetricsError, match=r"unknown metric 'kid'; use a comma-separated list of fid, is, bpd \(e\.g\. --metrics fid,is\)"):
        check_metrics(["fid", "kid"])
    with pytest.raises(MetricsError, match="no metric asked for; pass --metrics with some of fid, is, bpd"):
        check_metrics([])


def test_metrics_compute_their_figures() -> None:
    rng = np.random.default_rng(0)
    feats, ref = rng.normal(size=(30, 8)), rng.normal(size=(40, 8)) + 0.5
    logits = rng.normal(scale=3.0, size=(23, 1008))
    mu, sigma = compute_statistics(ref)
    inputs = Inputs(MetricOptions(is_splits=5), feats, logits, ReferenceStatistics(mu, sigma, ref),
                    LikelihoodTable(np.array([[3.0, 4.0, 5.0], [3.5, 4.5, 4.0]]), "shapes test at 8x8"))
    fid = METRICS["fid"].compute(inputs)
    assert fid.values == {"fid": frechet_distance(*compute_statistics(feats), mu, sigma)} and fid.warnings == ()
    mean, std = inception_score(logits, splits=5)
    assert METRICS["is"].compute(inputs).values == {"mean": mean, "std": std, "splits": 5}
    assert METRICS["bpd"].compute(inputs).values == {
        "mean": 4.0, "std": pytest.approx(0.0), "per_run": [4.0, 4.0], "runs": 2, "examples": 3, "data": "shapes test at 8x8"}
    assert METRICS["bpd"].describe(METRICS["bpd"].compute(inputs).values, "", None) == (
        "bits/dim 4.0000 +- 0.0000  (std over 2 run(s); 3 examples of shapes test at 8x8)")
    # Too few images for the splits: refused before any work, or (--allow-few) one split with a warning.
    with pytest.raises(MetricsError, match=r"Inception Score in 5 splits needs at least 5 images; got 4 .*--allow-few"):
        METRICS["is"].check("evaluated images", 4, MetricOptions(is_splits=5))
    few = MetricOptions(allow_few=True, is_splits=30)
    assert "Inception Score of 23 images in one split" in str(METRICS["is"].check("evaluated images", 23, few))
    assert METRICS["is"].compute(replace(inputs, options=few)).values == {"mean": inception_score(logits, 1)[0], "std": 0.0, "splits": 1}


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
                 WEIGHTS_ENV, FID_WEIGHTS_URL):
        assert part in message
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
    with pytest.raises(MetricsError, match="cannot read image .*broken.png"):
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
