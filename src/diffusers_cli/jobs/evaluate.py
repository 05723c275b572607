"""The evaluation job: the metrics of METRICS asked for, on generated or given images, a reference and a data split.

Each metric names what it needs (Inception features of the scored images, reference statistics,
bits/dim of a data split); the job prepares exactly that and hands it to the metrics' compute.
Every input is checked before any long work (sampling, Inception passes, ODE solves), so bad input
fails in seconds. Sampling and bits/dim are sharded across torchrun ranks; the Inception network
and the metrics run on rank 0 only.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import Dataset

from diffusers_cli.parts import build
from diffusers_cli.checkpoints.card import ModelCard
from diffusers_cli.config.base import ConfigError
from diffusers_cli.config.schema import EvaluateConfig
from diffusers_cli.data import load_dataset
from diffusers_cli.support.distributed import World, init_world, shutdown
from diffusers_cli.engine.likelihood import bits_per_dim
from diffusers_cli.engine.metrics import (
    IMAGES,
    LIKELIHOOD,
    RECOMMENDED_SAMPLES,
    REFERENCE,
    REFERENCE_FEATURES,
    InceptionV3Features,
    InceptionWeights,
    LikelihoodTable,
    Metric,
    MetricsError,
    ReferenceStatistics,
    check_metrics,
    folder_images,
    image_batches,
    metric_options,
)
from diffusers_cli.engine.score import ScoreModel, make_score_fn
from diffusers_cli.parts.drawing import guidance_plan
from diffusers_cli.parts.tuned_grids import grid_name, tuned_times
from diffusers_cli.parts.evaluation import (
    DATA_SEED,
    Reference,
    ReferenceRequest,
    attach_cache,
    checked_counts,
    load_weights_once,
    needs_of,
    reference_counts,
    draw_samples,
    reference_statistics,
    resolve_reference,
    score,
    tensor_batches,
    weights_warnings,
)
from diffusers_cli.checkpoints.weights import WEIGHTS_NAME
from diffusers_cli.models import resolve_model_path
from diffusers_cli.parts.opening import Located, check_memory, locate, open_model
from diffusers_cli.run.report import write_report
from diffusers_cli.run.snapshots import list_snapshots, write_scores
from diffusers_cli.support.progress import Reporter, SilentReporter


@dataclass(frozen=True)
class Provenance:
    """What produced an evaluation's figures: the images scored (and how they were made), the reference, the weights."""

    seed: int
    model: Path | None = None                 # the checkpoint sampled from or measured
    images: Path | None = None                # the --images folder scored instead of samples
    num_samples: int | None = None            # images scored
    sampler: str | None = None
    steps: int | None = None
    grid: str | None = None                   # the time grid sampled on: a named grid, or "tuned" (grids.json)
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
            "num_samples": self.num_samples, "sampler": self.sampler, "steps": self.steps, "grid": self.grid, "nfe": self.nfe,
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


def given_images(cfg: EvaluateConfig) -> list[Path]:
    """The --images files to score: all of them, or the first --num-samples."""
    assert cfg.images is not None
    files = folder_images(cfg.images, recursive=True)
    if cfg.num_samples is not None:
        if cfg.num_samples > len(files):
            raise MetricsError(f"--num-samples {cfg.num_samples} but {cfg.images} holds only {len(files)} images")
        files = files[: cfg.num_samples]
    return files


# ---- the reference --------------------------------------------------------------------------


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
        if cfg.snapshots:
            raise ConfigError("--snapshots scores every snapshot of a run: call evaluate_snapshots (diffuse evaluate --snapshots)")
        return _evaluate(cfg, metrics, device, world, reporter)
    finally:
        shutdown(world)


@dataclass(frozen=True)
class SnapshotScores:
    """``diffuse evaluate --snapshots``: one evaluation per snapshot of a run, oldest first (empty off rank 0)."""

    run: Path
    steps: list[int]
    results: list[EvaluateResult]

    def rows(self) -> list[dict[str, Any]]:
        """One row per snapshot: its step and each metric's figures."""
        return [{"step": step, **res.figures} for step, res in zip(self.steps, self.results)]

    def summary(self) -> dict[str, Any]:
        """The --json summary: the run, and per snapshot its step, figures and provenance."""
        return {"run": str(self.run),
                "snapshots": [{"step": step, **res.summary()} for step, res in zip(self.steps, self.results)]}


