"""The conditioning job: classifier guidance (Song et al. 2021, sec. 5) toward one class, or classifier-free guidance of a class-conditional model."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from diffusers_cli.parts import build
from diffusers_cli.checkpoints.card import ModelCard
from diffusers_cli.config.schema import ConditionConfig
from diffusers_cli.data import class_index
from diffusers_cli.support.distributed import init_world, shutdown
from diffusers_cli.engine.guidance import classifier_fn, classifier_free, guided
from diffusers_cli.engine.score import make_score_fn
from diffusers_cli.support.files import check_image_output
from diffusers_cli.models import Loaded, load_classifier, resolve_model_path
from diffusers_cli.parts.opening import open_model
from diffusers_cli.support.progress import Reporter, SilentReporter
from diffusers_cli.support.errors import UsageError
from diffusers_cli.parts.sampler_choice import SamplerChoice, choose_sampler
from diffusers_cli.parts.tuned_grids import grid_name, tuned_times
from diffusers_cli.parts.drawing import draw
from diffusers_cli.support.image_grids import write_images


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
    images: Tensor | None = None  # the images in [-1, 1]
    scale: float = 1.0  # the guidance scale
    choice: SamplerChoice | None = None  # the sampler that ran and why (given, the model card's, the default)


def check_compatible(model: ModelCard, clf: ModelCard, classifier: Path) -> None:
    """The classifier must know the model's SDE and image shape, or its gradient is meaningless."""
    if clf.sde != model.sde:
        raise UsageError(f"classifier {classifier} was trained for the {clf.sde.kind} SDE {clf.sde.model_dump(mode='json')} "
                         f"but the model uses {model.sde.model_dump(mode='json')}; train a classifier with the model's --sde")
    if clf.image_shape != model.image_shape:
        raise UsageError(f"classifier {classifier} expects images of shape {clf.image_shape} (C, H, W) but the model makes "
                         f"{model.image_shape}; train the classifier on the model's images")


def condition(cfg: ConditionConfig, reporter: Reporter | None = None, loaded: Loaded | None = None,
              classifier: Loaded | None = None, write: bool = True) -> ConditionResult:
    """Run ``diffuse condition``: n images of one class, written as a grid or PNGs.

    ``loaded`` and ``classifier`` are models already read (the Python face), used instead of ``cfg.model``
    and ``cfg.classifier``; ``write=False`` writes no file.
    """
    reporter = reporter or SilentReporter()
    if write:
        check_image_output(cfg.out, individual=cfg.individual)
    device = build.resolve_device(cfg.device)
    world, device = init_world(device)
    try:
        model_path, model, card = open_model(cfg, device, min(cfg.n, cfg.batch_size), loaded)
        clf_path: Path | None = None
        if cfg.guidance is not None and (not card.class_conditional or (cfg.classifier is None and classifier is None)):
            raise UsageError("--guidance sets the class-conditional score that a --classifier steers; "
                             + ("this model is unconditional, drop --guidance" if not card.class_conditional
                                else "without --classifier, --scale alone is the classifier-free scale: drop --guidance"))
        if cfg.classifier is None and classifier is None:
            # A class-conditional model needs no classifier: its own conditional and unconditional scores guide it.
            if not card.class_conditional:
                raise UsageError(f"{model_path} is an unconditional model: pass --classifier RUN (from `diffuse train "
                                 "--task classifier`), or train the model with --class-conditional")
            names = card.class_names
            label = class_index(cfg.label, names)
            score_fn = classifier_free(model, label, cfg.scale)
            free_scale: float | None = cfg.scale
        else:
            if classifier is None:
                clf_path = resolve_model_path(cfg.classifier, cfg.runs_dir)
                net, sde, clf_card = load_classifier(clf_path)
            else:
                if classifier.card.kind != "classifier":
                    raise UsageError(f"{classifier.spec} is a {classifier.card.kind} model, not a classifier; pass a run of "
                                     "`diffuse train --task classifier` or builtin:mnist-classifier")
                clf_path, net, clf_card = classifier.path, classifier.net, classifier.card
            check_compatible(card, clf_card, clf_path)
            names = clf_card.class_names
            label = class_index(cfg.label, names)
            net.to(device)
            if cfg.guidance is not None and tuple(clf_card.class_names) != tuple(card.class_names):
                raise UsageError(f"--guidance needs the classifier's classes to be the model's; {clf_path} has "
                                 f"{list(clf_card.class_names)}, the model {list(card.class_names)}")
            # Dhariwal & Nichol 2021 steer a conditional model too: it starts from p(x | y), not p(x).
            base = make_score_fn(model) if cfg.guidance is None else classifier_free(model, label, cfg.guidance)
            free_scale = cfg.guidance
            score_fn = guided(base, classifier_fn(net, model.sde), label, cfg.scale)
        shape = card.image_shape
        choice = choose_sampler(cfg.sampler, card)
        t0 = time.perf_counter()
        # A grid is tuned at a classifier-free scale (free_scale); a classifier's gradient, where one steers, adds to it.
        times = tuned_times(choice.sampler, model_path, model.net, cfg.grids, cfg.model, free_scale)
        choice = choice.on_grid(grid_name(choice.sampler, times))
        images, nfe = draw(model.sde, score_fn, shape, cfg.n, cfg.batch_size, cfg.seed, choice.sampler, device, world, reporter,
                           times=times)
        seconds = time.perf_counter() - t0
        outputs = write_images(images, cfg.out, cfg.individual, upscale=cfg.upscale) if world.is_main and write else []
        return ConditionResult(outputs, label, names[label], nfe, seconds, model_path, clf_path, images, cfg.scale, choice)
    finally:
        shutdown(world)
