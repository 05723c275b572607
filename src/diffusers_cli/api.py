"""The Python face, ``import diffusers_cli as dc``: the commands as functions over the same jobs, and notebook helpers.

Each function builds the command's own validated config from its arguments (so a bad argument raises the
command's ``UsageError`` with the command's message) and runs the command's job: ``dc.sample(m, 16, seed=3)``
returns the images that ``diffuse sample --model M -n 16 --seed 3`` writes, as a tensor [n, C, H, W] in [-1, 1].
Sampler options (``order=3``, ``snr=0.1``, ``rho=5`` ...) are keyword arguments, checked against the engine
signatures exactly as ``-o KEY=VALUE`` is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Union, overload

from PIL import Image
from torch import Tensor

from diffusers_cli.config.schema import (
    ConditionConfig,
    EvaluateConfig,
    ImputeConfig,
    SampleConfig,
    TrainConfig,
    build_config,
)
from diffusers_cli.config.overrides import sampler_section
from diffusers_cli.support.errors import UsageError
from diffusers_cli.models import Loaded, load
from diffusers_cli.support.progress import LineReporter, Reporter, SilentReporter
from diffusers_cli.support.image_grids import make_grid, to_pil as _to_pil, to_uint8

#: A loaded model, or anything ``--model`` takes: a run directory, a .safetensors file, a diffusers folder,
#: ``hf:ORG/NAME[@REV]`` or ``builtin:NAME``.
ModelLike = Union[Loaded, str, Path]

#: What ``dc.load_model`` returns: the network, its SDE and card, and where it came from.
Model = Loaded


def load_model(spec: str | Path | None = None, *, use_ema: bool = True, download: bool = False) -> Loaded:
    """Read a model once: any ``--model`` value (None: the newest run under ./runs); ``.card`` says what it is."""
    return load(spec, use_ema=use_ema, download=download)


def list_models() -> list[dict[str, Any]]:
    """The ready-made models (``builtin:NAME``) as `diffuse models --json` lists them."""
    from diffusers_cli.models.builtin import BUILTIN_MODELS, describe

    return [describe(name) for name in BUILTIN_MODELS]


def _model(model: ModelLike) -> Loaded:
    return model if isinstance(model, Loaded) else load(model)


def _reporter(progress: bool) -> Reporter:
    return LineReporter() if progress else SilentReporter()


def _out(out: str | Path | None) -> dict[str, object]:
    return {"out": str(out)} if out is not None else {}


@overload
def sample(model: ModelLike, n: int, *, trajectory: Literal[False] = ..., **kwargs: Any) -> Tensor: ...
@overload
def sample(model: ModelLike, n: int, *, trajectory: Literal[True], **kwargs: Any) -> tuple[Tensor, Tensor]: ...


def sample(
    model: ModelLike,
    n: int,
    *,
    sampler: str | None = None,  # default: `diffuse sample`'s (pc, 1000 steps)
    steps: int | None = None,
    seed: int | None = None,
    label: int | str | None = None,  # class-conditional models: one class (index or name); None: every class in turn
    guidance: float | None = None,  # classifier-free guidance scale (None: the default of `diffuse sample`)
    grid: str | None = None,
    eps: float | None = None,
    final_denoise: bool | None = None,
    first: int | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    out: str | Path | None = None,  # also write the grid (or --individual PNGs) there, as the command does
    individual: bool | None = None,
    trajectory: bool = False,  # also return the trajectory strip (uint8 [C, H, W]) that --trajectory writes
    progress: bool = False,
    **options: Any,
) -> Tensor | tuple[Tensor, Tensor]:
    """``diffuse sample``: n images [n, C, H, W] in [-1, 1]; image i depends only on (seed, i)."""
    from diffusers_cli.jobs.sample import sample_images

    loaded = _model(model)
    cfg = build_config(SampleConfig, None, {
        "model": str(loaded.path), "n": n, "first": first, "batch_size": batch_size, "seed": seed, "device": device,
        "class": None if label is None else str(label), "guidance": guidance, "individual": individual,
        "use_ema": loaded.use_ema, **_out(out), **sampler_section(sampler, steps, grid, eps, final_denoise, options),
    })
    res = sample_images(cfg, _reporter(progress), loaded=loaded, write=out is not None, trajectory=trajectory)
    # Clamped as the PNGs are: the tensor is the written images before rounding.
    images = res.images.clamp(-1, 1)
    if trajectory:
        assert res.trajectory is not None
        return images, res.trajectory
    return images


def condition(
    model: ModelLike,
    label: int | str,
    n: int,
    *,
    classifier: ModelLike | None = None,  # None: a class-conditional model guides itself (classifier-free)
    scale: float | None = None,
    guidance: float | None = None,  # with a classifier on a class-conditional model: steer p(x | y) guided at this scale
    sampler: str | None = None,  # default: `diffuse condition`'s (pc, 1000 steps)
    steps: int | None = None,
    seed: int | None = None,
    grid: str | None = None,
    eps: float | None = None,
    final_denoise: bool | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    out: str | Path | None = None,
    progress: bool = False,
    **options: Any,
) -> Tensor:
    """``diffuse condition``: n images of one class [n, C, H, W] in [-1, 1], steered by a classifier's gradient."""
    from diffusers_cli.jobs.condition import condition as condition_job

    loaded = _model(model)
    clf = _model(classifier) if classifier is not None else None
    cfg = build_config(ConditionConfig, None, {
        "model": str(loaded.path), "classifier": str(clf.path) if clf is not None else None, "class": str(label),
        "scale": scale, "guidance": guidance, "n": n, "seed": seed, "batch_size": batch_size, "device": device, "use_ema": loaded.use_ema,
        **_out(out), **sampler_section(sampler, steps, grid, eps, final_denoise, options),
    })
    res = condition_job(cfg, _reporter(progress), loaded=loaded, classifier=clf, write=out is not None)
    assert res.images is not None
    return res.images.clamp(-1, 1)


