"""The conditioning job: classifier guidance (Song et al. 2021, sec. 5) toward one class, or classifier-free guidance of a class-conditional model."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffusers_cli import build
from diffusers_cli.config import ConditionConfig
from diffusers_cli.data import class_index
from diffusers_cli.distributed import init_world, shutdown
from diffusers_cli.engine.guidance import classifier_fn, classifier_free, guided
from diffusers_cli.engine.score import make_score_fn
from diffusers_cli.files import check_writable
from diffusers_cli.jobs.report import Reporter, SilentReporter
from diffusers_cli.jobs.sample import check_sampler, draw
from diffusers_cli.runs import write_images


@dataclass
class ConditionResult:
    """What a conditioning job produced."""

    outputs: list[Path]
    label: int
    class_name: str
    nfe: int
    seconds: float
    model: Path
    classifier: Path | None  # None: classifier-free guidance of a class-conditional model


def check_compatible(model_meta: dict[str, Any], clf_meta: dict[str, Any], classifier: Path) -> None:
    """The classifier must know the model's SDE, resolution and channels, or its gradient is meaningless."""
    if clf_meta["sde"] != model_meta["sde"]:
        raise ValueError(f"classifier {classifier} was trained for the {clf_meta['sde']['kind']} SDE {clf_meta['sde']} "
                         f"but the model uses {model_meta['sde']}; train a classifier with the model's --sde")
    for key in ("image_size", "channels"):
        if clf_meta[key] != model_meta[key]:
            raise ValueError(f"classifier {classifier} expects {key} {clf_meta[key]} but the model makes {model_meta[key]}; "
                             "train the classifier on the model's images")


def condition(cfg: ConditionConfig, reporter: Reporter | None = None) -> ConditionResult:
    """Run ``diffuse condition``: n images of one class, written as a grid or PNGs."""
    reporter = reporter or SilentReporter()
    check_sampler(cfg.sampler)
    check_writable(cfg.out)
    device = build.resolve_device(cfg.device)
    world, device = init_world(device)
    try:
        model_path = build.resolve_model_path(cfg.model, cfg.runs_dir)
        model, meta = build.load_score_model(model_path, cfg.use_ema)
        model.to(device)
        clf_path: Path | None = None
        if cfg.classifier is None:
            # A class-conditional model needs no classifier: its own conditional and unconditional scores guide it.
            if meta["network"].get("num_classes") is None:
                raise ValueError(f"{model_path} is an unconditional model: pass --classifier RUN (from `diffuse train "
                                 "--task classifier`), or train the model with --class-conditional")
            names = tuple(meta["class_names"])
            label = class_index(cfg.label, names)
            score_fn = classifier_free(model, label, cfg.scale)
        else:
            clf_path = build.resolve_model_path(cfg.classifier, cfg.runs_dir)
            net, sde, clf_meta = build.load_classifier(clf_path)
            check_compatible(meta, clf_meta, clf_path)
            names = tuple(clf_meta["class_names"])
            label = class_index(cfg.label, names)
            net.to(device)
            score_fn = guided(make_score_fn(model), classifier_fn(net, model.sde), label, cfg.scale)
        shape = (meta["channels"], meta["image_size"], meta["image_size"])
        t0 = time.perf_counter()
        images, nfe = draw(model.sde, score_fn, shape, cfg.n, cfg.batch_size, cfg.seed, cfg.sampler, device, world, reporter)
        seconds = time.perf_counter() - t0
        outputs = write_images(images, cfg.out, cfg.individual) if world.is_main else []
        return ConditionResult(outputs, label, names[label], nfe, seconds, model_path, clf_path)
    finally:
        shutdown(world)
