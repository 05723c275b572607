"""The Python face, ``import diffusers_cli as dc``: the commands as functions over the same jobs, and notebook helpers.

Each function builds the command's own validated config from its arguments (so a bad argument raises the
command's ``UsageError`` with the command's message) and runs the command's job: ``dc.sample(m, 16, seed=3)``
returns the images that ``diffuse sample --model M -n 16 --seed 3`` writes, as a tensor [n, C, H, W] in [-1, 1].
Sampler options (``order=3``, ``snr=0.1``, ``rho=5`` ...) are keyword arguments, checked against the engine
signatures exactly as ``-o KEY=VALUE`` is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, TypeVar, Union, overload

from PIL import Image
from pydantic import BaseModel
from torch import Tensor

from diffusers_cli.config.defaults import DEFAULT_GUIDANCE, DEFAULT_SAMPLER, DEFAULT_STEPS
from diffusers_cli.config.schema import (
    ConditionConfig,
    EvaluateConfig,
    ImputeConfig,
    ModelSource,
    SampleConfig,
    SamplerConfig,
    TrainConfig,
    TuneConfig,
    build_config,
)
from diffusers_cli.config.overrides import sampler_section
from diffusers_cli.engine.metrics.fid import RECOMMENDED_SAMPLES
from diffusers_cli.engine.grids import GRIDS
from diffusers_cli.engine.samplers import SAMPLERS
from diffusers_cli.parts.sampler_choice import GIVEN
from diffusers_cli.support.errors import UsageError
from diffusers_cli.models import Loaded, load
from diffusers_cli.support.progress import LineReporter, Reporter, SilentReporter
from diffusers_cli.support.image_grids import make_grid, to_pil as _to_pil, to_uint8

#: A loaded model, or anything ``--model`` takes: a run directory, a .safetensors file, a diffusers folder,
#: ``hf:ORG/NAME[@REV]`` or ``builtin:NAME``.
ModelLike = Union[Loaded, str, Path]

#: What ``dc.load_model`` returns: the network, its SDE and card, and where it came from.
Model = Loaded

_F = TypeVar("_F", bound=Callable[..., Any])


def _default(config: type[BaseModel], name: str) -> Any:
    """A config field's default, as the command uses it when the flag is not given: the one place defaults live."""
    return config.model_fields[name].get_default(call_default_factory=True)


def _one(values: list[int]) -> int | list[int]:
    """A one-element list as its element (the signature shows ``steps=5``, not ``[5]``)."""
    return values[0] if len(values) == 1 else values


_IMPUTE_SAMPLER: SamplerConfig = _default(ImputeConfig, "sampler")

#: The facts the docstrings below name, read from where they are defined (config schema, config.defaults),
#: so that ``help(dc.sample)`` cannot drift from what runs.
FACTS: dict[str, Any] = {
    "default_sampler": DEFAULT_SAMPLER, "default_steps": DEFAULT_STEPS, "default_guidance": DEFAULT_GUIDANCE,
    "impute_sampler": _IMPUTE_SAMPLER.name, "impute_steps": _IMPUTE_SAMPLER.steps,
    "samplers": ", ".join(SAMPLERS), "grids": ", ".join(f'"{g}"' for g in GRIDS),
    "evaluate_samples": f"{RECOMMENDED_SAMPLES:,}", "runs_dir": _default(ModelSource, "runs_dir"),
}


def _explained(fn: _F) -> _F:
    """Fill a face function's docstring with FACTS ({default_sampler} ...)."""
    fn.__doc__ = (fn.__doc__ or "").format(**FACTS)
    return fn