def snapshot_run(cfg: EvaluateConfig) -> tuple[Path, dict[int, Path]]:
    """The run whose snapshots ``--snapshots`` scores (--model, or the newest run) and its snapshot files by step."""
    if cfg.images is not None:
        raise ConfigError("--snapshots scores the samples of a run's snapshots; drop --images (or drop --snapshots)")
    if cfg.model is None:
        run = resolve_model_path(None, cfg.runs_dir).parent
    elif Path(cfg.model).is_dir() and (Path(cfg.model) / WEIGHTS_NAME).is_file():
        run = Path(cfg.model)
    else:
        raise ConfigError(f"--snapshots scores the snapshots of a run; pass --model RUN (a run directory of `diffuse "
                          f"train`), not {cfg.model}")
    snapshots = list_snapshots(run)
    if not snapshots:
        raise ConfigError(f"{run} keeps no snapshots; train it with --snapshot-every N (steps, or Ne for epochs) first")
    return run, snapshots


def evaluate_snapshots(cfg: EvaluateConfig, reporter: Reporter | None = None) -> SnapshotScores:
    """Run ``diffuse evaluate --snapshots``: the metrics of every snapshot of the run, each as ``--model RUN@STEP`` alone.

    Every snapshot is scored with the same seeds, the same reference statistics (computed once) and the same
    metric options. Rank 0 writes the table into the run and the run's report, whose plot shows it.
    """
    reporter = reporter or SilentReporter()
    metrics = check_metrics(cfg.metrics)
    run, snapshots = snapshot_run(cfg)
    device = build.resolve_device(cfg.device)
    world, device = init_world(device)
    memo: dict[str, Any] = {}
    results: list[EvaluateResult] = []
    try:
        for step, path in snapshots.items():
            reporter.message(f"snapshot of step {step:,}")
            one = cfg.model_copy(update={"model": path, "snapshots": False})
            results.append(_evaluate(one, metrics, device, world, reporter, memo))
    finally:
        shutdown(world)
    scores = SnapshotScores(run, list(snapshots), results)
    if world.is_main:
        write_scores(run, scores.rows())
        write_report(run)
    return scores


def _evaluate(cfg: EvaluateConfig, metrics: dict[str, Metric], device: torch.device, world: World,
              reporter: Reporter, memo: dict[str, Any] | None = None) -> EvaluateResult:
    """One evaluation; ``memo`` carries the Inception network and reference statistics from one snapshot to the next."""
    memo = {} if memo is None else memo
    needs = needs_of(metrics)
    options = metric_options(cfg, cfg.metric_options, cfg.seed)
    uses_reference = bool(needs & {REFERENCE, REFERENCE_FEATURES})
    generate = IMAGES in needs and cfg.images is None
    lines: list[str] = []
    if not generate:
        refuse_sampling_settings(cfg)

    # Everything is checked before any long work, cheapest first.
    model_path: Path | None = None
    card: ModelCard | None = None
    located: Located | None = None
    if generate or LIKELIHOOD in needs or cfg.model is not None:
        located = locate(cfg)
        model_path, card = located.path, located.card
        if generate or LIKELIHOOD in needs:
            check_memory(card, cfg.batch_size, device, cfg.model or model_path)  # before the minutes of Inception work
    files: list[Path] | None = None
    num_samples: int | None = None
    if IMAGES in needs:
        files = given_images(cfg) if cfg.images is not None else None
        num_samples = len(files) if files is not None else cfg.num_samples or RECOMMENDED_SAMPLES
        lines += checked_counts(metrics, IMAGES, "evaluated images", num_samples, options)
    request = ReferenceRequest(cfg.reference, cfg.image_size, cfg.data_dir, cfg.split, cfg.reference_examples, cfg.download,
                               cfg.batch_size)
    ref = resolve_reference(request, card, files) if uses_reference else None
    if ref is not None:
        lines += reference_counts(metrics, ref, options)
    net: InceptionV3Features | None = None
    weights: InceptionWeights | None = None
    note: str | None = None
    if IMAGES in needs or uses_reference:
        # Every rank loads it, so missing weights fail everywhere alike (rank 0 downloads first with --download).
        if "net" not in memo:
            memo["net"] = load_weights_once(cfg.inception_weights, device, cfg.download, world, reporter)
        net = memo["net"]
        assert net.weights_info is not None
        weights = net.weights_info
        lines += weights_warnings(weights, ref)
        if ref is not None and cfg.save_reference_stats is not None:
            ref, note = attach_cache(ref, cfg.save_reference_stats, weights, REFERENCE_FEATURES in needs)
    bpd_data = bpd_dataset(cfg, card) if LIKELIHOOD in needs else None
    model: ScoreModel | None = None
    times: Tensor | None = None
    if generate or bpd_data is not None:
        assert model_path is not None
        _, model, card = open_model(cfg, device, located=located)
        times = (tuned_times(cfg.sampler, model_path, model.net, cfg.grids, cfg.model,
                             guidance_plan(card, None, cfg.guidance, model_path)[1]) if generate else None)
        model.requires_grad_(False)
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
        samples, nfe, guidance = draw_samples(model, card, model_path, num_samples, cfg.sampler, cfg.batch_size, cfg.seed,
                                              cfg.guidance, device, world, reporter, times)
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
        batches: Iterator[Tensor] | None = None
        what = ""
        if IMAGES in needs:
            if files is not None:
                batches, what = image_batches(files, cfg.batch_size), f"images in {cfg.images}"
            else:
                assert samples is not None
                batches, what = tensor_batches(samples, cfg.batch_size), "the samples"
        ref_stats: ReferenceStatistics | None = None
        if ref is not None:
            assert net is not None and weights is not None
            # Snapshots share one reference: its statistics are computed once and scored against each snapshot.
            if "ref_stats" not in memo:
                memo["ref_stats"] = reference_statistics(ref, net, weights, reporter, REFERENCE_FEATURES in needs)
            ref_stats = memo["ref_stats"]
        figures, warned = score(metrics, options, net, batches, num_samples, what, ref_stats, likelihood, reporter)
        lines += warned
        if net is not None:
            seconds["inception"] = time.perf_counter() - t0

    provenance = Provenance(
        seed=cfg.seed, model=model_path, images=cfg.images if files is not None else None, num_samples=num_samples,
        sampler=cfg.sampler.name if generate else None, steps=cfg.sampler.steps if generate else None,
        grid=grid_name(cfg.sampler, times) if generate else None, nfe=nfe,
        guidance=guidance, reference=ref, weights=weights, warnings=tuple(lines), seconds=seconds,
    )
    return EvaluateResult(figures, provenance, is_main=world.is_main)


