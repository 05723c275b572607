"""The one place where configs become engine objects: SDEs, networks, score models, devices, generators."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffusers_cli.checkpoints.card import ModelCard
from diffusers_cli.config.schema import ClassifierConfig, NetworkConfig, TrainConfig, dump_config
from diffusers_cli.config.base import ConfigError
from diffusers_cli.config.sde import SDEConfig
from diffusers_cli.engine.networks.classifier import WRN_PRESETS, WideResNet
from diffusers_cli.engine.networks.unet import UNET_PRESETS, UNet
from diffusers_cli.engine.objectives import ClassifierObjective, Objective, ScoreObjective
from diffusers_cli.engine.score import ScoreModel
from diffusers_cli.engine.sde import SDE
from diffusers_cli.support.hardware import enable_fast_math


def build_sde(cfg: SDEConfig) -> SDE:
    """The forward process a config describes (each SDE config class builds its own)."""
    return cfg.build()


def _resolve(presets: dict[str, dict[str, Any]], preset: str, overrides: dict[str, Any], what: str) -> dict[str, Any]:
    if preset not in presets:
        raise ConfigError(f"unknown {what} preset {preset!r}; use one of {', '.join(sorted(presets))}")
    kwargs = dict(presets[preset])
    kwargs.update({k: (tuple(v) if isinstance(v, list) else v) for k, v in overrides.items() if v is not None})
    return kwargs


def network_kwargs(cfg: NetworkConfig) -> dict[str, Any]:
    """U-Net constructor arguments: the preset with the config's explicit fields on top."""
    fields = cfg.model_dump(exclude={"preset", "parameterization"})
    return _resolve(UNET_PRESETS, cfg.preset, fields, "network")


def classifier_kwargs(cfg: ClassifierConfig) -> dict[str, Any]:
    """WideResNet constructor arguments: the preset with the config's explicit fields on top."""
    return _resolve(WRN_PRESETS, cfg.preset, cfg.model_dump(exclude={"preset"}), "classifier")


def _size(image_size: int | tuple[int, int]) -> str:
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    return f"{h}x{w}"


def build_unet(kwargs: dict[str, Any], image_size: int | tuple[int, int], channels: int) -> UNet:
    """A U-Net for images of ``image_size`` (a side, or (H, W)) with ``channels`` channels."""
    try:
        return UNet(image_size=image_size, in_channels=channels, **kwargs)
    except ValueError as err:
        raise ConfigError(f"invalid network for {_size(image_size)} images: {err}") from None


def build_classifier(kwargs: dict[str, Any], image_size: int | tuple[int, int], channels: int, num_classes: int) -> WideResNet:
    """A time-dependent WideResNet classifier."""
    try:
        return WideResNet(image_size=image_size, in_channels=channels, num_classes=num_classes, **kwargs)
    except ValueError as err:
        raise ConfigError(f"invalid classifier: {err}") from None