@dataclass(frozen=True)
class RunInfo:
    """What a call of ``dc.sample``, ``dc.condition`` or ``dc.impute`` ran: the ``.info`` of the tensor it returns.

    Attributes:
        sampler: The sampler that ran (``dc.impute``: the imputation method; with "replacement", its sampler too).
        steps: Its steps.
        why: Where the sampler and steps came from: "as given", "the model card's recommendation", "the default
            sampler and steps; the model card recommends none", ... (``dc.impute``: "auto"'s choice, if it chose).
        nfe: Score-network evaluations per image. Classifier-free guidance at a scale other than 0 or 1 evaluates
            the net on the conditional and the "no class" input, so it counts 2 a call; a classifier's gradient
            (``dc.condition(classifier=...)``) is not counted.
        seconds: Wall time of the sampling (the model already loaded).
    """

    sampler: str
    steps: int
    why: str
    nfe: int
    seconds: float


def _with_info(images: Tensor, info: RunInfo) -> Tensor:
    """The images with ``.info`` set: the tensor stays a plain tensor, so every caller of old keeps working."""
    images.info = info  # type: ignore[attr-defined]
    return images


@_explained
def load_model(spec: str | Path | None = None, *, use_ema: bool = True, download: bool = False) -> Loaded:
    """Read a model once, to pass to ``dc.sample``, ``dc.condition``, ``dc.impute`` without reading it again.

    Args:
        spec: Anything ``--model`` takes: a run directory (``RUN@STEP``: its snapshot of that step), a .safetensors
            file, a diffusers folder, ``hf:ORG/NAME[@REV]`` or ``builtin:NAME`` (``dc.list_models()``). None: the
            newest run under ``{runs_dir}``.
        use_ema: Our runs: the EMA weights (False: the online ones).
        download: Fetch an ``hf:`` model missing from the Hugging Face cache (nothing downloads otherwise).

    Returns:
        The model (``dc.Model``): ``.card`` says what it is, ``.net``, ``.sde`` and ``.score`` are the engine's
        objects; its class documents every attribute.

    Raises:
        UsageError: The model is missing, damaged or not a model (``diffuse`` exits 2 on it).
    """
    return load(spec, use_ema=use_ema, download=download)


def list_models() -> list[dict[str, Any]]:
    """The ready-made models (``builtin:NAME``) as `diffuse models --json` lists them.

    Returns:
        One dict a model: name, kind, description, image shape, classes, SDE, recipe, measured quality ...
    """
    from diffusers_cli.models.builtin import BUILTIN_MODELS, describe

    return [describe(name) for name in BUILTIN_MODELS]


def _model(model: ModelLike) -> Loaded:
    return model if isinstance(model, Loaded) else load(model)


def _reporter(progress: bool) -> Reporter:
    return LineReporter() if progress else SilentReporter()


def _out(out: str | Path | None) -> dict[str, object]:
    return {"out": str(out)} if out is not None else {}


#: The keyword arguments dc.sample, dc.condition and dc.impute share, in the order each of them takes them:
#: last, after what the command itself needs (tests/test_api.py checks the signatures against it).
COMMON_KEYWORDS = ("sampler", "steps", "grid", "eps", "final_denoise", "seed", "batch_size", "device", "out", "progress")


@overload
def sample(model: ModelLike, n: int, *, trajectory: Literal[False] = ..., **kwargs: Any) -> Tensor: ...
@overload
def sample(model: ModelLike, n: int, *, trajectory: Literal[True], **kwargs: Any) -> tuple[Tensor, Tensor]: ...


