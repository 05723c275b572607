"""Evaluation pieces shared by `diffuse evaluate` and evaluation during training: references, samples, scoring.

A reference is a statistics file, a folder of images (read as pytorch-fid reads it) or a dataset (read
as training reads it); its statistics can be cached and are reused only when the cache records the
same reference and Inception weights. Samples are what `diffuse sample` makes (per-image seeds,
guided for class-conditional models). The metrics of the registry compute on rank 0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from diffusers_cli.checkpoints.card import ModelCard
from diffusers_cli.config.schema import SamplerConfig
from diffusers_cli.data import DATASETS, DataError, load_dataset, resolve_name
from diffusers_cli.support.distributed import World, barrier
from diffusers_cli.engine.metrics.metric import scores_samples_alone
from diffusers_cli.engine.metrics import (
    IMAGES,
    REFERENCE,
    REFERENCE_FEATURES,
    InceptionV3Features,
    InceptionWeights,
    Inputs,
    LikelihoodTable,
    Metric,
    MetricOptions,
    MetricsError,
    FID_WEIGHTS_URL,
    ReferenceStatistics,
    Statistics,
    compute_statistics,
    extract_features,
    folder_images,
    image_batches,
    load_inception,
    load_statistics,
    save_statistics,
)
from diffusers_cli.engine.grid_tuning import TunedGrid, tune
from diffusers_cli.engine.grids import TUNED
from diffusers_cli.engine.score import ScoreModel, make_score_fn
from diffusers_cli.support.files import check_writable
from diffusers_cli.support.image_files import ImageError, image_size
from diffusers_cli.support.progress import Reporter
from diffusers_cli.support.image_grids import to_uint8
from diffusers_cli.parts.drawing import draw, guidance_plan, guided_score_fns

#: The seed of reference and bits/dim data (shapes rendering, subsets): fixed, so --seed moves only the samples.
DATA_SEED = 0
#: Keys of a statistics cache that say what it holds (besides pytorch-fid's mu and sigma).
CACHE_KEYS = ("reference", "inception_sha256")



@dataclass(frozen=True)
class Reference:
    """The reference side of FID: a description, and statistics read from a file or images to compute them from."""

    description: str                                     # what it is, with the image count (also the cache key)
    num_samples: int | None                              # images behind the statistics (None: a file that does not say)
    batches: Callable[[], Iterator[Tensor]] | None = None  # image batches to compute statistics from
    stats: Statistics | None = None                      # statistics read from --reference or a reused cache
    cache: Path | None = None                            # where to save freshly computed statistics
    cache_path: Path | None = None                       # the --save-reference-stats file, written or reused
    reused: bool = False                                 # the statistics came from the cache

    def summary(self) -> dict[str, Any]:
        """The reference part of the --json provenance."""
        return {"description": self.description, "num_samples": self.num_samples,
                "stats": str(self.cache_path) if self.cache_path else None, "reused": self.reused}


def reference_counts(metrics: dict[str, Metric], ref: Reference, options: MetricOptions) -> list[str]:
    """The reference's counts checked by the metrics that need it: its images, and the feature rows it will provide."""
    lines = checked_counts(metrics, REFERENCE, "reference images", ref.num_samples, options) if ref.num_samples is not None else []
    rows = ref.num_samples if ref.batches is not None else (ref.stats.features.shape[0] if ref.stats is not None and ref.stats.features is not None else 0)
    return lines + checked_counts(metrics, REFERENCE_FEATURES, "reference features", int(rows or 0), options)


def needs_of(metrics: dict[str, Metric]) -> frozenset[str]:
    """Everything the metrics need, together."""
    return frozenset().union(*(metric.needs for metric in metrics.values()))


def checked_counts(metrics: dict[str, Metric], need: str, what: str, n: int, options: MetricOptions) -> list[str]:
    """Every metric that needs ``need`` checks the ``n`` images of ``what``; their warning lines (MetricsError to refuse)."""
    lines = [metric.check(what, n, options) for metric in metrics.values() if need in metric.needs]
    return [line for line in lines if line]


def weights_warnings(weights: InceptionWeights, ref: Reference | None) -> list[str]:
    """Warnings when figures made with these weights are not comparable to published ones, or to the reference's."""
    lines = []
    if not weights.official:
        lines.append(f"Inception weights {weights.path} are not pytorch-fid's official ones: figures are not comparable to published FID/IS")
    recorded = str(ref.stats.extra.get("inception_sha256", "")) if ref is not None and ref.stats is not None else ""
    if recorded and recorded != weights.sha256:
        lines.append(f"the reference statistics were computed with other Inception weights (SHA-256 {recorded[:12]}...): FID is not meaningful")
    return lines


