"""The evaluation job: the metrics of METRICS asked for, on generated or given images, a reference and a data split.

Each metric names what it needs (Inception features of the scored images, reference statistics,
bits/dim of a data split); the job prepares exactly that and hands it to the metrics' compute.
Every input is checked before any long work (sampling, Inception passes, ODE solves), so bad input
fails in seconds. Sampling and bits/dim are sharded across torchrun ranks; the Inception network
and the metrics run on rank 0 only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from diffusers_cli import build
from diffusers_cli.checkpoints import ModelCard, read_card
from diffusers_cli.config import EvaluateConfig
from diffusers_cli.data import DATASETS, DataError, load_dataset, resolve_name
from diffusers_cli.distributed import World, init_world, shutdown
from diffusers_cli.engine.likelihood import bits_per_dim
from diffusers_cli.engine.metrics import (
    IMAGES,
    LIKELIHOOD,
    RECOMMENDED_SAMPLES,
    REFERENCE,
    InceptionV3Features,
    InceptionWeights,
    Inputs,
    LikelihoodTable,
    Metric,
    MetricOptions,
    MetricsError,
    ReferenceStatistics,
    Statistics,
    check_metrics,
    compute_statistics,
    extract_features,
    folder_images,
    image_batches,
    load_inception,
    load_statistics,
    save_statistics,
)
from diffusers_cli.engine.score import ScoreModel, make_score_fn
from diffusers_cli.files import check_writable
from diffusers_cli.report import Reporter, SilentReporter
from diffusers_cli.sampling import draw, guidance_plan, guided_score_fns
from diffusers_cli.runs import to_uint8

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


@dataclass(frozen=True)
class Provenance:
    """What produced an evaluation's figures: the images scored (and how they were made), the reference, the weights."""

    seed: int
    model: Path | None = None                 # the checkpoint sampled from or measured
    images: Path | None = None                # the --images folder scored instead of samples
    num_samples: int | None = None            # images scored
    sampler: str | None = None
    steps: int | None = None
    nfe: int | None = None                    # network evaluations per sample
    guidance: float | None = None             # classifier-free guidance scale of a class-conditional model's samples
    reference: Reference | None = None
    weights: InceptionWeights | None = None
    warnings: tuple[str, ...] = ()
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The provenance part of the --json summary (null where it does not apply)."""
        w = self.weights
        return {
            "model": str(self.model) if self.model else None, "images": str(self.images) if self.images else None,
            "num_samples": self.num_samples, "sampler": self.sampler, "steps": self.steps, "nfe": self.nfe,
            "guidance": self.guidance, "seed": self.seed,
            "reference": self.reference.summary() if self.reference else None,
            "inception": {"weights": str(w.path), "sha256": w.sha256, "official": w.official, "origin": w.origin} if w else None,
            "warnings": list(self.warnings), "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }


@dataclass(frozen=True)
class EvaluateResult:
    """What an evaluation measured (figures per metric, in registry order; empty off rank 0), and with what."""

    figures: dict[str, dict[str, Any]]
    provenance: Provenance
    is_main: bool = True

    @property
    def warnings(self) -> tuple[str, ...]:
        """Lines the user should see: too few images, unofficial weights, numerical trouble."""
        return self.provenance.warnings

    def summary(self) -> dict[str, Any]:
        """The --json summary: {metric: its figures, ..., "provenance": what produced them}."""
        return {**self.figures, "provenance": self.provenance.summary()}


# ---- checks --------------------------------------------------------------------------------


def checked_counts(metrics: dict[str, Metric], need: str, what: str, n: int, options: MetricOptions) -> list[str]:
    """Every metric that needs ``need`` checks the ``n`` images of ``what``; their warning lines (MetricsError to refuse)."""
    lines = [metric.check(what, n, options) for metric in metrics.values() if need in metric.needs]
    return [line for line in lines if line]


def given_images(cfg: EvaluateConfig) -> list[Path]:
    """The --images files to score: all of them, or the first --num-samples."""
    assert cfg.images is not None
    files = folder_images(cfg.images, recursive=True)
    if cfg.num_samples is not None:
        if cfg.num_samples > len(files):
            raise MetricsError(f"--num-samples {cfg.num_samples} but {cfg.images} holds only {len(files)} images")
        files = files[: cfg.num_samples]
    return files


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


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (size[0], size[1])


def resolve_reference(cfg: EvaluateConfig, card: ModelCard | None, files: list[Path] | None) -> Reference:
    """The FID reference: a statistics file, a folder (read as pytorch-fid reads it) or a dataset (as training reads it)."""
    name = cfg.reference if cfg.reference is not None else (card.dataset if card is not None else None)
    if name is None:
        raise MetricsError("FID needs a reference: pass --reference with a dataset name (e.g. cifar10), a folder of images or a statistics .npz")
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
        raise MetricsError(
            f"unknown reference {str(name)!r}: use a dataset name ({', '.join(DATASETS)}), a folder of images, or a statistics .npz file"
        ) from None
    size = cfg.image_size or (card.image_hw if card is not None else None) or (image_side(files[0]) if files else None)
    if size is None:
        raise MetricsError(f"pass --image-size to say at what resolution to read the reference dataset {canonical}")
    h, w = _hw(size)
    channels = card.channels if card is not None and card.dataset == canonical else None
    ds, info = load_dataset(canonical, (h, w), cfg.data_dir, cfg.split, DATA_SEED, cfg.reference_examples, channels, cfg.download)
    where = f" from {Path(cfg.data_dir).resolve() if cfg.data_dir else 'data'}" if canonical == "folder" else ""
    desc = f"{info.name}{where} {cfg.split} at {h}x{w} ({len(ds):,})"  # type: ignore[arg-type]
    return Reference(desc, len(ds), batches=lambda: dataset_batches(ds, cfg.batch_size))  # type: ignore[arg-type]


def attach_cache(ref: Reference, cache: Path, weights: InceptionWeights) -> tuple[Reference, str | None]:
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
    if recorded == (ref.description, weights.sha256):
        return replace(ref, stats=stats, reused=True, cache_path=cache), f"reusing reference statistics from {cache} ({ref.description})"
    check_writable(cache)
    return (replace(ref, cache=cache, cache_path=cache),
            f"recomputing {cache}: it holds {recorded[0]} under Inception weights {recorded[1][:12]}, not {ref.description} under {weights.sha256[:12]}")


def reference_statistics(ref: Reference, net: InceptionV3Features, weights: InceptionWeights,
                         reporter: Reporter) -> ReferenceStatistics:
    """The reference's mu, sigma (and features, when computed here); writes the cache when one is due."""
    if ref.stats is not None:
        return ReferenceStatistics(ref.stats.mu, ref.stats.sigma, None)
    assert ref.batches is not None and ref.num_samples is not None
    features, _ = extract_features(net, ref.batches(), progress_for(reporter, ref.num_samples, f"Inception features of {ref.description}"))
    reporter.finish()
    mu, sigma = compute_statistics(features, allow_few=True)
    if ref.cache is not None:
        save_statistics(ref.cache, mu, sigma, num_samples=features.shape[0], reference=ref.description,
                        inception_sha256=weights.sha256, inception_official=weights.official)
    return ReferenceStatistics(mu, sigma, features)


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


