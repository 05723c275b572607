"""Validated configuration: pydantic v2 models (extra="forbid") for every job, loaded from YAML/JSON/TOML plus flag overrides."""

from __future__ import annotations

from diffusers_cli.support.errors import UsageError
from diffusers_cli.support.files import check_run_name

import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, get_args

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PositiveFloat,
    NonNegativeInt,
    PositiveInt,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

if TYPE_CHECKING:  # the engine (torch) is imported only when a config is built into objects
    from diffusers_cli.engine.sde import SDE

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


class ConfigError(UsageError):
    """A config file or value is invalid; the message is one line naming the key and the fix."""


class Strict(BaseModel):
    """Base model: unknown keys are errors, so a typo is never a silent default."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ---- the forward process -------------------------------------------------------------


class VEConfig(Strict):
    """Variance-exploding SDE."""

    kind: Literal["ve"] = "ve"
    sigma_min: PositiveFloat = 0.01
    sigma_max: PositiveFloat = 50.0

    @model_validator(mode="after")
    def _order(self) -> "VEConfig":
        if self.sigma_min >= self.sigma_max:
            raise ValueError("sigma_min must be smaller than sigma_max")
        return self

    def build(self) -> "SDE":
        """The engine's VE SDE."""
        from diffusers_cli.engine.sde import VESDE

        return VESDE(sigma_min=self.sigma_min, sigma_max=self.sigma_max)