# ---- the reference --------------------------------------------------------------------------


def image_side(path: Path) -> int:
    """The longer side of an image file (read from its header, within the pixel limit)."""
    try:
        return max(image_size(path, what="reference image"))
    except ImageError as err:
        raise MetricsError(str(err)) from None


def dataset_batches(ds: Dataset, batch_size: int) -> Iterator[Tensor]:
    """uint8 batches [B, C, H, W] of a [-1, 1] dataset, quantised as a saved PNG would be (so they match the files)."""
    for start in range(0, len(ds), batch_size):  # type: ignore[arg-type]
        stop = min(start + batch_size, len(ds))  # type: ignore[arg-type]
        yield to_uint8(torch.stack([ds[i][0] for i in range(start, stop)]))


def tensor_batches(images: Tensor, batch_size: int) -> Iterator[Tensor]:
    """Consecutive batches of a tensor of images."""
    for start in range(0, images.shape[0], batch_size):
        yield images[start : start + batch_size]


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (size[0], size[1])


@dataclass(frozen=True)
class ReferenceRequest:
    """Where the reference images come from, as `diffuse evaluate` and `diffuse train --eval-every` take it."""

    reference: str | None = None                      # dataset name, image folder or statistics .npz; None: the model's dataset
    image_size: int | tuple[int, int] | None = None   # resolution of a reference dataset (None: the model's)
    data_dir: Path | None = None                      # where the dataset's files are
    split: str = "train"
    examples: int | None = None                       # a seeded subset of the dataset
    download: bool = False                            # let torchvision download a missing dataset
    batch_size: int = 64


def resolve_reference(cfg: ReferenceRequest, card: ModelCard | None, files: list[Path] | None) -> Reference:
    """The FID reference: a statistics file, a folder (read as pytorch-fid reads it) or a dataset (as training reads it)."""
    name = cfg.reference if cfg.reference is not None else (card.dataset if card is not None else None)
    if name is None:
        raise MetricsError("FID needs a reference: pass --reference with a dataset name (e.g. cifar10), a folder of images or a statistics .npz")
    path = Path(str(name)).expanduser()
    # A prepared dataset (`diffuse prepare`) is a file too, but one read as training reads it.
    prepared = any(spec.path_suffix == path.suffix.lower() for spec in DATASETS.values() if spec.path_suffix)
    if (path.is_file() and not prepared) or path.suffix.lower() == ".npz":
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
        canonical, from_path = resolve_name(str(name))
    except DataError:
        raise MetricsError(
            f"unknown reference {str(name)!r}: use a dataset name ({', '.join(DATASETS)}), a folder of images, or a statistics .npz file"
        ) from None
    size = cfg.image_size or (card.image_hw if card is not None else None) or (image_side(files[0]) if files else None)
    if size is None:
        raise MetricsError(f"pass --image-size to say at what resolution to read the reference dataset {canonical}")
    h, w = _hw(size)
    channels = card.channels if card is not None and card.dataset == canonical else None
    # A dataset named by its path (prepared:FILE, FILE.safetensors) is read from there, not from --data-dir.
    ds, info = load_dataset(str(name) if from_path is not None else canonical, (h, w), cfg.data_dir, cfg.split, DATA_SEED,
                            cfg.examples, channels, cfg.download)
    where = f" from {Path(cfg.data_dir).resolve() if cfg.data_dir else 'data'}" if canonical == "folder" else ""
    where = f" {from_path}" if from_path is not None else where
    desc = f"{info.name}{where} {cfg.split} at {h}x{w} ({len(ds):,})"  # type: ignore[arg-type]
    return Reference(desc, len(ds), batches=lambda: dataset_batches(ds, cfg.batch_size))  # type: ignore[arg-type]


def attach_cache(ref: Reference, cache: Path, weights: InceptionWeights, need_features: bool = False) -> tuple[Reference, str | None]:
    """The reference with ``cache`` reused if it holds its statistics under these weights, else due to be (re)written.

    Also returns a line to tell the user what happened. A file at ``cache`` that does not record
    its reference and weights was not written by diffuse evaluate, and is never overwritten.
    """
    if ref.batches is None:
        raise MetricsError(f"--save-reference-stats caches statistics computed from a dataset or folder; the reference is already {ref.description}")
    if not cache.is_file():
        check_writable(cache)  # a folder, or a place that cannot be written, fails here
        return replace(ref, cache=cache, cache_path=cache), None
    stats = load_statistics(cache)
    recorded = tuple(str(stats.extra[k]) if k in stats.extra else "" for k in CACHE_KEYS)
    if not all(recorded):
        raise MetricsError(
            f"{cache} exists but was not written by diffuse evaluate (it records no reference or Inception weights); "
            f"pass it as --reference {cache} to use it, or choose another --save-reference-stats path"
        )
    if recorded == (ref.description, weights.sha256) and (stats.features is not None or not need_features):
        return replace(ref, stats=stats, reused=True, cache_path=cache), f"reusing reference statistics from {cache} ({ref.description})"
    if recorded == (ref.description, weights.sha256):
        check_writable(cache)
        return replace(ref, cache=cache, cache_path=cache), f"recomputing {cache}: KID needs the reference's features, which it does not hold"
    check_writable(cache)
    return (replace(ref, cache=cache, cache_path=cache),
            f"recomputing {cache}: it holds {recorded[0]} under Inception weights {recorded[1][:12]}, not {ref.description} under {weights.sha256[:12]}")