def build_objective(cfg: TrainConfig, net: nn.Module, sde: SDE) -> Objective:
    """The loss the config asks for: DSM of a score model, or a noise-aware classifier's cross-entropy."""
    if cfg.task == "classifier":
        return ClassifierObjective(net, sde)
    return ScoreObjective(
        ScoreModel(net, sde, cfg.network.parameterization),
        weighting=cfg.loss_weighting,
        time_sampling=cfg.time_sampling,
        lognormal_mean=cfg.lognormal_mean,
        lognormal_std=cfg.lognormal_std,
        conditional=cfg.class_conditional,
        label_dropout=cfg.label_dropout,
        min_snr_gamma=cfg.min_snr_gamma,
        importance_widen=cfg.importance_widen,
    )


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA, then MPS, then CPU; an unavailable device is a usage error. CUDA gets TF32 and autotuning."""
    dev = _device(name)
    enable_fast_math(dev)
    return dev


def _device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for but CUDA is not available here; use --device cpu or auto")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r} asked for but this machine has {torch.cuda.device_count()} CUDA device(s); use cuda:0 .. "
                          f"cuda:{torch.cuda.device_count() - 1} or auto")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise ConfigError(f"device {name!r} asked for but MPS is not available here; use --device cpu or auto")
    # torch names more device types than it is built for ("ve", "xla", ...): those fail only at the first tensor.
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device {name!r} is not one this build of torch runs on; use auto, cpu, cuda, cuda:N or mps")
    return dev


def make_generator(seed: int, device: torch.device) -> torch.Generator:
    """A seeded generator on ``device`` (CUDA noise must come from a CUDA generator)."""
    return torch.Generator(device=device).manual_seed(seed)


# ---- train --init: fine-tune a model from any source -----------------------------------------------

#: extra["init_from"] of the --init models read in this process: a run's card is written at every checkpoint, the model read once.
_INIT_RECORDS: dict[str, dict[str, Any]] = {}


@dataclass(frozen=True)
class InitModel:
    """What ``diffuse train --init MODEL`` starts from."""

    net: nn.Module  # the model's network with its weights (the EMA weights of our runs)
    card: ModelCard  # the model's card
    path: Path  # where it was read from


def apply_init(cfg: TrainConfig) -> tuple[TrainConfig, InitModel | None]:
    """``--init MODEL``: the config with the model's SDE, parameterisation, image shape and class conditioning, and its net.

    What the model fixes may be left out; given with another value it is an error naming the flag. A diffusers
    model also goes on training as it was trained, unless told otherwise: DDPM's simple loss (``eps`` weighting)
    at uniform times (a DDPM chain's own integer steps).
    """
    from diffusers_cli.models import load_score_model, resolve_model_path  # where models come from: models/, not here

    if cfg.init is None:
        return cfg, None
    if cfg.task != "score":
        raise ConfigError("--init fine-tunes a score model; a classifier starts from scratch (drop --init)")
    path = resolve_model_path(cfg.init, cfg.out, cfg.data.download)
    model, card = load_score_model(path, use_ema=True)
    data = cfg.model_dump(mode="json")

    def keep(section: Any, out: dict[str, Any], key: str, value: Any, flag: str, current: Any = None) -> None:
        current = getattr(section, key) if current is None else current
        if key in section.model_fields_set and current != value:
            raise ConfigError(f"--init {cfg.init} fixes {flag} (the model's is {value!r}, this run asks {current!r}); drop {flag}")
        out[key] = value

    keep(cfg, data, "sde", card.sde, "--sde/--schedule", dump_config(cfg.sde))
    h, w = card.image_hw
    keep(cfg.data, data["data"], "image_size", (h, w), "--image-size", cfg.data.image_hw)
    data["data"]["image_size"] = h if h == w else [h, w]
    keep(cfg.data, data["data"], "channels", card.channels, "--set data.channels")
    keep(cfg, data, "class_conditional", card.class_conditional, "--class-conditional")
    if cfg.network.model_dump(exclude={"parameterization"}) != NetworkConfig().model_dump(exclude={"parameterization"}):
        raise ConfigError(f"--init {cfg.init} brings its own network; drop --preset and --set network.*")
    keep(cfg.network, data["network"], "parameterization", str(card.parameterization), "--set network.parameterization")
    if card.source == "diffusers":
        for key, value in (("loss_weighting", "eps"), ("time_sampling", "uniform")):
            if key not in cfg.model_fields_set:
                data[key] = value
    _INIT_RECORDS[cfg.init] = {"model": cfg.init, "path": str(path), "source": card.source, "step": card.step,
                               "dataset": card.dataset, **({"extra": card.extra} if card.extra else {})}
    return TrainConfig.model_validate(data), InitModel(model.net, card, path)


def init_network(init: InitModel, num_classes: int) -> nn.Module:
    """The --init model's network, checked against the dataset's classes (a class-conditional net knows a count)."""
    if init.card.class_conditional and init.card.num_classes != num_classes:
        raise ConfigError(f"--init {init.path} is conditional on {init.card.num_classes} classes but the dataset has "
                          f"{num_classes}; fine-tune it on data with the same classes")
    return init.net


def init_record(cfg: TrainConfig) -> dict[str, Any]:
    """The ``extra`` of a run's card: where an --init run started from ({} for a run from scratch)."""
    if cfg.init is None:
        return {}
    return {"init_from": dict(_INIT_RECORDS.get(cfg.init, {"model": cfg.init}))}