class _Scheduled(Strict):
    schedule: Literal["linear", "cosine"] = "linear"
    beta_min: PositiveFloat = 0.1
    beta_max: PositiveFloat = 20.0
    cosine_s: float = Field(0.008, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _order(self) -> "_Scheduled":
        if self.beta_min >= self.beta_max:
            raise ValueError("beta_min must be smaller than beta_max")
        return self

    def schedule_obj(self) -> Any:
        """The engine's beta schedule (linear or cosine)."""
        from diffusers_cli.engine.schedules import CosineSchedule, LinearSchedule

        if self.schedule == "cosine":
            return CosineSchedule(s=self.cosine_s)
        return LinearSchedule(beta_min=self.beta_min, beta_max=self.beta_max)


class VPConfig(_Scheduled):
    """Variance-preserving SDE."""

    kind: Literal["vp"] = "vp"

    def build(self) -> "SDE":
        """The engine's VP SDE."""
        from diffusers_cli.engine.sde import VPSDE

        return VPSDE(self.schedule_obj())


class SubVPConfig(_Scheduled):
    """Sub-VP SDE."""

    kind: Literal["subvp"] = "subvp"

    def build(self) -> "SDE":
        """The engine's sub-VP SDE."""
        from diffusers_cli.engine.sde import SubVPSDE

        return SubVPSDE(self.schedule_obj())


class DDPMConfig(_Scheduled):
    """DDPM: the discrete T-step chain, of a named schedule or of an explicit table of betas (a diffusers scheduler's)."""

    kind: Literal["ddpm"] = "ddpm"
    num_steps: PositiveInt = 1000
    # The chain's betas as a table (diffusers' scaled_linear, sigmoid or trained_betas); replaces the schedule.
    betas: list[Annotated[float, Field(gt=0.0, lt=1.0)]] | None = None

    @model_validator(mode="before")
    @classmethod
    def _steps_of_table(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("betas") is not None:
            given = data.get("num_steps")
            if given is not None and int(given) != len(data["betas"]):
                raise ValueError(f"num_steps {given} disagrees with the {len(data['betas'])} betas of the table")
            data = {**data, "num_steps": len(data["betas"])}
        return data

    @model_serializer(mode="wrap")
    def _without_empty_table(self, handler: Any) -> Any:
        # Cards and configs of named schedules stay as they were before tables existed (condition compares them).
        out = handler(self)
        if isinstance(out, dict) and out.get("betas") is None:
            out.pop("betas", None)
        return out

    def build(self) -> "SDE":
        """The engine's discrete DDPM chain."""
        from diffusers_cli.engine.schedules import TabulatedSchedule
        from diffusers_cli.engine.sde import DDPM

        if self.betas is not None:
            return DDPM(TabulatedSchedule(self.betas), num_steps=self.num_steps)
        return DDPM(self.schedule_obj(), num_steps=self.num_steps)


#: The SDE kinds: each config class builds its own SDE. A new kind is one engine class and one class here.
SDE_CONFIGS = (VEConfig, VPConfig, SubVPConfig, DDPMConfig)
SDEConfig = Annotated[Union[SDE_CONFIGS], Field(discriminator="kind")]
SDE_KINDS: tuple[str, ...] = tuple(get_args(c.model_fields["kind"].annotation)[0] for c in SDE_CONFIGS)


# ---- the network ---------------------------------------------------------------------


class NetworkConfig(Strict):
    """U-Net score model; ``preset`` fills the fields left unset."""

    preset: str = "tiny"
    base_channels: PositiveInt | None = None
    channel_mult: list[PositiveInt] | None = None
    num_res_blocks: PositiveInt | None = None
    attn_resolutions: list[PositiveInt] | None = None
    dropout: float | None = Field(None, ge=0.0, lt=1.0)
    embedding: Literal["fourier", "positional"] | None = None
    fourier_scale: PositiveFloat | None = None
    parameterization: Literal["edm", "eps", "score", "x0", "v"] = "edm"


class ClassifierConfig(Strict):
    """Time-dependent WideResNet classifier; ``preset`` fills the fields left unset."""

    preset: str = "wrn-28-10"
    depth: PositiveInt | None = None
    widen: PositiveInt | None = None
    dropout: float | None = Field(None, ge=0.0, lt=1.0)
    fourier_scale: PositiveFloat | None = None


# ---- data ----------------------------------------------------------------------------


def parse_image_size(value: Any) -> Any:
    """An image size as a side (16, "16") or a pair ("32x48", [32, 48] -> (32, 48)); a square pair becomes its side."""
    if isinstance(value, str):
        parts = value.lower().replace(" ", "").split("x")
        if not all(p.isdigit() for p in parts) or len(parts) not in (1, 2):
            raise ValueError(f"image size must be a side (32) or HEIGHTxWIDTH (32x48), got {value!r}")
        value = [int(p) for p in parts]
    if isinstance(value, (list, tuple)):
        if len(value) == 1:
            value = value[0]
        elif len(value) == 2 and value[0] == value[1]:
            value = value[0]
        else:
            value = tuple(value)
    return value


#: A side, or (height, width); strings like "32x48" are read by ``parse_image_size``.
ImageSize = Annotated[Union[PositiveInt, tuple[PositiveInt, PositiveInt]], BeforeValidator(parse_image_size)]


class DataConfig(Strict):
    """Which images to train or evaluate on."""

    dataset: str = "shapes"
    data_dir: Path | None = None
    image_size: ImageSize = 32
    split: Literal["train", "test", "all"] = "train"
    num_examples: PositiveInt | None = None
    channels: Literal[1, 3] | None = None
    flip: bool = False
    download: bool = False
    # Data-loading worker processes; "auto": some for datasets that decode files (folder, cars), 0 for tensors in memory.
    num_workers: NonNegativeInt | Literal["auto"] = "auto"

    @property
    def image_hw(self) -> tuple[int, int]:
        """(height, width) of the images."""
        size = self.image_size
        return (size, size) if isinstance(size, int) else (size[0], size[1])


# ---- sampling ------------------------------------------------------------------------


class SamplerConfig(Strict):
    """A sampler: the fields every sampler has, and ``options`` checked against the engine function's signature.

    Options left unset take the sampler's defaults. Older configs wrote options beside the
    common fields (``sampler: {name: pc, snr: 0.1}``); such keys are moved into ``options``,
    where an unknown one is an error naming the sampler's real options.
    """

    name: str = "pc"
    steps: PositiveInt = 1000
    grid: str | None = None
    eps: PositiveFloat | None = None
    final_denoise: bool = True
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _legacy_options(cls, data: Any) -> Any:
        if isinstance(data, dict):
            common = set(cls.model_fields)
            flat = {k: v for k, v in data.items() if k not in common}
            if flat:
                nested = data.get("options") or {}
                data = {**{k: v for k, v in data.items() if k in common}, "options": {**flat, **nested}}
        return data

    @model_validator(mode="after")
    def _check_options(self) -> "SamplerConfig":
        from diffusers_cli.engine.samplers import split_options

        from diffusers_cli.engine.grids import TUNED

        # A tuned grid is times from grids.json (read by the job, which knows the model): no grid options.
        _, sampler_opts, grid_opts = split_options(self.name, None if self.grid == TUNED else self.grid, self.options)
        if self.grid == TUNED and grid_opts:
            raise ValueError(f"--grid tuned takes no grid options ({', '.join(grid_opts)}): the times come from grids.json")
        # Store the values converted to the signature's types ("3" -> 3), bypassing validate_assignment's recursion.
        object.__setattr__(self, "options", {**sampler_opts, **grid_opts})
        return self


Device = str
Precision = Literal["fp32", "bf16", "fp16"]


# ---- jobs ----------------------------------------------------------------------------


class OptimConfig(Strict):
    """AdamW with linear warm-up, gradient clipping and EMA."""

    lr: PositiveFloat = 2e-4
    weight_decay: float = Field(0.0, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup: int = Field(200, ge=0)
    # Annealing to 0 at the last step; "none" keeps the rate, so a run can be resumed longer as is.
    decay: Literal["none", "cosine", "linear"] = "none"
    grad_clip: float = Field(1.0, ge=0.0)
    # With ema_warmup the decay is min(ema_decay, (1 + n) / (10 + n)): 0.999 is reached only after ~9,000
    # updates, so shorter runs (the 2,000-step Quickstart ends at 0.9955) average over a growing window.
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0)
    ema_warmup: bool = True
    # "power": EDM2's power-function profile (Karras et al. 2024), whose averaging window grows with the run:
    # its width is ema_sigma_rel of the run's length at any step (ema_decay and ema_warmup are then unused).
    ema_profile: Literal["exponential", "power"] = "exponential"
    ema_sigma_rel: float = Field(0.10, gt=0.0, lt=0.28)


#: Optimisation steps of a run given neither steps nor epochs.
DEFAULT_TRAIN_STEPS = 3000


def _split_names(value: Any) -> Any:
    """Metric names as "fid,kid" as well as a list."""
    if isinstance(value, str):
        return [m.strip().lower() for m in value.split(",") if m.strip()]
    return value


def _every(value: Any) -> Any:
    """An evaluation cadence: steps (500, "500") or epochs ("5e", "0.5e"); "0" or 0: never."""
    text = str(value).strip().lower()
    number = text[:-1] if text.endswith("e") else text
    try:
        ok = float(number) >= 0 and (text.endswith("e") or float(number).is_integer())
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"eval every must be a number of steps (500) or epochs (5e), got {value!r}")
    return text


class TrainEvalConfig(Strict):
    """Evaluation during training: image metrics of EMA samples against a reference, every N steps or epochs."""

    every: Annotated[str, BeforeValidator(_every)] = "0"  # "500": steps; "5e": epochs; "0": never
    metrics: Annotated[list[str], BeforeValidator(_split_names)] = Field(default_factory=lambda: ["fid"])
    samples: PositiveInt = 1000  # images per evaluation; few are fast but biased (FID, KID's spread)
    sampler: SamplerConfig = Field(default_factory=lambda: SamplerConfig(name="ei", steps=20))
    reference: str | None = None  # dataset name, image folder or statistics .npz; None: the training data
    split: Literal["train", "test", "all"] = "train"  # of a reference dataset
    reference_examples: PositiveInt | None = None  # a seeded subset of the reference dataset
    keep_best: str | None = None  # metric whose best value keeps best.safetensors (None: the first; "none": off)
    inception_weights: Path | None = None  # None: $DIFFUSE_INCEPTION_WEIGHTS, then torch's hub cache
    seed: int = 0  # of the evaluation samples: the same images every time, apart from the model
    batch_size: PositiveInt = 64
    kid_subsets: PositiveInt = 100  # as `diffuse evaluate --kid-subsets`
    kid_subset_size: int = Field(1000, ge=2)
    fid_bootstrap: int = Field(20, ge=0)  # resamples for FID's std (0: none)

    def steps_between(self, steps_per_epoch: float) -> int:
        """Training steps between evaluations (0: never)."""
        if self.every.endswith("e"):
            return max(1, round(float(self.every[:-1]) * steps_per_epoch)) if float(self.every[:-1]) > 0 else 0
        return int(float(self.every))


class TrainConfig(Strict):
    """``diffuse train``: everything that defines a run."""

    task: Literal["score", "classifier"] = "score"
    sde: SDEConfig = Field(default_factory=VPConfig)
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    loss_weighting: Literal["edm", "eps", "likelihood", "min-snr"] = "edm"
    min_snr_gamma: PositiveFloat = 5.0  # "min-snr": weight min(SNR, gamma) on the x0 error (Hang et al. 2023)
    # "importance": ln(sigma) from a log-normal importance_widen times wider, each loss weighted by the density
    # ratio, so the objective is the "lognormal" one with less gradient noise (engine.objectives).
    time_sampling: Literal["lognormal", "uniform", "importance"] = "lognormal"
    # ln(sigma) ~ N(mean, std^2) for "lognormal", sigma = std(t) / mean(t): EDM's -1.2 / 1.2 by default;
    # a higher mean spends more of training at the noise levels that decide an image's layout (on 16x16
    # shapes -0.4 and +0.2 measured worse than -1.2: benchmarks/README.md).
    lognormal_mean: float = -1.2
    lognormal_std: PositiveFloat = 1.2
    importance_widen: float = Field(1.5, ge=1.0)
    # A class-conditional score net for classifier-free guidance (Ho & Salimans 2022): with probability
    # label_dropout a label is replaced by "no class", so the one net also learns the unconditional score.
    class_conditional: bool = False
    label_dropout: float = Field(0.1, ge=0.0, lt=1.0)
    steps: PositiveInt | None = None  # optimisation steps (None: DEFAULT_TRAIN_STEPS, or as many as epochs make)
    batch_size: PositiveInt = 64
    seed: int = 0
    device: Device = "auto"
    precision: Precision = "fp32"
    compile: bool = False
    channels_last: bool = False
    # Each process runs its share of batch_size in chunks of micro_batch, gradients accumulated: the recipe (global
    # batch, lr, noise draws) stays, the memory a step needs shrinks. None: the whole share at once; "auto": found
    # before the first step (engine.training.largest_micro_batch). Must divide batch_size / processes (the job checks).
    micro_batch: PositiveInt | Literal["auto"] | None = None
    # Recompute the U-Net's blocks in the backward pass (activation checkpointing): less memory, more time.
    checkpointing: bool = False
    out: Path = Path("runs")
    name: str | None = None
    resume: bool = False
    # A model to fine-tune (run, .safetensors, diffusers folder, hf:ORG/NAME[@REV]): its SDE, network and image shape.
    init: str | None = None
    log_every: PositiveInt = 50
    sample_every: int = Field(1000, ge=0)
    checkpoint_every: PositiveInt = 500
    sample_n: PositiveInt = 64
    sampler: SamplerConfig = Field(default_factory=lambda: SamplerConfig(name="ei", steps=30))
    # Instead of steps: passes over the dataset at the global batch size (steps = ceil(epochs * N / batch)).
    epochs: PositiveFloat | None = None
    eval: TrainEvalConfig = Field(default_factory=lambda: TrainEvalConfig())
    # "tensorboard" also writes TensorBoard event files in the run; metrics.jsonl is always written.
    log: Literal["jsonl", "tensorboard"] = "jsonl"
    # A non-finite loss or gradient: "stop" the run (the last checkpoint stays intact), or "skip" the step and
    # count it in metrics.jsonl, stopping after max_skips consecutive skips (a run that stays broken).
    on_nonfinite: Literal["stop", "skip"] = "stop"
    max_skips: PositiveInt = 10

    @field_validator("name")
    @classmethod
    def _one_path_component(cls, name: str | None) -> str | None:
        # Scripts build names from user strings: a name must never reach outside --out or hide itself.
        if name is not None:
            check_run_name(name)
        return name

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> "TrainConfig":
        if self.epochs is not None and self.steps is not None:
            raise ValueError("give steps or epochs, not both (--steps N or --epochs E)")
        return self

    def total_steps(self, num_examples: int) -> int:
        """The step the run ends at: ``steps``, or ceil(epochs * examples / global batch)."""
        if self.epochs is not None:
            return max(1, math.ceil(self.epochs * num_examples / self.batch_size))
        return self.steps if self.steps is not None else DEFAULT_TRAIN_STEPS




class TuneConfig(Strict):
    """``diffuse tune``: time grids tuned to one model for a sampler at some step counts (``engine.grid_tuning``)."""

    model: Path | None = None
    sampler: str = "ipndm"
    steps: list[PositiveInt] = Field(default_factory=lambda: [5], min_length=1)
    options: dict[str, Any] = Field(default_factory=dict)  # the sampler's options (-o), checked per step count
    eps: PositiveFloat | None = None
    final_denoise: bool = True
    batch_size: PositiveInt = 16  # images the grid is tuned on (with a reference solve of each)
    rounds: int = Field(3, ge=0)  # local-search rounds over the interior times
    lattice: int = Field(80, ge=0)  # evaluations of the coarse global stage (0: skip it)
    # "path": each sample's RMS error against the reference solve of its noise; "moments": the batch's moment W2
    # against the reference batch (the only one for stochastic samplers). None: engine.grid_tuning's choice.
    objective: str | None = None
    guidance: float | None = Field(None, ge=0.0)  # class-conditional models (None: DEFAULT_GUIDANCE)
    grids: Path | None = None  # where to write (None: beside the model, or the user's file; tuned_grids)
    seed: int = 0
    download: bool = False
    device: Device = "auto"
    use_ema: bool = True
    runs_dir: Path = Path("runs")

    @field_validator("objective")
    @classmethod
    def _known_objective(cls, objective: str | None) -> str | None:
        from diffusers_cli.engine.grid_tuning import OBJECTIVES

        if objective is not None and objective not in OBJECTIVES:
            raise ValueError(f"must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
        return objective

    @model_validator(mode="after")
    def _check_sampler(self) -> "TuneConfig":
        for steps in self.steps:
            SamplerConfig(name=self.sampler, steps=steps, eps=self.eps, options=self.options)
        return self


class SampleConfig(Strict):
    """``diffuse sample``."""

    model: Path | None = None
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    grids: Path | None = None  # --grid tuned reads this file (None: beside the model, then the user's; tuned_grids)
    # Class-conditional models only: one class (name or index; None: the classes in turn) and the
    # classifier-free guidance scale (None: DEFAULT_GUIDANCE).
    label: str | None = Field(None, alias="class")
    guidance: float | None = Field(None, ge=0.0)
    n: PositiveInt = 64
    first: int = Field(0, ge=0)  # index of the first image: images first .. first + n - 1 of the seed's sequence
    batch_size: PositiveInt = 64
    out: Path = Path("samples.png")
    individual: bool = False
    trajectory: Path | None = None
    labels: bool = False  # captions: class (or index) under each image, step and sigma under each strip column
    seed: int = 0
    download: bool = False  # fetch a missing hf: model into the Hugging Face cache
    device: Device = "auto"
    use_ema: bool = True
    runs_dir: Path = Path("runs")

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)


class ConditionConfig(Strict):
    """``diffuse condition``: classifier guidance toward one class."""

    model: Path | None = None
    classifier: Path | None = None  # None: a class-conditional model guides itself (classifier-free)
    label: str = Field(alias="class")
    scale: float = Field(1.0, ge=0.0)
    # With a classifier and a class-conditional model: the score the classifier steers is the model's own
    # classifier-free guided one at this scale (1: p(x | y)); None: its unconditional ("no class") score.
    guidance: float | None = Field(None, ge=0.0)
    sampler: SamplerConfig = Field(default_factory=lambda: SamplerConfig(name="pc", steps=1000))
    grids: Path | None = None  # --grid tuned reads this file (None: beside the model, then the user's; tuned_grids)
    n: PositiveInt = 64
    batch_size: PositiveInt = 64
    out: Path = Path("conditioned.png")
    individual: bool = False
    seed: int = 0
    download: bool = False  # fetch a missing hf: model into the Hugging Face cache
    device: Device = "auto"
    use_ema: bool = True
    runs_dir: Path = Path("runs")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ImputeConfig(Strict):
    """``diffuse impute``: fill the masked pixels of one image."""

    image: Path | None = None  # None only from the Python face, which hands the job an image tensor
    mask: Path | None = None
    mask_kind: Literal["box", "outpaint", "half", "random-pixels"] | None = None
    mask_fraction: float | None = Field(None, gt=0.0, lt=1.0)
    mask_side: Literal["left", "right", "top", "bottom"] | None = None
    model: Path | None = None
    # "auto": twisted SMC for a few known pixels, repaint for large known regions (engine.imputation.choose_method).
    method: str = "auto"
    # The method's options, checked against its signature (engine.imputation.METHODS); replacement
    # passes the ones it does not take on to its sampler.
    options: dict[str, Any] = Field(default_factory=dict)
    sampler: SamplerConfig = Field(default_factory=lambda: SamplerConfig(name="ddpm", steps=200))
    n: PositiveInt = 1
    out: Path = Path("filled.png")
    seed: int = 0
    download: bool = False  # fetch a missing hf: model into the Hugging Face cache
    device: Device = "auto"
    use_ema: bool = True
    runs_dir: Path = Path("runs")

    @model_validator(mode="before")
    @classmethod
    def _legacy_options(cls, data: Any) -> Any:
        # Older configs wrote the method's options at the top level.
        if isinstance(data, dict) and any(k in data for k in _LEGACY_METHOD_KEYS):
            moved = {k: data[k] for k in _LEGACY_METHOD_KEYS if k in data and data[k] is not None}
            data = {**{k: v for k, v in data.items() if k not in _LEGACY_METHOD_KEYS},
                    "options": {**moved, **(data.get("options") or {})}}
        return data

    @model_validator(mode="after")
    def _one_mask(self) -> "ImputeConfig":
        # An image tensor (the Python face) may come with a mask tensor instead of either.
        if (self.mask is not None and self.mask_kind is not None) or (self.image is not None and self.mask is None
                                                                      and self.mask_kind is None):
            raise ValueError("give exactly one of a MASK image or --mask box|half|random-pixels|outpaint")
        from diffusers_cli.engine.imputation import check_method, validate_method_options

        if self.method != "auto":
            spec = check_method(self.method)
            # Replacement rides on the sampler section's sampler (the job passes it), so its options are that one's.
            given = "sampler" in self.options or not spec.takes_sampler_options
            checked = validate_method_options(self.method, self.options if given else {"sampler": self.sampler.name, **self.options})
            object.__setattr__(self, "options", checked if given else {k: v for k, v in checked.items() if k != "sampler"})
        return self


#: Top-level ImputeConfig keys of older configs, now method options.
_LEGACY_METHOD_KEYS = ("particles", "jump_length", "resample")


# ---- loading -------------------------------------------------------------------------


def read_config_file(path: Path) -> dict[str, Any]:
    """Read a YAML, JSON or TOML config file into a dict (by extension)."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass an existing YAML, JSON or TOML file to --config")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        elif suffix == ".json":
            data = json.loads(text)
        elif suffix == ".toml":
            data = tomllib.loads(text)
        else:
            raise ConfigError(f"config file {path} has an unknown extension; use .yaml, .yml, .json or .toml")
    except (yaml.YAMLError, json.JSONDecodeError, tomllib.TOMLDecodeError) as err:
        first = str(err).splitlines()[0]
        raise ConfigError(f"config file {path} is not valid {suffix[1:].upper()}: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values at the top level")
    return data


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set ``data["a"]["b"] = value`` for key "a.b", creating levels as needed."""
    parts = key.split(".")
    node = data
    for p in parts[:-1]:
        nxt = node.get(p)
        if not isinstance(nxt, dict):
            nxt = {}
            node[p] = nxt
        node = nxt
    node[parts[-1]] = value


def format_validation_error(err: ValidationError, where: str) -> str:
    """One line naming the first invalid key, what is wrong, and the offending value."""
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"] if not (isinstance(p, str) and p in SDE_KINDS)) or "(top level)"
    msg = e["msg"]
    if e["type"] == "extra_forbidden":
        return f"invalid {where}: unknown key {loc!r} (check its spelling; unknown keys are not ignored)"
    if e["type"] == "union_tag_invalid":
        return f"invalid {where}: {loc}.kind must be one of {', '.join(SDE_KINDS)}"
    if e["type"] == "value_error":
        # A validator's own message (an option check, a range between fields) already names the value.
        text = msg.removeprefix("Value error, ")
        return f"invalid {where}: {loc + ': ' if loc != '(top level)' else ''}{text}"
    got = e.get("input")
    shown = f" (got {got!r})" if got is not None and not isinstance(got, dict) else ""
    return f"invalid {where}: {loc}: {msg}{shown}"


def build_config(model: type[Strict], file: Path | None, overrides: dict[str, Any]) -> Any:
    """Validate file values with flag overrides (dotted keys; None means "not given") on top."""
    data: dict[str, Any] = read_config_file(file) if file is not None else {}
    for key, value in overrides.items():
        if value is not None:
            set_dotted(data, key, value)
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, "config")) from None