def reference_statistics(ref: Reference, net: InceptionV3Features, weights: InceptionWeights,
                         reporter: Reporter, keep_features: bool = False) -> ReferenceStatistics:
    """The reference's mu, sigma and features (when known); writes the cache, with the features if ``keep_features``."""
    if ref.stats is not None:
        return ReferenceStatistics(ref.stats.mu, ref.stats.sigma, ref.stats.features)
    assert ref.batches is not None and ref.num_samples is not None
    features, _ = extract_features(net, ref.batches(), progress_for(reporter, ref.num_samples, f"Inception features of {ref.description}"))
    reporter.finish()
    mu, sigma = compute_statistics(features, allow_few=True)
    if ref.cache is not None:
        # Features make the file 8 KB per image larger (410 MB at 50,000): stored only when a metric needs them.
        save_statistics(ref.cache, mu, sigma, features=features if keep_features else None, num_samples=features.shape[0],
                        reference=ref.description, inception_sha256=weights.sha256, inception_official=weights.official)
    return ReferenceStatistics(mu, sigma, features)


def progress_for(reporter: Reporter, total: int, description: str) -> Callable[[int], None]:
    """A progress callback for extract_features (images done so far) that drives ``reporter``."""
    reporter.start(total, description)
    done = [0]

    def progress(n: int) -> None:
        reporter.advance(n - done[0])
        done[0] = n

    return progress


def load_weights_once(weights: Path | None, device: torch.device, download: bool, world: World, reporter: Reporter) -> InceptionV3Features:
    """pytorch-fid's Inception on every rank; with ``download``, rank 0 fetches missing weights first, the others then read them."""
    net: InceptionV3Features | None = None
    if world.is_main:
        net = load_inception(weights, device, download=download)
    barrier(world)
    if net is None:
        net = load_inception(weights, device)
    assert net.weights_info is not None
    if world.is_main and net.weights_info.downloaded:
        reporter.message(f"downloaded the Inception weights from {FID_WEIGHTS_URL} to {net.weights_info.path} (SHA-256 verified)")
    return net


# ---- samples and scores ------------------------------------------------------------------


#: Images in the batch that ``tune_for`` tunes a grid on (with ``diffuse tune``'s other defaults).
TUNE_BATCH = 16


def tune_for(model: ScoreModel, card: ModelCard, sampler: SamplerConfig, device: torch.device, batch: int = TUNE_BATCH,
             seed: int = 0, guidance: float | None = None, **search: Any) -> TunedGrid:
    """A grid tuned for ``sampler`` on the score that `diffuse sample` uses (every class in turn, guided), by ``engine.grid_tuning``."""
    _, scale = guidance_plan(card, None, guidance, Path("(model)"))
    fns = guided_score_fns(model, card.num_classes, None, scale, device) if scale is not None else None
    score_fn = fns(0, batch) if fns is not None else make_score_fn(model)
    # The held-out images continue the class cycle where the tuning batch stops (a guided score is per image).
    holdout = int(search.get("holdout", 64))
    holdout_fn = fns(batch, holdout) if fns is not None and holdout else None
    gen = torch.Generator(device=device).manual_seed(seed)
    return tune(model.sde, score_fn, (batch, *card.image_shape), sampler.name, sampler.steps, generator=gen, device=device,
                eps=sampler.eps, final_denoise=sampler.final_denoise, holdout_score_fn=holdout_fn, **search, **sampler.options)


def draw_samples(model: ScoreModel, card: ModelCard, path: Path, n: int, sampler: SamplerConfig, batch_size: int,
                 seed: int, guidance: float | None, device: torch.device, world: World,
                 reporter: Reporter, times: Tensor | None = None) -> tuple[Tensor, int, float | None]:
    """(uint8 samples as `diffuse sample --individual` writes them, NFE per sample, guidance scale or None).

    ``times`` replaces the sampler's grid (``--grid tuned``).
    """
    # A class-conditional model is scored on what `diffuse sample` makes: every class in turn, guided.
    _, scale = guidance_plan(card, None, guidance, path)
    fns = guided_score_fns(model, card.num_classes, None, scale, device) if scale is not None else None
    x, nfe = draw(model.sde, make_score_fn(model), card.image_shape, n, batch_size, seed,
                  sampler, device, world, reporter, score_fn_for=fns, times=times)
    return to_uint8(x), nfe, scale


