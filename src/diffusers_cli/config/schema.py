"""Validated configuration: pydantic v2 models (extra="forbid") for every job, loaded from YAML/JSON/TOML plus flag overrides."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated, Any, Iterable, Literal, Union

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PositiveFloat,
    NonNegativeInt,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from diffusers_cli.config.base import ConfigError, Strict
from diffusers_cli.config.defaults import DEFAULT_SAMPLER, DEFAULT_STEPS, LogKind, Precision
from diffusers_cli.config.sde import SDE_KINDS, SDEConfig, VPConfig
from diffusers_cli.data.spec import Split  # torch-free
from diffusers_cli.engine.choices import EmaProfile, LrDecay, Parameterization, Probe, TimeSampling  # torch-free
from diffusers_cli.engine.metrics.metric import check_metric_options  # torch-free
from diffusers_cli.engine.weightings import DEFAULT_WEIGHTING  # torch-free
from diffusers_cli.support.files import check_run_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


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
    parameterization: Parameterization = "edm"


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
    split: Split = "train"
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


class PrepareConfig(Strict):
    """``diffuse prepare``: a dataset decoded, cropped and resized once into a uint8 .safetensors file for training."""

    dataset: str                                    # a dataset name or a folder of images
    out: Path                                       # the .safetensors file to write
    image_size: ImageSize                           # the resolution training will use
    data_dir: Path | None = None
    split: Split = "train"
    channels: Literal[1, 3] | None = None           # None: the dataset's own
    num_examples: PositiveInt | None = None         # a seeded subset; None: every example
    crop_boxes: bool = False                        # crop Stanford Cars to its boxes first
    seed: int = 0                                   # shapes' images and the choice of a num_examples subset
    download: bool = False
    num_workers: int = Field(0, ge=0)               # processes that decode (0: the main one)


# ---- sampling ------------------------------------------------------------------------


class SamplerConfig(Strict):
    """A sampler: the fields every sampler has, and ``options`` checked against the engine function's signature.

    Options left unset take the sampler's defaults. Older configs wrote options beside the
    common fields (``sampler: {name: pc, snr: 0.1}``); such keys are moved into ``options``,
    where an unknown one is an error naming the sampler's real options.
    """

    name: str = DEFAULT_SAMPLER
    steps: PositiveInt = DEFAULT_STEPS
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


# ---- jobs ----------------------------------------------------------------------------


class OptimConfig(Strict):
    """AdamW with linear warm-up, gradient clipping and EMA."""

    lr: PositiveFloat = 2e-4
    weight_decay: float = Field(0.0, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup: int = Field(200, ge=0)
    # Annealing to 0 at the last step; "none" keeps the rate, so a run can be resumed longer as is.
    decay: LrDecay = "none"
    grad_clip: float = Field(1.0, ge=0.0)
    # With ema_warmup the decay is min(ema_decay, (1 + n) / (10 + n)): 0.999 is reached only after ~9,000
    # updates, so shorter runs (the 2,000-step Quickstart ends at 0.9955) average over a growing window.
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0)
    ema_warmup: bool = True
    # "power": EDM2's power-function profile (Karras et al. 2024), whose averaging window grows with the run:
    # its width is ema_sigma_rel of the run's length at any step (ema_decay and ema_warmup are then unused).
    ema_profile: EmaProfile = "exponential"
    ema_sigma_rel: float = Field(0.10, gt=0.0, lt=0.28)


#: Optimisation steps of a run given neither steps nor epochs.
DEFAULT_TRAIN_STEPS = 3000


def _split_names(value: Any) -> Any:
    """Metric names as "fid,kid" as well as a list."""
    if isinstance(value, str):
        return [m.strip().lower() for m in value.split(",") if m.strip()]
    return value


def _every(value: Any) -> Any:
    """A cadence: steps (500, "500") or epochs ("5e", "0.5e"); "0" or 0: never."""
    text = str(value).strip().lower()
    number = text[:-1] if text.endswith("e") else text
    try:
        ok = float(number) >= 0 and (text.endswith("e") or float(number).is_integer())
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"must be a number of steps (500) or epochs (5e), got {value!r}")
    return text


#: A cadence as a config value: "500" (steps), "5e" (epochs), "0" (never); ``steps_between`` turns it into steps.
Every = Annotated[str, BeforeValidator(_every)]


def steps_between(every: str, steps_per_epoch: float) -> int:
    """Training steps between two events of an ``Every`` cadence (0: never); epochs round to at least one step."""
    if every.endswith("e"):
        return max(1, round(float(every[:-1]) * steps_per_epoch)) if float(every[:-1]) > 0 else 0
    return int(float(every))


#: Metric options by name, checked and converted against engine.metrics.MetricOptions' fields (one line if not).
MetricOptionValues = Annotated[dict[str, Any], AfterValidator(check_metric_options)]


class TrainEvalConfig(Strict):
    """Evaluation during training: image metrics of EMA samples against a reference, every N steps or epochs."""

    every: Every = "0"  # "500": steps; "5e": epochs; "0": never
    metrics: Annotated[list[str], BeforeValidator(_split_names)] = Field(default_factory=lambda: ["fid"])
    samples: PositiveInt = 1000  # images per evaluation; few are fast but biased (FID, KID's spread)
    sampler: SamplerConfig = Field(default_factory=lambda: SamplerConfig(name="ei", steps=20))
    reference: str | None = None  # dataset name, image folder or statistics .npz; None: the training data
    split: Split = "train"  # of a reference dataset
    reference_examples: PositiveInt | None = None  # a seeded subset of the reference dataset
    keep_best: str | None = None  # metric whose best value keeps best.safetensors (None: the first; "none": off)
    inception_weights: Path | None = None  # None: $DIFFUSE_INCEPTION_WEIGHTS, then torch's hub cache
    seed: int = 0  # of the evaluation samples: the same images every time, apart from the model
    batch_size: PositiveInt = 64
    kid_subsets: PositiveInt = 100  # as `diffuse evaluate --kid-subsets`
    kid_subset_size: int = Field(1000, ge=2)
    fid_bootstrap: int = Field(20, ge=0)  # resamples for FID's std (0: none)
    # Any of engine.metrics' MetricOptions by name (the fields above are the long-standing ones); these win.
    metric_options: MetricOptionValues = Field(default_factory=dict)

    def steps_between(self, steps_per_epoch: float) -> int:
        """Training steps between evaluations (0: never)."""
        return steps_between(self.every, steps_per_epoch)


class TrainConfig(Strict):
    """``diffuse train``: everything that defines a run."""

    task: Literal["score", "classifier"] = "score"
    sde: SDEConfig = Field(default_factory=VPConfig)
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    loss_weighting: str = DEFAULT_WEIGHTING  # a name in engine.weightings.WEIGHTINGS
    min_snr_gamma: PositiveFloat = 5.0  # "min-snr": weight min(SNR, gamma) on the x0 error (Hang et al. 2023)
    # "importance": ln(sigma) from a log-normal importance_widen times wider, each loss weighted by the density
    # ratio, so the objective is the "lognormal" one with less gradient noise (engine.objectives).
    time_sampling: TimeSampling = "lognormal"
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
    # Snapshots (run.snapshots): the EMA weights with their card every N steps or epochs, and at the end; keep the
    # newest keep_snapshots (None: all), so any earlier point can be sampled (--model RUN@STEP) or scored again.
    snapshot_every: Every = "0"
    keep_snapshots: PositiveInt | None = None
    sample_n: PositiveInt = 64
    sampler: SamplerConfig = Field(default_factory=lambda: SamplerConfig(name="ei", steps=30))
    # Instead of steps: passes over the dataset at the global batch size (steps = ceil(epochs * N / batch)).
    epochs: PositiveFloat | None = None
    eval: TrainEvalConfig = Field(default_factory=lambda: TrainEvalConfig())
    # "tensorboard" also writes TensorBoard event files in the run; metrics.jsonl is always written.
    log: LogKind = "jsonl"
    # A non-finite loss or gradient: "stop" the run (the last checkpoint stays intact), or "skip" the step and
    # count it in metrics.jsonl, stopping after max_skips consecutive skips (a run that stays broken).
    on_nonfinite: Literal["stop", "skip"] = "stop"
    max_skips: PositiveInt = 10

    @field_validator("loss_weighting")
    @classmethod
    def _known_weighting(cls, name: str) -> str:
        from diffusers_cli.engine.weightings import WEIGHTINGS  # torch-free

        if name not in WEIGHTINGS:
            raise ValueError(f"must be {one_of(WEIGHTINGS)}, got {name!r}")
        return name

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




class ModelSource(Strict):
    """Where a job's model comes from and how it is opened: the fields every job that reads a model shares.

    ``parts.opening.open_model`` reads exactly these; the job configs (sample, condition, impute, evaluate,
    tune) inherit them, so their flags, config keys and ``--set`` names stay flat (``model``, not ``source.model``).
    """

    # A run directory (RUN@STEP: its snapshot of that step), a .safetensors file, a diffusers folder, hf:ORG/NAME[@REV]
    # or builtin:NAME; None: the newest run under runs_dir.
    model: Path | None = None
    download: bool = False  # fetch what is missing: an hf: model (and, for evaluate, a dataset or Inception weights)
    device: Device = "auto"
    use_ema: bool = True  # our runs: the EMA weights (False: the online ones)
    runs_dir: Path = Path("runs")  # where "the newest run" is looked for


class TuneConfig(ModelSource):
    """``diffuse tune``: time grids tuned to one model for a sampler at some step counts (``engine.grid_tuning``)."""

    sampler: str = "ipndm"
    steps: list[PositiveInt] = Field(default_factory=lambda: [5], min_length=1)
    options: dict[str, Any] = Field(default_factory=dict)  # the sampler's options (-o), checked per step count
    eps: PositiveFloat | None = None
    final_denoise: bool = True
    batch_size: PositiveInt = 16  # images the grid is tuned on (with a reference solve of each)
    rounds: int = Field(3, ge=0)  # local-search rounds over the interior times
    lattice: int = Field(80, ge=0)  # evaluations of the coarse global stage (0: skip it)
    holdout: int = Field(64, ge=0)  # images of other noise the winner must beat the default on (0: no check)
    # A name in engine.grid_objectives.OBJECTIVES (`diffuse tune --objective` lists them); None: its DEFAULT_OBJECTIVE.
    objective: str | None = None
    guidance: float | None = Field(None, ge=0.0)  # class-conditional models (None: DEFAULT_GUIDANCE)
    grids: Path | None = None  # where to write (None: beside the model, or the user's file; tuned_grids)
    seed: int = 0
    # A judge of clean images (builtin:NAME or a judge's .safetensors): a winner is kept only if it beats the default
    # grid in the judge's eyes too (parts.judging.grid_check). None: the objective's held-out check alone.
    judge: str | None = None
    judge_batch: PositiveInt = 256  # images each grid is drawn and judged on
    reference: str | None = None  # the real images the judge FD is taken to: a dataset name (None: the model's dataset)
    data_dir: Path | None = None  # where the reference dataset's files are

    @field_validator("objective")
    @classmethod
    def _known_objective(cls, objective: str | None) -> str | None:
        from diffusers_cli.engine.grid_objectives import OBJECTIVES

        if objective is not None and objective not in OBJECTIVES:
            raise ValueError(f"must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
        return objective

    @model_validator(mode="after")
    def _check_sampler(self) -> "TuneConfig":
        for steps in self.steps:
            SamplerConfig(name=self.sampler, steps=steps, eps=self.eps, options=self.options)
        return self


class SampleConfig(ModelSource):
    """``diffuse sample``."""

    # Neither name nor steps given: the model card's recommendation (parts.sampler_choice), else pc, 1000 steps.
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
    upscale: PositiveInt = 1  # written PNGs this many times larger (nearest neighbour)
    trajectory: Path | None = None
    labels: bool = False  # captions: class (or index) under each image, step and sigma under each strip column
    seed: int = 0

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)


class ConditionConfig(ModelSource):
    """``diffuse condition``: classifier guidance toward one class."""

    classifier: Path | None = None  # None: a class-conditional model guides itself (classifier-free)
    label: str = Field(alias="class")
    scale: float = Field(1.0, ge=0.0)
    # With a classifier and a class-conditional model: the score the classifier steers is the model's own
    # classifier-free guided one at this scale (1: p(x | y)); None: its unconditional ("no class") score.
    guidance: float | None = Field(None, ge=0.0)
    # Neither name nor steps given: the model card's recommendation (parts.sampler_choice), else pc, 1000 steps.
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    grids: Path | None = None  # --grid tuned reads this file (None: beside the model, then the user's; tuned_grids)
    n: PositiveInt = 64
    batch_size: PositiveInt = 64
    out: Path = Path("conditioned.png")
    individual: bool = False
    upscale: PositiveInt = 1  # written PNGs this many times larger (nearest neighbour)
    seed: int = 0

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ImputeConfig(ModelSource):
    """``diffuse impute``: fill the masked pixels of one image."""

    image: Path | None = None  # None only from the Python face, which hands the job an image tensor
    mask: Path | None = None
    mask_kind: str | None = None  # a key of engine.masks.MASKS
    mask_fraction: float | None = Field(None, gt=0.0, lt=1.0)
    mask_side: str | None = None  # one of engine.masks.HALF_SIDES
    # "auto": twisted SMC for a few known pixels, repaint for large known regions (engine.imputation.choose_method).
    method: str = "auto"
    # The method's options, checked against its signature (engine.imputation.METHODS); replacement
    # passes the ones it does not take on to its sampler.
    options: dict[str, Any] = Field(default_factory=dict)
    sampler: SamplerConfig = Field(default_factory=lambda: SamplerConfig(name="ddpm", steps=200))
    n: PositiveInt = 1
    out: Path = Path("filled.png")
    upscale: PositiveInt = 1  # written PNGs this many times larger (nearest neighbour)
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _legacy_options(cls, data: Any) -> Any:
        # Older configs wrote the method's options at the top level.
        if isinstance(data, dict) and any(k in data for k in _LEGACY_METHOD_KEYS):
            moved = {k: data[k] for k in _LEGACY_METHOD_KEYS if k in data and data[k] is not None}
            data = {**{k: v for k, v in data.items() if k not in _LEGACY_METHOD_KEYS},
                    "options": {**moved, **(data.get("options") or {})}}
        return data

    @field_validator("mask_kind", "mask_side")
    @classmethod
    def _known_mask(cls, value: str | None, info: Any) -> str | None:
        from diffusers_cli.engine.masks import HALF_SIDES, MASKS  # torch-free

        names = MASKS if info.field_name == "mask_kind" else HALF_SIDES
        if value is not None and value not in names:
            raise ValueError(f"must be {one_of(names)}, got {value!r}")
        return value

    @model_validator(mode="after")
    def _one_mask(self) -> "ImputeConfig":
        # An image tensor (the Python face) may come with a mask tensor instead of either.
        if (self.mask is not None and self.mask_kind is not None) or (self.image is not None and self.mask is None
                                                                      and self.mask_kind is None):
            from diffusers_cli.engine.masks import MASKS

            raise ValueError(f"give exactly one of a MASK image or --mask {'|'.join(MASKS)}")
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
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:  # a binary or damaged file (a stranger's run's config.json, a wrong --config)
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {err.start} is not); pass a YAML, JSON or TOML "
                          "file to --config") from None
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


def one_of(names: Iterable[str]) -> str:
    """Names as pydantic lists a Literal's choices: 'a', 'b' or 'c'."""
    quoted = [repr(n) for n in names]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


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