@_explained
def sample(
    model: ModelLike,
    n: int,
    *,
    label: int | str | None = None,
    guidance: float | None = None,
    first: int = _default(SampleConfig, "first"),
    individual: bool = _default(SampleConfig, "individual"),
    trajectory: bool = False,
    sampler: str | None = None,
    steps: int | None = None,
    grid: str | None = None,
    eps: float | None = None,
    final_denoise: bool = _default(SamplerConfig, "final_denoise"),
    seed: int = _default(SampleConfig, "seed"),
    batch_size: int = _default(SampleConfig, "batch_size"),
    device: str = _default(SampleConfig, "device"),
    out: str | Path | None = None,
    progress: bool = False,
    **options: Any,
) -> Tensor | tuple[Tensor, Tensor]:
    """``diffuse sample``: n images of a model; image i depends only on (seed, first + i).

    ``dc.sample(m, 16, seed=3)`` returns the images ``diffuse sample --model M -n 16 --seed 3`` writes.

    Args:
        model: A model from ``dc.load_model``, or anything ``--model`` takes (``"builtin:mnist"``, a run ...).
        n: How many images.
        label: Class-conditional models: one class, by index or name. None: every class in turn (image i of
            class i mod the number of classes).
        guidance: Class-conditional models: the classifier-free guidance scale (1: plain p(x | class), 0:
            unconditional). None: {default_guidance:g}. An unconditional model takes neither label nor guidance.
        first: Index of the first image: images first .. first + n - 1 of the seed's sequence.
        individual: With ``out``: one PNG an image (``out`` is their name stem) instead of a grid.
        trajectory: Also return the strip of x_t along the way (uint8 [C, H, W]) that ``--trajectory`` writes.
        sampler: The sampler: {samplers}. None: the model card's recommended
            sampler (``model.card.recommended``; the ready-made models have one), else {default_sampler}.
        steps: The sampler's steps. None: the card's steps (when it recommends this sampler), else
            {default_steps}. ``images.info`` says which sampler ran, at how many steps, and why.
        grid: The time grid: {grids}, or "tuned" (the model's own, from ``dc.tune``).
            None: the sampler's own.
        eps: The last time of the grid. None: the SDE's own (``model.sde.eps``).
        final_denoise: Finish with Tweedie's denoising step (1 extra network evaluation).
        seed: The seed; image i depends only on (seed, first + i), whatever the batch size.
        batch_size: Images a forward pass (does not change the images).
        device: "auto" (CUDA, then MPS, then CPU), "cpu", "cuda", "cuda:1" ...
        out: Also write the grid (or, with ``individual``, the PNGs) there, as the command does.
        progress: Print a progress line a batch.
        **options: The sampler's own options (``order=3``, ``snr=0.1``, ``rho=5`` ...), checked against its engine
            signature as ``-o KEY=VALUE`` is; ``diffuse samplers`` lists them with their defaults.

    Returns:
        The images [n, C, H, W] in [-1, 1] (clamped, as the PNGs are before rounding), with ``.info`` (a
        ``RunInfo``: sampler, steps, why, nfe, seconds); with ``trajectory=True``, (images, strip).

    Raises:
        UsageError: A bad argument, with the message ``diffuse sample`` gives (it exits 2 on it).
    """
    from diffusers_cli.jobs.sample import sample_images

    loaded = _model(model)
    cfg = build_config(SampleConfig, None, {
        "model": str(loaded.path), "n": n, "first": first, "batch_size": batch_size, "seed": seed, "device": device,
        "class": None if label is None else str(label), "guidance": guidance, "individual": individual,
        "use_ema": loaded.use_ema, **_out(out), **sampler_section(sampler, steps, grid, eps, final_denoise, options),
    })
    res = sample_images(cfg, _reporter(progress), loaded=loaded, write=out is not None, trajectory=trajectory)
    assert res.choice is not None
    ran = res.choice.sampler
    # Clamped as the PNGs are: the tensor is the written images before rounding.
    images = _with_info(res.images.clamp(-1, 1), RunInfo(ran.name, ran.steps, res.choice.why, res.nfe, res.seconds))
    if trajectory:
        assert res.trajectory is not None
        return images, res.trajectory
    return images