def _evaluate(cfg: EvaluateConfig, metrics: dict[str, Metric], device: torch.device, world: World,
              reporter: Reporter) -> EvaluateResult:
    needs: frozenset[str] = frozenset().union(*(metric.needs for metric in metrics.values()))
    options = MetricOptions(allow_few=cfg.allow_few, is_splits=cfg.is_splits)
    generate = IMAGES in needs and cfg.images is None
    lines: list[str] = []

    # Everything is checked before any long work, cheapest first.
    model_path: Path | None = None
    card: ModelCard | None = None
    if generate or LIKELIHOOD in needs or cfg.model is not None:
        model_path = build.resolve_model_path(cfg.model, cfg.runs_dir)
        card = read_card(model_path)
    files: list[Path] | None = None
    num_samples: int | None = None
    if IMAGES in needs:
        files = given_images(cfg) if cfg.images is not None else None
        num_samples = len(files) if files is not None else cfg.num_samples or RECOMMENDED_SAMPLES
        lines += checked_counts(metrics, IMAGES, "evaluated images", num_samples, options)
    ref = resolve_reference(cfg, card, files) if REFERENCE in needs else None
    if ref is not None and ref.num_samples is not None:
        lines += checked_counts(metrics, REFERENCE, "reference images", ref.num_samples, options)
    net: InceptionV3Features | None = None
    weights: InceptionWeights | None = None
    note: str | None = None
    if IMAGES in needs or REFERENCE in needs:
        # Every rank loads it, so missing weights fail everywhere alike.
        net = load_inception(cfg.inception_weights, device)
        assert net.weights_info is not None
        weights = net.weights_info
        lines += weights_warnings(weights, ref)
        if ref is not None and cfg.save_reference_stats is not None:
            ref, note = attach_cache(ref, cfg.save_reference_stats, weights)
    bpd_data = bpd_dataset(cfg, card) if LIKELIHOOD in needs else None
    model: ScoreModel | None = None
    if generate or bpd_data is not None:
        assert model_path is not None
        model, card = build.load_score_model(model_path, cfg.use_ema)
        model.to(device).requires_grad_(False)
    if note is not None:
        reporter.message(note)

    # Sampling and bits/dim, sharded across ranks.
    seconds: dict[str, float] = {}
    samples: Tensor | None = None
    nfe: int | None = None
    guidance: float | None = None
    if generate:
        assert model is not None and card is not None and model_path is not None and num_samples is not None
        t0 = time.perf_counter()
        samples, nfe, guidance = draw_samples(model, card, model_path, num_samples, cfg, device, world, reporter)
        seconds["sampling"] = time.perf_counter() - t0
    likelihood: LikelihoodTable | None = None
    if bpd_data is not None:
        assert model is not None
        t0 = time.perf_counter()
        likelihood = LikelihoodTable(bpd_table(model, bpd_data[0], cfg, device, world, reporter), bpd_data[1])
        seconds["bpd"] = time.perf_counter() - t0

    # Inception and the metrics on rank 0.
    figures: dict[str, dict[str, Any]] = {}
    if world.is_main:
        t0 = time.perf_counter()
        features: np.ndarray | None = None
        logits: np.ndarray | None = None
        if IMAGES in needs:
            assert net is not None and num_samples is not None
            if files is not None:
                batches, what = image_batches(files, cfg.batch_size), f"images in {cfg.images}"
            else:
                assert samples is not None
                batches, what = tensor_batches(samples, cfg.batch_size), "the samples"
            features, logits = extract_features(net, batches, progress_for(reporter, num_samples, f"Inception features of {what}"))
            reporter.finish()
        ref_stats: ReferenceStatistics | None = None
        if ref is not None:
            assert net is not None and weights is not None
            ref_stats = reference_statistics(ref, net, weights, reporter)
        inputs = Inputs(options, features, logits, ref_stats, likelihood)
        for name, metric in metrics.items():
            values, warned = metric.compute(inputs)
            figures[name] = values
            lines += warned
        if net is not None:
            seconds["inception"] = time.perf_counter() - t0

    provenance = Provenance(
        seed=cfg.seed, model=model_path, images=cfg.images if files is not None else None, num_samples=num_samples,
        sampler=cfg.sampler.name if generate else None, steps=cfg.sampler.steps if generate else None, nfe=nfe,
        guidance=guidance, reference=ref, weights=weights, warnings=tuple(lines), seconds=seconds,
    )
    return EvaluateResult(figures, provenance, is_main=world.is_main)