class EvaluateConfig(ModelSource):
    """``diffuse evaluate``: FID and Inception Score of generated (or given) images, bits/dim of a model."""

    images: Path | None = None                            # evaluate this folder of images instead of generating
    snapshots: bool = False                               # score every snapshot of the run --model names (a table)
    metrics: list[str] = Field(default_factory=lambda: ["fid", "is"])
    num_samples: PositiveInt | None = None                # images to generate (None: 50,000) or to take from --images
    reference: str | None = None                          # dataset name, image folder or statistics .npz
    data_dir: Path | None = None                          # where the reference (and bits/dim) dataset's files are
    split: Split = "train"      # reference dataset split
    image_size: ImageSize | None = None                   # reference dataset resolution (None: the model's)
    reference_examples: PositiveInt | None = None         # a seeded subset of the reference dataset
    save_reference_stats: Path | None = None              # cache of the reference statistics (.npz, pytorch-fid keys)
    inception_weights: Path | None = None                 # None: $DIFFUSE_INCEPTION_WEIGHTS, then torch's hub cache
    allow_few: bool = False                               # permit FID from <= 2048 images (and IS in one split)
    is_splits: PositiveInt = 10
    kid_subsets: PositiveInt = 100                        # KID: random subsets averaged (clean-fid's, torch-fidelity's 100)
    kid_subset_size: int = Field(1000, ge=2)              # KID: images per subset at most
    fid_bootstrap: int = Field(20, ge=0)                  # FID: bootstrap resamples for its std (0: none)
    metric_options: MetricOptionValues = Field(default_factory=dict)  # any MetricOptions by name (--metric-option); these win
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    grids: Path | None = None  # --grid tuned reads this file (None: beside the model, then the user's; tuned_grids)
    guidance: float | None = Field(None, ge=0.0)              # class-conditional models (None: DEFAULT_GUIDANCE)
    batch_size: PositiveInt = 64
    seed: int = 0
    bpd_dataset: str | None = None                        # None: the model's own dataset
    bpd_split: Split = "test"
    bpd_examples: PositiveInt | None = None               # None: the whole split
    bpd_runs: PositiveInt = 1                             # runs of the trace estimator (mean and spread over runs)
    bpd_rtol: PositiveFloat = 1e-5
    bpd_atol: PositiveFloat = 1e-5
    bpd_probe: Probe = "rademacher"

    @model_validator(mode="before")
    @classmethod
    def _split_metrics(cls, data: Any) -> Any:
        """Accept metrics as "fid,is,bpd" as well as a list."""
        if isinstance(data, dict) and isinstance(data.get("metrics"), str):
            data = {**data, "metrics": [m.strip().lower() for m in data["metrics"].split(",") if m.strip()]}
        return data