def score(metrics: dict[str, Metric], options: MetricOptions, net: InceptionV3Features | None, batches: Iterator[Tensor] | None,
          num_images: int | None, what: str, ref: ReferenceStatistics | None, likelihood: LikelihoodTable | None,
          reporter: Reporter) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Each metric's figures (registry order) and warnings: Inception features of ``batches`` if given, then compute (rank 0)."""
    features: np.ndarray | None = None
    logits: np.ndarray | None = None
    if batches is not None:
        assert net is not None and num_images is not None
        features, logits = extract_features(net, batches, progress_for(reporter, num_images, f"Inception features of {what}"))
        reporter.finish()
    inputs = Inputs(options, features, logits, ref, likelihood)
    figures: dict[str, dict[str, Any]] = {}
    lines: list[str] = []
    for name, metric in metrics.items():
        values, warned = metric.compute(inputs)
        figures[name] = values
        lines += warned
    return figures, lines


# ---- evaluation during training --------------------------------------------------------------


@dataclass
class SampleEvaluator:
    """Image metrics of a model's samples against one reference, prepared once (Inception, reference statistics).

    Built before training starts (so bad input fails before the first step); calling it draws
    ``num_samples`` images with per-image seeds from ``seed`` (the same noise at every evaluation,
    so figures move with the model alone) and scores them on rank 0. It draws from its own
    generators only: the training run's random streams never see it.
    """

    metrics: dict[str, Metric]
    options: MetricOptions
    net: InceptionV3Features
    weights: InceptionWeights
    reference: Reference
    ref_stats: ReferenceStatistics | None  # None off rank 0
    num_samples: int
    sampler: SamplerConfig
    batch_size: int
    seed: int
    warnings: list[str]

    def __call__(self, model: ScoreModel, card: ModelCard, device: torch.device, world: World,
                 reporter: Reporter) -> tuple[dict[str, dict[str, Any]], int]:
        """(figures per metric, empty off rank 0; NFE per sample) of the model's samples."""
        # The weights move between evaluations, so a tuned grid is tuned again for each (its cost is bounded).
        times = tune_for(model, card, self.sampler, device).times if self.sampler.grid == TUNED else None
        samples, nfe, _ = draw_samples(model, card, Path("(training)"), self.num_samples, self.sampler, self.batch_size,
                                       self.seed, None, device, world, reporter, times)
        if not world.is_main:
            return {}, nfe
        figures, _ = score(self.metrics, self.options, self.net, tensor_batches(samples, self.batch_size), self.num_samples,
                           "the samples", self.ref_stats, None, reporter)
        return figures, nfe


def check_training_metrics(metrics: dict[str, Metric]) -> None:
    """MetricsError unless every metric scores samples alone (what evaluation during training can run)."""
    for name, metric in metrics.items():
        if not scores_samples_alone(metric):
            raise MetricsError(f"--eval-metrics {name}: only image metrics run during training; "
                               f"measure {name} with `diffuse evaluate --metrics {name}` on the run")


def prepare_evaluator(metrics: dict[str, Metric], options: MetricOptions, request: ReferenceRequest, card: ModelCard,
                      cache: Path, num_samples: int, sampler: SamplerConfig, batch_size: int, seed: int,
                      inception_weights: Path | None, download: bool, device: torch.device, world: World,
                      reporter: Reporter) -> SampleEvaluator:
    """Check the metrics and counts, load Inception, and compute (or reuse from ``cache``) the reference statistics once."""
    check_training_metrics(metrics)
    lines = checked_counts(metrics, IMAGES, "evaluation samples", num_samples, options)
    ref = resolve_reference(request, card, None)
    lines += reference_counts(metrics, ref, options)
    need_features = REFERENCE_FEATURES in needs_of(metrics)
    net = load_weights_once(inception_weights, device, download, world, reporter)
    assert net.weights_info is not None
    weights = net.weights_info
    lines += weights_warnings(weights, ref)
    if ref.batches is not None:
        ref, note = attach_cache(ref, cache, weights, need_features)
        if note is not None:
            reporter.message(note)
    ref_stats = reference_statistics(ref, net, weights, reporter, need_features) if world.is_main else None
    return SampleEvaluator(metrics, options, net, weights, ref, ref_stats, num_samples, sampler, batch_size, seed, lines)
