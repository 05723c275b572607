"""The tuning job: load a model, tune a sampler's time grid at each step count, write the entries to a grids file."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from diffusers_cli.parts import build
from diffusers_cli.checkpoints.weights import WEIGHTS_NAME
from diffusers_cli.checkpoints.card import CheckpointError, ModelCard
from diffusers_cli.config.schema import SamplerConfig, TuneConfig
from diffusers_cli.engine.grid_tuning import GridCheck, evaluation_budget
from diffusers_cli.engine.score import ScoreModel
from diffusers_cli.support.errors import UsageError
from diffusers_cli.parts.drawing import guidance_plan
from diffusers_cli.parts.evaluation import tune_for
from diffusers_cli.parts.judging import grid_check, load_judge, real_images
from diffusers_cli.parts.opening import locate, open_model
from diffusers_cli.support.progress import Reporter, SilentReporter
from diffusers_cli.run.lock import hold_run
from diffusers_cli.parts.tuned_grids import make_entry, weights_hash, write_entry, write_target


@dataclass
class TuneResult:
    """What a tuning job wrote."""

    model: Path  # the resolved model
    file: Path  # the grids file the entries went to
    entries: list[dict[str, Any]]  # one per step count, as written


def tune_grids(cfg: TuneConfig, reporter: Reporter | None = None) -> TuneResult:
    """Run ``diffuse tune``: one tuned grid per ``cfg.steps``, written into the model's grids file under its run lock."""
    reporter = reporter or SilentReporter()
    located = locate(cfg)
    path = located.path
    if located.card.kind == "classifier":
        raise CheckpointError(f"{cfg.model or path} is a classifier; tune the grid of a score model (a run of `diffuse train`)")
    device = build.resolve_device(cfg.device)
    _, model, card = open_model(cfg, device, cfg.batch_size, located=located)
    model.requires_grad_(False)
    target = write_target(path, cfg.grids, cfg.model)
    digest = weights_hash(model.net)
    # A run's grids.json is part of the run: one writer at a time, as for training.
    in_run = path.name == WEIGHTS_NAME and target.parent == path.parent
    lock = hold_run(path.parent, "tuned", reporter.message) if in_run else contextlib.nullcontext()
    entries: list[dict[str, Any]] = []
    # The classifier-free scale the grid is tuned at (None: an unconditional model), as a job resolves it.
    _, scale = guidance_plan(card, None, cfg.guidance, path)
    judge = _judge(cfg, model, card, scale, device)
    with lock:
        for steps in cfg.steps:
            sampler = SamplerConfig(name=cfg.sampler, steps=steps, eps=cfg.eps, final_denoise=cfg.final_denoise,
                                    options=cfg.options)
            reporter.start(evaluation_budget(steps, cfg.lattice, cfg.rounds), f"tuning {cfg.sampler} at {steps} steps")
            res = tune_for(model, card, sampler, device, cfg.batch_size, cfg.seed, cfg.guidance, rounds=cfg.rounds,
                           lattice=cfg.lattice, holdout=cfg.holdout, objective=cfg.objective,
                           judge=judge(sampler) if judge is not None else None,
                           progress=lambda n, err: reporter.advance(1, error=err))
            reporter.finish()
            entry = make_entry(cfg.sampler, steps, dict(sampler.options), res.times, digest,
                               objective=res.objective, error=res.error, default_error=res.default_error, start=res.start,
                               errors_of_named_grids=res.errors_of_named, kept=res.kept,
                               held_out=asdict(res.held_out) if res.held_out is not None else None,
                               **({"judge_gate": {**res.judged, "judge": cfg.judge}} if res.judged is not None else {}),
                               cost={"evaluations": res.evaluations, "nfe": res.nfe, "reference_nfe": res.reference_nfe,
                                     "batch": cfg.batch_size, "seconds": round(res.seconds, 3), "device": str(device)},
                               model=str(cfg.model or path), seed=cfg.seed, guidance=scale,
                               eps=cfg.eps, final_denoise=cfg.final_denoise)
            write_entry(target, entry)
            entries.append(entry)
    return TuneResult(path, target, entries)


def _judge(cfg: TuneConfig, model: ScoreModel, card: ModelCard, scale: float | None,
           device: torch.device) -> Callable[[SamplerConfig], GridCheck] | None:
    """``--judge``: the judge and its real images, read once (bad input exits 2 before any tuning), as a check per sampler."""
    if cfg.judge is None:
        return None
    net, judge_card = load_judge(cfg.judge)
    if judge_card.image_shape != card.image_shape:
        raise UsageError(f"{cfg.judge} judges images {list(judge_card.image_shape)}, the model makes {list(card.image_shape)}: "
                         "give a judge of this model's images")
    dataset = cfg.reference or card.dataset
    if not dataset:
        raise UsageError("--judge needs real images to measure the judge FD against: give --reference DATASET")
    real = real_images(dataset, card.image_hw[0], card.channels, cfg.judge_batch, cfg.data_dir)
    return lambda sampler: grid_check(model, card, sampler, net, real, cfg.judge_batch, cfg.seed, scale, device)