@_explained
def condition(
    model: ModelLike,
    label: int | str,
    n: int = _default(ConditionConfig, "n"),
    *,
    classifier: ModelLike | None = None,
    scale: float = _default(ConditionConfig, "scale"),
    guidance: float | None = None,
    individual: bool = _default(ConditionConfig, "individual"),
    sampler: str | None = None,
    steps: int | None = None,
    grid: str | None = None,
    eps: float | None = None,
    final_denoise: bool = _default(SamplerConfig, "final_denoise"),
    seed: int = _default(ConditionConfig, "seed"),
    batch_size: int = _default(ConditionConfig, "batch_size"),
    device: str = _default(ConditionConfig, "device"),
    out: str | Path | None = None,
    progress: bool = False,
    **options: Any,
) -> Tensor:
    """``diffuse condition``: n images of one class, steered by a classifier's gradient or the model's own guidance.

    Args:
        model: The score model, from ``dc.load_model`` or anything ``--model`` takes.
        label: The class, by index or name.
        n: How many images.
        classifier: A noise-aware classifier (``diffuse train --task classifier``, ``builtin:mnist-classifier``)
            whose gradient steers the model. None: a class-conditional model guides itself (classifier-free).
        scale: The guidance scale: the classifier's gradient times this, or without a classifier the
            classifier-free scale (1: plain p(x | class)).
        guidance: With a classifier and a class-conditional model: the classifier steers the model's own
            classifier-free guided score at this scale (1: p(x | class)). None: its unconditional score.
        individual: With ``out``: one PNG an image instead of a grid.
        sampler: The sampler: {samplers}. None: the model card's recommended
            sampler (``model.card.recommended``), else {default_sampler}.
        steps: The sampler's steps. None: the card's (when it recommends this sampler), else {default_steps}.
        grid: The time grid: {grids}, or "tuned" (the model's own, from ``dc.tune``).
            None: the sampler's own.
        eps: The last time of the grid. None: the SDE's own (``model.sde.eps``).
        final_denoise: Finish with Tweedie's denoising step (1 extra network evaluation).
        seed: The seed; image i depends only on (seed, i).
        batch_size: Images a forward pass (does not change the images).
        device: "auto" (CUDA, then MPS, then CPU), "cpu", "cuda" ...
        out: Also write the grid (or the PNGs) there, as the command does.
        progress: Print a progress line a batch.
        **options: The sampler's own options (``order=3`` ...), checked against its engine signature.

    Returns:
        The images [n, C, H, W] in [-1, 1] with ``.info`` (a ``RunInfo``: sampler, steps, why, nfe, seconds).

    Raises:
        UsageError: A bad argument, with the message ``diffuse condition`` gives (it exits 2 on it).
    """
    from diffusers_cli.jobs.condition import condition as condition_job

    loaded = _model(model)
    clf = _model(classifier) if classifier is not None else None
    cfg = build_config(ConditionConfig, None, {
        "model": str(loaded.path), "classifier": str(clf.path) if clf is not None else None, "class": str(label),
        "scale": scale, "guidance": guidance, "n": n, "seed": seed, "batch_size": batch_size, "device": device,
        "individual": individual, "use_ema": loaded.use_ema,
        **_out(out), **sampler_section(sampler, steps, grid, eps, final_denoise, options),
    })
    res = condition_job(cfg, _reporter(progress), loaded=loaded, classifier=clf, write=out is not None)
    assert res.images is not None and res.choice is not None
    ran = res.choice.sampler
    return _with_info(res.images.clamp(-1, 1), RunInfo(ran.name, ran.steps, res.choice.why, res.nfe, res.seconds))