#: The flag of each sampling setting, for the message that refuses them where nothing is sampled.
SAMPLING_FLAGS = {"name": "--sampler", "steps": "--steps", "grid": "--grid", "eps": "--eps",
                  "final_denoise": "--no-denoise", "options": "-o"}


def refuse_sampling_settings(cfg: EvaluateConfig) -> None:
    """Sampler settings or a guidance scale given to an evaluation that draws no samples: bad input, not silently unused."""
    # Bits/dim integrates the probability-flow ODE of its own (--bpd-rtol, --bpd-atol), and given images are not
    # drawn at all: a --guidance or --eps would change nothing, and a user comparing runs would not know it.
    given = [SAMPLING_FLAGS[k] for k in SAMPLING_FLAGS if k in cfg.sampler.model_fields_set]
    given += ["--guidance"] if cfg.guidance is not None else []
    if given:
        why = f"the images in {cfg.images} are evaluated as they are" if cfg.images is not None else "bits/dim draws no samples"
        many = len(given) > 1
        raise ConfigError(f"{', '.join(given)} {'set' if many else 'sets'} how samples are drawn, and {why}: drop "
                          f"{'them' if many else 'it'}, or ask for a metric of generated samples (--metrics fid,is,kid)")


def bpd_dataset(cfg: EvaluateConfig, card: ModelCard | None) -> tuple[Dataset, str]:
    """The bits/dim examples, a split of the model's own dataset (or --bpd-dataset) at its size and channels, and their description."""
    assert card is not None
    h, w = card.image_hw
    if cfg.bpd_dataset is None and card.dataset in ("unknown", ""):
        raise ConfigError(f"{cfg.model} does not record the data it was trained on; name it for bits/dim with "
                          f"--bpd-dataset (e.g. --bpd-dataset cifar10 --data-dir DIR, or a folder of images)")
    data, info = load_dataset(cfg.bpd_dataset or card.dataset, (h, w), cfg.data_dir, cfg.bpd_split, DATA_SEED,
                              cfg.bpd_examples, card.channels, cfg.download)
    return data, f"{info.name} {cfg.bpd_split} at {h}x{w}"
