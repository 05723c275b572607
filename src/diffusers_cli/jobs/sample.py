"""The sampling job: load a model, draw images (``sampling.draw``: per-image seeds, sharded), write a grid or PNGs."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from diffusers_cli.parts import build
from diffusers_cli.checkpoints.card import ModelCard
from diffusers_cli.config.schema import SampleConfig
from diffusers_cli.support.distributed import init_world, shutdown
from diffusers_cli.engine.score import make_score_fn
from diffusers_cli.support.files import check_image_output
from diffusers_cli.support.labelled_grids import labelled_grid
from diffusers_cli.models import Loaded
from diffusers_cli.parts.opening import open_model
from diffusers_cli.support.progress import Reporter, SilentReporter
from diffusers_cli.support.image_grids import save_png, write_images
from diffusers_cli.parts.sampler_choice import SamplerChoice, choose_sampler
from diffusers_cli.parts.tuned_grids import grid_name, tuned_times
from diffusers_cli.parts.drawing import Trajectory, draw, guidance_plan, guided_score_fns


@dataclass
class SampleResult:
    """What a sampling job produced."""

    images: Tensor
    outputs: list[Path]
    nfe: int
    seconds: float
    model: Path
    card: ModelCard
    guidance: float | None = None  # classifier-free guidance scale (class-conditional models)
    class_name: str | None = None  # the one class sampled, or None for every class in turn
    trajectory: Tensor | None = None  # the --trajectory strip as a uint8 grid [C, H, W], when asked for
    choice: SamplerChoice | None = None  # the sampler that ran and why (given, the model card's, the default)


def image_captions(card: ModelCard, label: int | None, first: int, n: int) -> list[str]:
    """--labels under each image: its index in the job (``--first I -n 1`` draws it alone) and, if conditional, its class."""
    if not card.class_conditional:
        return [f"#{first + i}" for i in range(n)]
    # The class each image was drawn for: the one asked, or the classes in turn (engine.guidance.cycle_labels).
    return [f"#{first + i} {card.class_names[label if label is not None else (first + i) % card.num_classes]}" for i in range(n)]


def sample_images(cfg: SampleConfig, reporter: Reporter | None = None, loaded: Loaded | None = None,
                  write: bool = True, trajectory: bool = False) -> SampleResult:
    """Run ``diffuse sample``: returns the images (in [-1, 1]) and where they were written.

    ``loaded`` is a model already read (the Python face), used instead of ``cfg.model``; ``write=False``
    writes no file, and ``trajectory`` collects the strip without ``cfg.trajectory``'s file.
    """
    reporter = reporter or SilentReporter()
    if write:
        check_image_output(cfg.out, individual=cfg.individual)
        if cfg.trajectory is not None:
            check_image_output(cfg.trajectory, "--trajectory")
    device = build.resolve_device(cfg.device)
    world, device = init_world(device)
    try:
        path, model, card = open_model(cfg, device, min(cfg.n, cfg.batch_size), loaded)
        label, scale = guidance_plan(card, cfg.label, cfg.guidance, path)
        score_fn_for = guided_score_fns(model, card.num_classes, label, scale, device) if scale is not None else None
        shape = card.image_shape
        choice = choose_sampler(cfg.sampler, card)
        s = choice.sampler
        traj = Trajectory(s.steps) if trajectory or cfg.trajectory is not None else None
        t0 = time.perf_counter()
        times = tuned_times(s, path, model.net, cfg.grids, cfg.model, scale)
        choice = choice.on_grid(grid_name(s, times))
        images, nfe = draw(model.sde, make_score_fn(model), shape, cfg.n, cfg.batch_size, cfg.seed, s,
                           device, world, reporter, (lambda b: traj if b == 0 else None) if traj else None, score_fn_for,
                           cfg.first, times)
        seconds = time.perf_counter() - t0
        strip = traj.strip(images, traj.captions(model.sde) if cfg.labels else None) if traj is not None else None
        outputs: list[Path] = []
        if world.is_main and write:
            if cfg.labels and not cfg.individual:
                save_png(labelled_grid(images, captions=image_captions(card, label, cfg.first, cfg.n)), cfg.out, cfg.upscale)
                outputs = [cfg.out]
            else:
                outputs = write_images(images, cfg.out, cfg.individual, cfg.first, cfg.upscale)
            if strip is not None and cfg.trajectory is not None:
                save_png(strip, cfg.trajectory)
                outputs.append(cfg.trajectory)
        name = card.class_names[label] if label is not None else None
        return SampleResult(images, outputs, nfe, seconds, path, card, scale, name, strip, choice)
    finally:
        shutdown(world)