def impute(
    model: ModelLike,
    image: Tensor | str | Path,
    mask: Tensor | str | Path,
    *,
    n: int | None = None,
    method: str | None = None,  # default "auto", as `diffuse impute`
    sampler: str | None = None,
    steps: int | None = None,
    seed: int | None = None,
    mask_fraction: float | None = None,
    mask_side: str | None = None,
    device: str | None = None,
    out: str | Path | None = None,
    progress: bool = False,
    **options: Any,
) -> Tensor:
    """``diffuse impute``: n fills [n, C, H, W] in [-1, 1] of ``image`` whose known pixels are the input's exactly.

    ``image``: a file, or a tensor [C, H, W] / [1, C, H, W] in [-1, 1]. ``mask``: a mask file (white = fill), a
    kind (a key of ``engine.masks.MASKS``: ``"half"``, ``"box"`` ...), or a tensor [H, W] / [1, 1, H, W] with 1 = known.
    ``options`` are the method's (``particles=8``) or, for ``method="replacement"``, its sampler's.
    """
    from diffusers_cli.jobs.impute import impute_image

    loaded = _model(model)
    from diffusers_cli.engine.masks import MASKS

    kinds = tuple(MASKS)
    mask_kind = mask if isinstance(mask, str) and mask in kinds else None
    mask_file = None if mask_kind is not None or isinstance(mask, Tensor) else str(mask)
    image_file = None if isinstance(image, Tensor) else str(image)
    if image_file is None and mask_file is not None:
        raise UsageError("with an image tensor, give the mask as a tensor (1 = known) or a kind: " + ", ".join(kinds))
    method_options = {k: v for k, v in options.items() if v is not None}
    # Replacement's extra options are its sampler's; the method check sorts them, as for -o on the command line.
    cfg = build_config(ImputeConfig, None, {
        "model": str(loaded.path), "image": image_file, "mask": mask_file, "mask_kind": mask_kind,
        "mask_fraction": mask_fraction, "mask_side": mask_side, "method": method, "n": n, "seed": seed, "device": device,
        "use_ema": loaded.use_ema, "options": method_options or None, **_out(out),
        **sampler_section(sampler, steps),
    })
    x = None if isinstance(image, str | Path) else image.reshape(1, *image.shape[-3:]).float()
    known = mask.reshape(1, 1, *mask.shape[-2:]).float() if isinstance(mask, Tensor) else None
    res = impute_image(cfg, _reporter(progress), loaded=loaded, image=x, known=known, write=out is not None)
    assert res.images is not None
    return res.images


