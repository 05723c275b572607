"""The imputation job: read an image and a mask (or make one), fill the masked pixels at the model's resolution, paste back."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from diffusers_cli.parts import build
from diffusers_cli.config.schema import ImputeConfig
from diffusers_cli.engine.imputation import METHODS, PARTICLE_METHODS, choose_method, impute, reverse_steps
from diffusers_cli.engine.rng import ImageGenerators
from diffusers_cli.engine.masks import MASKS, make_mask, mask_from_image
from diffusers_cli.engine.score import NFECounter, make_score_fn
from diffusers_cli.support.errors import UsageError
from diffusers_cli.support.files import check_image_output
from diffusers_cli.support.image_files import ALPHA_MODES, GREY_MODES, convert_image, decode_image, open_image
from diffusers_cli.models import Loaded
from diffusers_cli.parts.opening import open_model
from diffusers_cli.support.progress import Reporter, SilentReporter
from diffusers_cli.support.image_grids import save_png, to_uint8


@dataclass
class ImputeResult:
    """What an imputation job produced."""

    outputs: list[Path]
    nfe: int
    seconds: float
    model: Path
    image_size: tuple[int, int]
    method: str  # the method that ran ("auto" resolved)
    particles: int  # chains per candidate (1 unless smc or twisted)
    notes: list[str] = field(default_factory=list)
    images: Tensor | None = None  # the filled candidates [n, C, H, W] in [-1, 1]
    known: Tensor | None = None  # the mask [1, 1, H, W], 1 = known


def read_image(path: Path, channels: int, notes: list[str]) -> Tensor:
    """An image file as float [1, C, H, W] in [-1, 1] with the model's channels (converting, and saying so)."""
    raw = decode_image(path, what="image")
    mode = "L" if channels == 1 else "RGB"
    img = convert_image(raw, mode, what="image", path=path)
    alpha = raw.mode in ALPHA_MODES or (raw.mode == "P" and "transparency" in raw.info)
    deep = raw.mode in GREY_MODES - {"1", "L", "LA", "La"}  # 16/32-bit grey, scaled to 8 bits
    # Said whenever pixels change: grey <-> colour, a bit depth scaled, transparency flattened.
    if (raw.mode in GREY_MODES) != (mode == "L") or deep or alpha:
        notes.append(f"converted the {raw.mode} image {path.name} to {mode} for a {channels}-channel model"
                     + (" (transparent pixels composited over white)" if alpha else ""))
    arr = torch.from_numpy(np.asarray(img, dtype="uint8").copy())
    x = arr[None] if arr.ndim == 2 else arr.permute(2, 0, 1)
    return x[None].float() / 127.5 - 1.0


def read_mask(path: Path, like: Tensor) -> Tensor:
    """A mask PNG (white = fill) as an engine mask [1, 1, H, W] with 1 = known; transparent pixels count as black (keep)."""
    img = open_image(path, "L", what="mask")
    arr = torch.from_numpy(np.asarray(img, dtype="uint8").copy())
    return mask_from_image(arr, like=like)