@_explained
def impute(
    model: ModelLike,
    image: Tensor | str | Path,
    mask: Tensor | str | Path,
    *,
    n: int = _default(ImputeConfig, "n"),
    method: str = _default(ImputeConfig, "method"),
    mask_fraction: float | None = None,
    mask_side: str | None = None,
    sampler: str | None = None,
    steps: int | None = None,
    grid: str | None = None,
    eps: float | None = None,
    seed: int = _default(ImputeConfig, "seed"),
    device: str = _default(ImputeConfig, "device"),
    out: str | Path | None = None,
    progress: bool = False,
    **options: Any,
) -> Tensor:
    """``diffuse impute``: n fills of ``image``'s unknown pixels; the known pixels are the input's exactly.

    Args:
        model: The score model, from ``dc.load_model`` or anything ``--model`` takes.
        image: A file, or a tensor [C, H, W] / [1, C, H, W] in [-1, 1] (any size: filled at the model's, pasted back).
        mask: A mask file (white = fill), a kind (a key of ``engine.masks.MASKS``: "half", "box" ...), or a tensor
            [H, W] / [1, 1, H, W] with 1 = known.
        n: How many fills (candidate i depends only on (seed, i)).
        method: The imputation method (``engine.imputation.METHODS``); "auto": twisted SMC for a few known pixels,
            RePaint for large known regions.
        mask_fraction: A mask kind's share of the image to fill. None: the kind's own.
        mask_side: The "half" kind's side to fill. None: its own.
        sampler: The sampler of ``method="replacement"`` (the other methods are their own samplers).
            None: {impute_sampler} (the model card's recommendation is not used: the methods need an ancestral
            sampler, and the card recommends a fast deterministic one).
        steps: The reverse steps of every method. None: {impute_steps}.
        grid: The time grid. None: the method's (or the sampler's) own.
        eps: The last time of the grid. None: the SDE's own (``model.sde.eps``).
        seed: The seed of the fills (and of a random mask kind).
        device: "auto" (CUDA, then MPS, then CPU), "cpu", "cuda" ...
        out: Also write the fills there (``NAME_00.png`` ... when n > 1), as the command does.
        progress: Print a progress line a step.
        **options: The method's options (``particles=8``) or, for ``method="replacement"``, its sampler's.

    Returns:
        The filled images [n, C, H, W] in [-1, 1] at the input's size, with ``.info`` (a ``RunInfo``: the
        method, steps, why, nfe, seconds).

    Raises:
        UsageError: A bad argument, with the message ``diffuse impute`` gives (it exits 2 on it).
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
        **sampler_section(sampler, steps, grid, eps),
    })
    x = None if isinstance(image, str | Path) else image.reshape(1, *image.shape[-3:]).float()
    known = mask.reshape(1, 1, *mask.shape[-2:]).float() if isinstance(mask, Tensor) else None
    res = impute_image(cfg, _reporter(progress), loaded=loaded, image=x, known=known, write=out is not None)
    assert res.images is not None
    ran = res.method + (f" ({cfg.sampler.name})" if res.method == "replacement" else "")
    why = next((note for note in res.notes if note.startswith("--method auto")), GIVEN if method != "auto" else "")
    return _with_info(res.images, RunInfo(ran, cfg.sampler.steps, why, res.nfe, res.seconds))


@_explained
def evaluate(
    model: ModelLike | None = None,
    *,
    metrics: str | list[str] = ",".join(_default(EvaluateConfig, "metrics")),
    progress: bool = False,
    **settings: Any,
) -> dict[str, dict[str, Any]]:
    """``diffuse evaluate``: image metrics of a model's samples (or of a folder of images), and bits/dim.

    Args:
        model: The model, from ``dc.load_model`` or anything ``--model`` takes. None: the newest run under
            ``{runs_dir}`` (or no model, with ``images=``).
        metrics: Metric names, as a list or comma-separated ("fid,kid,is,bpd"; ``diffuse metrics`` lists them).
        progress: Print progress lines.
        **settings: `diffuse evaluate`'s config keys: ``num_samples=`` (None: {evaluate_samples}), ``images=``,
            ``reference=``, ``data_dir=``, ``bpd_examples=``, ``inception_weights=``, ``seed=``,
            ``sampler={{"name": "ei", "steps": 20}}`` (default: {default_sampler}, {default_steps} steps) ...; their
            defaults are ``EvaluateConfig``'s (``diffusers_cli.config.schema``).

    Returns:
        Each metric's figures (``{{"fid": {{"value": ...}}, "bpd": {{"mean": ...}}, ...}}``) and ``"provenance"``
        (what was scored: samples, sampler, steps, NFE, seed ...).

    Raises:
        UsageError: A bad setting, with the message ``diffuse evaluate`` gives (it exits 2 on it).
    """
    from diffusers_cli.jobs.evaluate import evaluate as evaluate_job

    spec = None if model is None else str(model.path if isinstance(model, Loaded) else model)
    cfg = build_config(EvaluateConfig, None, {"model": spec, "metrics": metrics,
                                              **{k: _plain(v) for k, v in settings.items()}})
    return evaluate_job(cfg, _reporter(progress)).summary()


@_explained
def tune(
    model: ModelLike | None = None,
    *,
    sampler: str = _default(TuneConfig, "sampler"),
    steps: int | list[int] = _one(_default(TuneConfig, "steps")),
    grids: str | Path | None = None,
    progress: bool = False,
    **settings: Any,
) -> list[dict[str, Any]]:
    """``diffuse tune``: time grids fitted to one model for a sampler at some step counts.

    Afterwards ``dc.sample(model, n, sampler=..., steps=..., grid="tuned")`` samples on the tuned grid.

    Args:
        model: The model, from ``dc.load_model`` or anything ``--model`` takes. None: the newest run under
            ``{runs_dir}``.
        sampler: The sampler whose grid is tuned: {samplers}.
        steps: The step count, or several (one grid each).
        grids: The grids.json to write. None: beside the model (a run), else the user's file.
        progress: Print progress lines.
        **settings: `diffuse tune`'s config keys (``batch_size=``, ``seed=``, ``rounds=``, ``objective=``,
            ``options={{"order": 2}}`` ...); their defaults are ``TuneConfig``'s (``diffusers_cli.config.schema``).

    Returns:
        The grids.json entries written: times, error against the default grid's, cost ...

    Raises:
        UsageError: A bad setting, with the message ``diffuse tune`` gives (it exits 2 on it).
    """
    from diffusers_cli.jobs.tune import tune_grids

    spec, use_ema = (str(model.path), model.use_ema) if isinstance(model, Loaded) else (model, True)
    cfg = build_config(TuneConfig, None, {"model": None if spec is None else str(spec), "sampler": sampler, "use_ema": use_ema,
                                          "steps": [steps] if isinstance(steps, int) else list(steps),
                                          "grids": None if grids is None else str(grids), **{k: _plain(v) for k, v in settings.items()}})
    return tune_grids(cfg, _reporter(progress)).entries


def judge(images: Tensor, model: str | Path = "builtin:mnist-judge") -> tuple[Tensor, Tensor]:
    """Read images with an independent judge: which class each is, and how sure the judge is.

    Count a sample as recognised when its class is not the last ("none of them") and its confidence is
    >= 0.9; a judge that did not steer the samples grades them honestly (a guiding classifier grades its
    own guidance).

    Args:
        images: [n, C, H, W] in [-1, 1], as ``dc.sample`` returns them, of the judge's image shape.
        model: the judge: ``builtin:mnist-judge`` (a plain CNN of clean MNIST digits; its card gives its
            recipe and held-out accuracy) or a judge's .safetensors file.

    Returns:
        (classes [n], confidence [n]): class indices into the judge card's ``class_names`` (the last is
        "none"), and the judge's probability of that class.

    Raises:
        UsageError: the judge file is missing or holds no judge, or the images are not of its shape.
    """
    from diffusers_cli.parts.judging import judge as read

    return read(images, model)


def train(*, progress: bool = False, **settings: Any) -> Loaded:
    """``diffuse train``: train a run and return the trained model.

    Args:
        progress: Print progress lines.
        **settings: `diffuse train`'s config keys, nested as in a config file: ``data={"dataset": "shapes",
            "image_size": 16}``, ``steps=200``, ``class_conditional=True``, ``name="mine"``, ``sde={"kind": "ve"}``
            ...; their defaults are ``TrainConfig``'s (``diffusers_cli.config.schema``; ``diffuse train --help``).

    Returns:
        The trained model (``dc.Model``), read from the run directory.

    Raises:
        UsageError: A bad setting, with the message ``diffuse train`` gives (it exits 2 on it).
    """
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