def evaluate(
    model: ModelLike | None = None,
    *,
    metrics: str | list[str] = "fid,is",
    progress: bool = False,
    **settings: Any,
) -> dict[str, dict[str, Any]]:
    """``diffuse evaluate``: each metric's figures ({"bpd": {"mean": ...}, ...}) and ``"provenance"``.

    ``settings`` are `diffuse evaluate`'s config keys (``num_samples=``, ``images=``, ``reference=``, ``data_dir=``,
    ``bpd_examples=``, ``inception_weights=``, ``sampler={"name": "ei", "steps": 20}`` ...).
    """
    from diffusers_cli.jobs.evaluate import evaluate as evaluate_job

    spec = None if model is None else str(model.path if isinstance(model, Loaded) else model)
    cfg = build_config(EvaluateConfig, None, {"model": spec, "metrics": metrics,
                                              **{k: _plain(v) for k, v in settings.items()}})
    return evaluate_job(cfg, _reporter(progress)).summary()


def tune(
    model: ModelLike | None = None,
    *,
    sampler: str = "ipndm",
    steps: int | list[int] = 5,
    grids: str | Path | None = None,
    progress: bool = False,
    **settings: Any,
) -> list[dict[str, Any]]:
    """``diffuse tune``: the grids.json entries it wrote (times, error against the default grid's, cost ...).

    ``settings`` are `diffuse tune`'s config keys (``batch_size=``, ``seed=``, ``options={"order": 2}`` ...);
    afterwards ``dc.sample(model, n, sampler=..., steps=..., grid="tuned")`` uses the grid.
    """
    from diffusers_cli.config.schema import TuneConfig
    from diffusers_cli.jobs.tune import tune_grids

    spec, use_ema = (str(model.path), model.use_ema) if isinstance(model, Loaded) else (model, True)
    cfg = build_config(TuneConfig, None, {"model": None if spec is None else str(spec), "sampler": sampler, "use_ema": use_ema,
                                          "steps": [steps] if isinstance(steps, int) else list(steps),
                                          "grids": None if grids is None else str(grids), **{k: _plain(v) for k, v in settings.items()}})
    return tune_grids(cfg, _reporter(progress)).entries


def train(*, progress: bool = False, **settings: Any) -> Loaded:
    """``diffuse train``: train a run (settings are its config keys: ``data={"dataset": "shapes", "image_size": 16}``,
    ``steps=200``, ``class_conditional=True``, ``name="mine"`` ...) and return the trained model."""
    from diffusers_cli.jobs.train import train as train_job

    cfg = build_config(TrainConfig, None, {k: _plain(v) for k, v in settings.items()})
    res = train_job(cfg, _reporter(progress))
    return load(res.run_dir)


def _plain(value: Any) -> Any:
    """Paths as strings, as a config file holds them."""
    return str(value) if isinstance(value, Path) else value


def _signed(images: Tensor) -> Tensor:
    """Images in [-1, 1], from floats in [-1, 1] or uint8."""
    return images if images.dtype.is_floating_point else images.float() / 127.5 - 1


def to_pil(image: Tensor, scale: int = 1) -> Image.Image:
    """One image [C, H, W] in [-1, 1] (or uint8) as a PIL image (``scale``: enlarge, nearest neighbour)."""
    return _enlarge(_to_pil(to_uint8(_signed(image).reshape(1, *image.shape[-3:]))[0]), scale)


def grid(images: Tensor, nrow: int | None = None, scale: int = 1) -> Image.Image:
    """Images [n, C, H, W] in [-1, 1] (or uint8) as one PIL grid, as `diffuse sample` writes it."""
    return _enlarge(_to_pil(make_grid(_signed(images), nrow=nrow)), scale)


def _enlarge(img: Image.Image, scale: int) -> Image.Image:
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST) if scale > 1 else img