def to_model_resolution(x: Tensor, known: Tensor, hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Resize image and mask to the model's (H, W); a model pixel is known only if all its source pixels are."""
    if tuple(x.shape[-2:]) == tuple(hw):
        return x, known
    xs = F.interpolate(x, size=hw, mode="bilinear", antialias=True, align_corners=False)
    ks = (F.interpolate(known, size=hw, mode="area") > 1 - 1e-6).float()
    if ks.sum() == 0:
        raise UsageError(f"at the model's {hw[0]}x{hw[1]} resolution no pixel is fully known; mask less of the image")
    return xs, ks


def impute_image(cfg: ImputeConfig, reporter: Reporter | None = None, loaded: Loaded | None = None,
                 image: Tensor | None = None, known: Tensor | None = None, write: bool = True) -> ImputeResult:
    """Run ``diffuse impute``: n filled candidates at the image's original size; known pixels are the input's exactly.

    The Python face may hand over a model already read (``loaded``), the image as a tensor [1, C, H, W] in [-1, 1]
    and the mask as a tensor [1, 1, H, W] with 1 = known, instead of ``cfg``'s files; ``write=False`` writes no file.
    """
    reporter = reporter or SilentReporter()
    if write:
        check_image_output(cfg.out, individual=cfg.n > 1)  # with -n > 1, --out may be a bare name stem
    for what, path in (("image", cfg.image), ("mask", cfg.mask)):
        if path is not None and not path.is_file():  # before the model: the cheapest mistake is reported first
            raise UsageError(f"{what} {path} does not exist")
    device = build.resolve_device(cfg.device)
    model_path, model, card = open_model(cfg, device, cfg.n, loaded)
    notes: list[str] = []
    if image is None:
        if cfg.image is None:
            raise UsageError("give the image to fill (a file, or a tensor from Python)")
        image = read_image(cfg.image, card.channels, notes)
    elif image.shape[:2] != (1, card.channels):
        raise UsageError(f"the image has shape {tuple(image.shape)}; the model takes [1, {card.channels}, H, W] in [-1, 1]")
    if known is None:
        if cfg.mask is not None:
            known = read_mask(cfg.mask, image)
        elif cfg.mask_kind is not None:
            opts: dict[str, Any] = {}
            if cfg.mask_fraction is not None:
                opts["fraction"] = cfg.mask_fraction
            if cfg.mask_side is not None:
                opts["side"] = cfg.mask_side
            known = make_mask(str(cfg.mask_kind), (1, 1, *image.shape[-2:]), torch.Generator().manual_seed(cfg.seed), **opts)
        else:
            raise UsageError(f"give a mask: a MASK image or --mask {'|'.join(MASKS)}")
    elif known.shape != (1, 1, *image.shape[-2:]):
        raise UsageError(f"the mask has shape {tuple(known.shape)}; it must be [1, 1, H, W] (1 = known) at the image's "
                         f"{image.shape[-2]}x{image.shape[-1]}")
    for note in notes:
        reporter.message(note)
    x_small, known_small = to_model_resolution(image, known, card.image_hw)
    counter = NFECounter(make_score_fn(model))
    method = cfg.method
    if method == "auto":
        method, why = choose_method(known_small, **cfg.options)
        notes.append(f"--method auto chose {method} ({why})")
        reporter.message(notes[-1])
    s = cfg.sampler
    # The sampler section supplies steps, grid and eps to every method; replacement also rides on its sampler.
    # Explicit method options (-o, --particles, ...) win.
    options: dict[str, Any] = {"steps": s.steps, "grid": s.grid, "eps": s.eps}
    if method == "replacement":
        options.update(sampler=s.name, **s.options)
    elif options["grid"] is None:
        options["grid"] = METHODS[method].options()["grid"].default
    options = {k: v for k, v in {**options, **cfg.options}.items() if v is not None}
    t0 = time.perf_counter()
    what = cfg.image.name if cfg.image is not None else "the image"
    reporter.start(reverse_steps(method, **options), f"imputing {what} with {method}")
    # Candidate i draws from its own stream seeded by (seed, i): the same fill whatever -n is.
    filled = impute(model.sde, counter, x_small.to(device), known_small.to(device), method=method, n=cfg.n,
                    generator=ImageGenerators.for_images(cfg.seed, 0, cfg.n, device),
                    callback=lambda info: reporter.advance(1), **options).float().cpu()
    reporter.finish()
    seconds = time.perf_counter() - t0
    # Back to the original size; known pixels come from the input itself, untouched by any resizing.
    if tuple(filled.shape[-2:]) != tuple(image.shape[-2:]):
        filled = F.interpolate(filled, size=tuple(image.shape[-2:]), mode="bicubic", align_corners=False)
    out = torch.where(known.bool(), image, filled.clamp(-1, 1))
    outputs: list[Path] = []
    for i, img in enumerate(to_uint8(out) if write else []):
        path = cfg.out if cfg.n == 1 else cfg.out.with_name(f"{cfg.out.stem}_{i:02d}{cfg.out.suffix or '.png'}")
        save_png(img, path, cfg.upscale)
        outputs.append(path)
    particles = int(options.get("particles", METHODS[method].options()["particles"].default)) if method in PARTICLE_METHODS else 1
    return ImputeResult(outputs, counter.nfe, seconds, model_path, tuple(image.shape[-2:]), method, particles, notes, out, known)