def dump_config(cfg: BaseModel) -> dict[str, Any]:
    """The config as plain JSON-able data (paths as strings)."""
    return cfg.model_dump(mode="json")


# ---- evaluation ----------------------------------------------------------------------


class EvaluateConfig(Strict):
    """``diffuse evaluate``: FID and Inception Score of generated (or given) images, bits/dim of a model."""

    model: Path | None = None                             # run directory or .safetensors; None: the newest run
    images: Path | None = None                            # evaluate this folder of images instead of generating
    metrics: list[str] = Field(default_factory=lambda: ["fid", "is"])
    num_samples: PositiveInt | None = None                # images to generate (None: 50,000) or to take from --images
    reference: str | None = None                          # dataset name, image folder or statistics .npz
    data_dir: Path | None = None                          # where the reference (and bits/dim) dataset's files are
    split: Literal["train", "test", "all"] = "train"      # reference dataset split
    image_size: ImageSize | None = None                   # reference dataset resolution (None: the model's)
    reference_examples: PositiveInt | None = None         # a seeded subset of the reference dataset
    download: bool = False                                # let torchvision fetch a missing dataset, huggingface_hub an hf: model
    save_reference_stats: Path | None = None              # cache of the reference statistics (.npz, pytorch-fid keys)
    inception_weights: Path | None = None                 # None: $DIFFUSE_INCEPTION_WEIGHTS, then torch's hub cache
    allow_few: bool = False                               # permit FID from <= 2048 images (and IS in one split)
    is_splits: PositiveInt = 10
    kid_subsets: PositiveInt = 100                        # KID: random subsets averaged (clean-fid's, torch-fidelity's 100)
    kid_subset_size: int = Field(1000, ge=2)              # KID: images per subset at most
    fid_bootstrap: int = Field(20, ge=0)                  # FID: bootstrap resamples for its std (0: none)
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    grids: Path | None = None  # --grid tuned reads this file (None: beside the model, then the user's; tuned_grids)
    guidance: float | None = Field(None, ge=0.0)              # class-conditional models (None: DEFAULT_GUIDANCE)
    batch_size: PositiveInt = 64
    seed: int = 0
    device: Device = "auto"
    use_ema: bool = True
    runs_dir: Path = Path("runs")
    bpd_dataset: str | None = None                        # None: the model's own dataset
    bpd_split: Literal["train", "test", "all"] = "test"
    bpd_examples: PositiveInt | None = None               # None: the whole split
    bpd_runs: PositiveInt = 1                             # runs of the trace estimator (mean and spread over runs)
    bpd_rtol: PositiveFloat = 1e-5
    bpd_atol: PositiveFloat = 1e-5
    bpd_probe: Literal["rademacher", "gaussian", "exact"] = "rademacher"

    @model_validator(mode="before")
    @classmethod
    def _split_metrics(cls, data: Any) -> Any:
        """Accept metrics as "fid,is,bpd" as well as a list."""
        if isinstance(data, dict) and isinstance(data.get("metrics"), str):
            data = {**data, "metrics": [m.strip().lower() for m in data["metrics"].split(",") if m.strip()]}
        return data
