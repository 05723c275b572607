"""The evaluation job: FID and Inception Score of generated or given images against a reference, and bits/dim on a data split.

Every input is checked before any long work (sampling, Inception passes, ODE solves), so bad
input fails in seconds. Sampling and bits/dim are sharded across torchrun ranks; the Inception
network runs on rank 0 only.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from diffusers_cli import build
from diffusers_cli.checkpoints import read_meta
from diffusers_cli.config import EvaluateConfig
from diffusers_cli.data import DATASETS, DataError, load_dataset, resolve_name
from diffusers_cli.distributed import World, init_world, shutdown
from diffusers_cli.engine.likelihood import bits_per_dim
from diffusers_cli.engine.metrics import (
    FEATURE_DIM,
    RECOMMENDED_SAMPLES,
    InceptionV3Features,
    InceptionWeights,
    MetricsError,
    Statistics,
    check_sample_count,
    compute_statistics,
    extract_features,
    folder_images,
    frechet_distance,
    image_batches,
    inception_score,
    load_inception,
    load_statistics,
    save_statistics,
)
from diffusers_cli.engine.metrics.fid import frechet_distance_low_rank
from diffusers_cli.engine.score import ScoreModel, make_score_fn
from diffusers_cli.files import check_writable
from diffusers_cli.jobs.report import Reporter, SilentReporter
from diffusers_cli.jobs.sample import check_sampler, draw, guidance_plan, guided_score_fns
from diffusers_cli.runs import to_uint8

#: Metric names --metrics accepts, in the order results are reported.
METRICS: tuple[str, ...] = ("fid", "is", "bpd")
#: The seed of reference and bits/dim data (shapes rendering, subsets): fixed, so --seed moves only the samples.
DATA_SEED = 0
#: Keys of a statistics cache that say what it holds (besides pytorch-fid's mu and sigma).
CACHE_KEYS = ("reference", "inception_sha256")


@dataclass
class Reference:
    """The reference side of FID: a description, and statistics read from a file or images to compute them from."""

    description: str                                     # what it is, with the image count (also the cache key)
    num_samples: int | None                              # images behind the statistics (None: a file that does not say)
    batches: Callable[[], Iterator[Tensor]] | None = None  # image batches to compute statistics from
    stats: Statistics | None = None                      # statistics read from --reference or a reused cache
    cache: Path | None = None                            # where to save freshly computed statistics
    cache_path: Path | None = None                       # the --save-reference-stats file, written or reused
    reused: bool = False                                 # the statistics came from the cache


@dataclass
class EvaluateResult:
    """What an evaluation measured, and with what."""

    metrics: list[str]
    seed: int
    is_main: bool = True
    fid: float | None = None
    is_mean: float | None = None
    is_std: float | None = None
    is_splits: int | None = None
    bpd_mean: float | None = None
    bpd_std: float | None = None
    bpd_per_run: list[float] | None = None
    bpd_runs: int | None = None
    bpd_examples: int | None = None
    bpd_data: str | None = None
    num_samples: int | None = None
    images: Path | None = None
    model: Path | None = None
    sampler: str | None = None
    steps: int | None = None
    nfe: int | None = None
    guidance: float | None = None  # classifier-free guidance scale of a class-conditional model's samples
    reference: str | None = None
    reference_num_samples: int | None = None
    reference_stats: Path | None = None
    reference_stats_reused: bool = False
    weights: InceptionWeights | None = None
    warnings: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The --json summary: every figure (null where not measured) and what produced it."""
        w = self.weights
        return {
            "metrics": self.metrics, "fid": self.fid, "is_mean": self.is_mean, "is_std": self.is_std,
            "is_splits": self.is_splits, "bpd_mean": self.bpd_mean, "bpd_std": self.bpd_std,
            "bpd_runs": self.bpd_runs, "bpd_per_run": self.bpd_per_run, "bpd_examples": self.bpd_examples,
            "bpd_data": self.bpd_data, "num_samples": self.num_samples,
            "images": str(self.images) if self.images else None, "model": str(self.model) if self.model else None,
            "sampler": self.sampler, "steps": self.steps, "nfe": self.nfe, "guidance": self.guidance, "seed": self.seed,
            "reference": self.reference, "reference_num_samples": self.reference_num_samples,
            "reference_stats": str(self.reference_stats) if self.reference_stats else None,
            "reference_stats_reused": self.reference_stats_reused,
            "inception_weights": str(w.path) if w else None, "inception_sha256": w.sha256 if w else None,
            "inception_official": w.official if w else None, "inception_origin": w.origin if w else None,
            "warnings": self.warnings, "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }


# ---- checks --------------------------------------------------------------------------------


def check_metrics(names: list[str]) -> list[str]:
    """The requested metrics in canonical order; ValueError for an unknown or missing name."""
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric {unknown[0]!r}; use a comma-separated list of {', '.join(METRICS)} (e.g. --metrics fid,is)")
    if not names:
        raise ValueError(f"no metric asked for; pass --metrics with some of {', '.join(METRICS)}")
    return [m for m in METRICS if m in names]


def check_fid_count(n: int, what: str, allow_few: bool) -> str | None:
    """check_sample_count with the flag that overrides it named; returns the warning line, if any."""
    if n < 2:
        raise MetricsError(f"FID needs at least 2 {what}; got {n}")
    try:
        line = check_sample_count(n, FEATURE_DIM, allow_few)
    except MetricsError as err:
        raise MetricsError(f"{what}: {err}; pass --allow-few to compute it anyway (to test a pipeline only)") from None
    return f"{what}: {line}" if line else None


def check_is_splits(n: int, splits: int, allow_few: bool) -> tuple[int, str | None]:
    """The number of IS splits to use for n images, and a warning when there are too few images for ``splits``."""
    if n >= splits:
        return splits, None
    if not allow_few:
        raise MetricsError(
            f"Inception Score in {splits} splits needs at least {splits} images; got {n} "
            f"(use more images, lower --is-splits, or pass --allow-few to score them in one split)"
        )
    return 1, f"Inception Score of {n} images in one split ({splits} splits need {splits}): is_std is 0 and the score is not comparable"


# ---- FID -----------------------------------------------------------------------------------


def fid_against(features: np.ndarray, mu: np.ndarray, sigma: np.ndarray, ref_features: np.ndarray | None) -> tuple[float, list[str]]:
    """FID of features against reference statistics, and any numerical warnings.

    pytorch-fid's computation (the engine's frechet_distance) when both sides have more images than
    feature dimensions; the exact low-rank route when either side has no more (possible with --allow-few).
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if features.shape[0] <= features.shape[1]:
            fid = frechet_distance_low_rank(features, mu, sigma)
        elif ref_features is not None and ref_features.shape[0] <= ref_features.shape[1]:
            fid = frechet_distance_low_rank(ref_features, *compute_statistics(features))
        else:
            fid = frechet_distance(*compute_statistics(features), mu, sigma)
    return fid, [f"FID: {w.message}" for w in caught]


# ---- the reference --------------------------------------------------------------------------


def image_side(path: Path) -> int:
    """The longer side of an image file (read from its header)."""
    try:
        with Image.open(path) as img:
            return max(img.size)
    except (OSError, ValueError) as err:
        raise MetricsError(f"cannot read image {path}: {err}") from None


def dataset_batches(ds: Dataset, batch_size: int) -> Iterator[Tensor]:
    """uint8 batches [B, C, H, W] of a [-1, 1] dataset, quantised as a saved PNG would be (so they match the files)."""
    for start in range(0, len(ds), batch_size):  # type: ignore[arg-type]
        stop = min(start + batch_size, len(ds))  # type: ignore[arg-type]
        yield to_uint8(torch.stack([ds[i][0] for i in range(start, stop)]))


def tensor_batches(images: Tensor, batch_size: int) -> Iterator[Tensor]:
    """Consecutive batches of a tensor of images."""
    for start in range(0, images.shape[0], batch_size):
        yield images[start : start + batch_size]


def resolve_reference(cfg: EvaluateConfig, meta: dict[str, Any] | None, files: list[Path] | None) -> Reference:
    """The FID reference: a statistics file, a folder (read as pytorch-fid reads it) or a dataset (as training reads it)."""
    name = cfg.reference if cfg.reference is not None else (meta or {}).get("dataset")
    if name is None:
        raise ValueError("FID needs a reference: pass --reference with a dataset name (e.g. cifar10), a folder of images or a statistics .npz")
    path = Path(str(name)).expanduser()
    if path.is_file() or path.suffix.lower() == ".npz":
        stats = load_statistics(path)
        count, of = stats.extra.get("num_samples"), stats.extra.get("reference")
        desc = f"statistics {path}" + (f" of {of}" if of is not None else "")
        return Reference(desc, int(count) if count is not None else None, stats=stats)
    key = str(name).strip().lower()
    if path.is_dir() and key not in DATASETS:
        ref_files = folder_images(path, recursive=True)
        return Reference(f"images in {path.resolve()} ({len(ref_files):,})", len(ref_files),
                         batches=lambda: image_batches(ref_files, cfg.batch_size))
    try:
        canonical, _ = resolve_name(str(name))
    except DataError:
        raise ValueError(
            f"unknown reference {str(name)!r}: use a dataset name ({', '.join(DATASETS)}), a folder of images, or a statistics .npz file"
        ) from None
    size = cfg.image_size or (meta or {}).get("image_size") or (image_side(files[0]) if files else None)
    if size is None:
        raise ValueError(f"pass --image-size to say at what resolution to read the reference dataset {canonical}")
    channels = (meta or {}).get("channels") if meta and meta.get("dataset") == canonical else None
    ds, info = load_dataset(canonical, size, cfg.data_dir, cfg.split, DATA_SEED, cfg.reference_examples, channels, cfg.download)
    where = f" from {Path(cfg.data_dir).resolve() if cfg.data_dir else 'data'}" if canonical == "folder" else ""
    desc = f"{info.name}{where} {cfg.split} at {size}x{size} ({len(ds):,})"  # type: ignore[arg-type]
    return Reference(desc, len(ds), batches=lambda: dataset_batches(ds, cfg.batch_size))  # type: ignore[arg-type]


def attach_cache(ref: Reference, cache: Path, weights: InceptionWeights) -> str | None:
    """Reuse ``cache`` if it holds this reference's statistics under these Inception weights, else mark it to be (re)written.

    Returns a line to tell the user what happened. A file at ``cache`` that does not record its
    reference and weights was not written by diffuse evaluate, and is never overwritten.
    """
    if ref.batches is None:
        raise ValueError(f"--save-reference-stats caches statistics computed from a dataset or folder; the reference is already {ref.description}")
    ref.cache_path = cache
    if not cache.is_file():
        check_writable(cache)  # a folder, or a place that cannot be written, fails here
        ref.cache = cache
        return None
    stats = load_statistics(cache)
    recorded = tuple(str(stats.extra[k]) if k in stats.extra else "" for k in CACHE_KEYS)
    if not all(recorded):
        raise ValueError(
            f"{cache} exists but was not written by diffuse evaluate (it records no reference or Inception weights); "
            f"pass it as --reference {cache} to use it, or choose another --save-reference-stats path"
        )
    if recorded == (ref.description, weights.sha256):
        ref.stats, ref.reused = stats, True
        return f"reusing reference statistics from {cache} ({ref.description})"
    check_writable(cache)
    ref.cache = cache
    return f"recomputing {cache}: it holds {recorded[0]} under Inception weights {recorded[1][:12]}, not {ref.description} under {weights.sha256[:12]}"


def reference_statistics(ref: Reference, net: InceptionV3Features, weights: InceptionWeights,
                         reporter: Reporter) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(mu, sigma, features or None) of the reference; writes the cache when one is due."""
    if ref.stats is not None:
        return ref.stats.mu, ref.stats.sigma, None
    assert ref.batches is not None and ref.num_samples is not None
    features, _ = extract_features(net, ref.batches(), progress_for(reporter, ref.num_samples, f"Inception features of {ref.description}"))
    reporter.finish()
    mu, sigma = compute_statistics(features, allow_few=True)
    if ref.cache is not None:
        save_statistics(ref.cache, mu, sigma, num_samples=features.shape[0], reference=ref.description,
                        inception_sha256=weights.sha256, inception_official=weights.official)
    return mu, sigma, features


def progress_for(reporter: Reporter, total: int, description: str) -> Callable[[int], None]:
    """A progress callback for extract_features (images done so far) that drives ``reporter``."""
    reporter.start(total, description)
    done = [0]

    def progress(n: int) -> None:
        reporter.advance(n - done[0])
        done[0] = n

    return progress


# ---- bits/dim ------------------------------------------------------------------------------


def bpd_generator(seed: int, run: int, batch: int, device: torch.device) -> torch.Generator:
    """The generator of bits/dim batch ``batch`` in run ``run``: a pure function of its arguments, so sharding changes nothing."""
    # SeedSequence takes non-negative integers; the mask maps a negative --seed to one.
    state = np.random.SeedSequence([seed & (2**64 - 1), run, batch]).generate_state(1, dtype=np.uint64)[0]
    return build.make_generator(int(state) >> 1, device)


def bpd_table(model: ScoreModel, data: Dataset, cfg: EvaluateConfig, device: torch.device, world: World,
              reporter: Reporter) -> np.ndarray:
    """Bits/dim [runs, examples]: batch b of every run on rank b mod world size, then summed across ranks."""
    n = len(data)  # type: ignore[arg-type]
    bs = cfg.batch_size
    mine = [b for b in range(-(-n // bs)) if b % world.size == world.rank]
    table = torch.zeros(cfg.bpd_runs, n, dtype=torch.float64, device=device)
    score_fn = make_score_fn(model)
    reporter.start(len(mine) * cfg.bpd_runs, f"bits/dim of {n} examples, {cfg.bpd_runs} run(s)")
    for b in mine:
        lo, hi = b * bs, min(n, (b + 1) * bs)
        x = torch.stack([data[i][0] for i in range(lo, hi)]).to(device)
        for r in range(cfg.bpd_runs):
            bpd = bits_per_dim(model.sde, score_fn, x, data_range="[-1,1]", generator=bpd_generator(cfg.seed, r, b, device),
                               probe=cfg.bpd_probe, rtol=cfg.bpd_rtol, atol=cfg.bpd_atol)
            table[r, lo:hi] = bpd.double()
            reporter.advance(1, bpd=float(bpd.mean()))
    reporter.finish()
    if world.distributed:
        # Each entry was written by exactly one rank; the others hold zeros there.
        dist.all_reduce(table)
    return table.cpu().numpy()


# ---- the job -------------------------------------------------------------------------------


def evaluate(cfg: EvaluateConfig, reporter: Reporter | None = None) -> EvaluateResult:
    """Run ``diffuse evaluate``: the requested metrics (on rank 0; other ranks return after their share of the work)."""
    reporter = reporter or SilentReporter()
    metrics = check_metrics(cfg.metrics)
    device = build.resolve_device(cfg.device)
    world, device = init_world(device)
    try:
        return _evaluate(cfg, metrics, device, world, reporter)
    finally:
        shutdown(world)


def _evaluate(cfg: EvaluateConfig, metrics: list[str], device: torch.device, world: World, reporter: Reporter) -> EvaluateResult:
    res = EvaluateResult(metrics=metrics, seed=cfg.seed, is_main=world.is_main)
    image_metrics = [m for m in metrics if m in ("fid", "is")]
    generate = bool(image_metrics) and cfg.images is None

    # Everything is checked before any long work, cheapest first.
    meta: dict[str, Any] | None = None
    if generate or "bpd" in metrics or cfg.model is not None:
        res.model = build.resolve_model_path(cfg.model, cfg.runs_dir)
        meta = read_meta(res.model)
    if generate:
        check_sampler(cfg.sampler)
        res.sampler, res.steps = cfg.sampler.name, cfg.sampler.steps
    files, splits = _images_to_score(cfg, metrics, res) if image_metrics else (None, cfg.is_splits)
    ref = _reference(cfg, meta, files, res) if "fid" in metrics else None
    net, notes = _inception(cfg, device, ref, res) if image_metrics else (None, [])
    bpd_data = _bpd_data(cfg, meta, res) if "bpd" in metrics else None
    model: ScoreModel | None = None
    if generate or bpd_data is not None:
        assert res.model is not None
        model, meta = build.load_score_model(res.model, cfg.use_ema)
        model.to(device).requires_grad_(False)
    for note in notes:
        reporter.message(note)

    # Sampling and bits/dim, sharded across ranks.
    samples: Tensor | None = None
    if generate:
        assert model is not None and res.num_samples is not None
        t0 = time.perf_counter()
        shape = (meta["channels"], meta["image_size"], meta["image_size"])  # type: ignore[index]
        # A class-conditional model is scored on what `diffuse sample` makes: every class in turn, guided.
        _, res.guidance = guidance_plan(meta, None, cfg.guidance, res.model)  # type: ignore[arg-type]
        fns = guided_score_fns(model, meta["network"]["num_classes"], None, res.guidance, device) if res.guidance is not None else None  # type: ignore[index]
        x, res.nfe = draw(model.sde, make_score_fn(model), shape, res.num_samples, cfg.batch_size, cfg.seed,
                          cfg.sampler, device, world, reporter, score_fn_for=fns)
        samples = to_uint8(x)  # exactly what `diffuse sample --individual` writes as PNGs
        res.seconds["sampling"] = time.perf_counter() - t0
    if bpd_data is not None:
        assert model is not None
        t0 = time.perf_counter()
        per_run = bpd_table(model, bpd_data, cfg, device, world, reporter).mean(axis=1)
        res.bpd_per_run = [float(v) for v in per_run]
        res.bpd_mean, res.bpd_std = float(per_run.mean()), float(per_run.std())
        res.seconds["bpd"] = time.perf_counter() - t0

    # Inception metrics on rank 0.
    if world.is_main and net is not None:
        t0 = time.perf_counter()
        batches = image_batches(files, cfg.batch_size) if files is not None else tensor_batches(samples, cfg.batch_size)  # type: ignore[arg-type]
        _inception_metrics(net, batches, f"images in {cfg.images}" if files is not None else "the samples", splits, ref, res, reporter)
        res.seconds["inception"] = time.perf_counter() - t0
    return res


def _images_to_score(cfg: EvaluateConfig, metrics: list[str], res: EvaluateResult) -> tuple[list[Path] | None, int]:
    """The --images files (None when generating) and the IS splits; sets num_samples and count warnings."""
    files: list[Path] | None = None
    if cfg.images is not None:
        files = folder_images(cfg.images, recursive=True)
        if cfg.num_samples is not None:
            if cfg.num_samples > len(files):
                raise MetricsError(f"--num-samples {cfg.num_samples} but {cfg.images} holds only {len(files)} images")
            files = files[: cfg.num_samples]
        res.images, res.num_samples = cfg.images, len(files)
    else:
        res.num_samples = cfg.num_samples or RECOMMENDED_SAMPLES
    splits = cfg.is_splits
    if "fid" in metrics:
        res.warnings += [w for w in [check_fid_count(res.num_samples, "evaluated images", cfg.allow_few)] if w]
    if "is" in metrics:
        splits, line = check_is_splits(res.num_samples, cfg.is_splits, cfg.allow_few)
        res.warnings += [line] if line else []
    return files, splits


def _reference(cfg: EvaluateConfig, meta: dict[str, Any] | None, files: list[Path] | None, res: EvaluateResult) -> Reference:
    """The FID reference, its count checked."""
    ref = resolve_reference(cfg, meta, files)
    res.reference, res.reference_num_samples = ref.description, ref.num_samples
    if ref.num_samples is not None:
        res.warnings += [w for w in [check_fid_count(ref.num_samples, "reference images", cfg.allow_few)] if w]
    return ref


def _inception(cfg: EvaluateConfig, device: torch.device, ref: Reference | None,
               res: EvaluateResult) -> tuple[InceptionV3Features, list[str]]:
    """The Inception network (every rank loads it, so missing weights fail everywhere alike) and lines about the cache."""
    net = load_inception(cfg.inception_weights, device)
    assert net.weights_info is not None
    weights = res.weights = net.weights_info
    if not weights.official:
        res.warnings.append(f"Inception weights {weights.path} are not pytorch-fid's official ones: figures are not comparable to published FID/IS")
    recorded = str(ref.stats.extra.get("inception_sha256", "")) if ref is not None and ref.stats is not None else ""
    if recorded and recorded != weights.sha256:
        res.warnings.append(f"the reference statistics were computed with other Inception weights (SHA-256 {recorded[:12]}...): FID is not meaningful")
    notes: list[str] = []
    if ref is not None and cfg.save_reference_stats is not None:
        note = attach_cache(ref, cfg.save_reference_stats, weights)
        notes += [note] if note else []
        res.reference_stats, res.reference_stats_reused = ref.cache_path, ref.reused
    return net, notes


def _bpd_data(cfg: EvaluateConfig, meta: dict[str, Any] | None, res: EvaluateResult) -> Dataset:
    """The bits/dim examples: a split of the model's own dataset (or --bpd-dataset) at the model's size and channels."""
    assert meta is not None
    size = meta["image_size"]
    data, info = load_dataset(cfg.bpd_dataset or meta["dataset"], size, cfg.data_dir, cfg.bpd_split, DATA_SEED,
                              cfg.bpd_examples, meta["channels"], cfg.download)
    res.bpd_data = f"{info.name} {cfg.bpd_split} at {size}x{size}"
    res.bpd_examples, res.bpd_runs = len(data), cfg.bpd_runs  # type: ignore[arg-type]
    return data


def _inception_metrics(net: InceptionV3Features, batches: Iterator[Tensor], what: str, splits: int,
                       ref: Reference | None, res: EvaluateResult, reporter: Reporter) -> None:
    """IS and FID of the images in ``batches`` (rank 0 only)."""
    assert res.weights is not None and res.num_samples is not None
    features, logits = extract_features(net, batches, progress_for(reporter, res.num_samples, f"Inception features of {what}"))
    reporter.finish()
    if "is" in res.metrics:
        res.is_mean, res.is_std = inception_score(logits, splits)
        res.is_splits = splits
    if ref is not None:
        mu, sigma, ref_features = reference_statistics(ref, net, res.weights, reporter)
        res.fid, numeric = fid_against(features, mu, sigma, ref_features)
        res.warnings += numeric