def draw_samples(model: ScoreModel, card: ModelCard, path: Path, n: int, cfg: EvaluateConfig, device: torch.device,
                 world: World, reporter: Reporter) -> tuple[Tensor, int, float | None]:
    """(uint8 samples as `diffuse sample --individual` writes them, NFE per sample, guidance scale or None)."""
    # A class-conditional model is scored on what `diffuse sample` makes: every class in turn, guided.
    _, guidance = guidance_plan(card, None, cfg.guidance, path)
    fns = guided_score_fns(model, card.num_classes, None, guidance, device) if guidance is not None else None
    x, nfe = draw(model.sde, make_score_fn(model), card.image_shape, n, cfg.batch_size, cfg.seed,
                  cfg.sampler, device, world, reporter, score_fn_for=fns)
    return to_uint8(x), nfe, guidance


def bpd_dataset(cfg: EvaluateConfig, card: ModelCard | None) -> tuple[Dataset, str]:
    """The bits/dim examples, a split of the model's own dataset (or --bpd-dataset) at its size and channels, and their description."""
    assert card is not None
    h, w = card.image_hw
    data, info = load_dataset(cfg.bpd_dataset or card.dataset, (h, w), cfg.data_dir, cfg.bpd_split, DATA_SEED,
                              cfg.bpd_examples, card.channels, cfg.download)
    return data, f"{info.name} {cfg.bpd_split} at {h}x{w}"
