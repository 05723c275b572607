"""The one place where configs become engine objects: SDEs, networks, score models, devices, generators."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffusers_cli.checkpoints import CheckpointError, WEIGHTS_NAME, ModelCard, load_into, load_model, subset
from diffusers_cli.config import ClassifierConfig, ConfigError, NetworkConfig, SDEConfig, TrainConfig
from diffusers_cli.engine.networks.classifier import WRN_PRESETS, WideResNet
from diffusers_cli.engine.networks.unet import UNET_PRESETS, UNet
from diffusers_cli.engine.objectives import ClassifierObjective, Objective, ScoreObjective
from diffusers_cli.engine.score import ScoreModel
from diffusers_cli.engine.sde import SDE

#: Network classes by the ``arch`` a model card names.
NETWORKS: dict[str, type[nn.Module]] = {"unet": UNet, "wrn": WideResNet}


def build_sde(cfg: SDEConfig) -> SDE:
    """The forward process a config describes (each SDE config class builds its own)."""
    return cfg.build()


def sde_config_from_dict(data: dict[str, Any]) -> SDEConfig:
    """Re-validate an SDE config stored in checkpoint metadata."""
    from pydantic import TypeAdapter, ValidationError

    try:
        return TypeAdapter(SDEConfig).validate_python(data)
    except ValidationError as err:
        raise CheckpointError(f"checkpoint metadata has an invalid SDE ({err.errors()[0]['msg']})") from None


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


def network_from_card(card: ModelCard, path: Path) -> nn.Module:
    """The network a card describes (its own config), untrained; CheckpointError if the config does not build."""
    try:
        return NETWORKS[card.arch](**card.network)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: its model card describes a network that cannot be built ({err})") from None


def sde_from_card(card: ModelCard) -> SDE:
    """The SDE a card's model was trained for."""
    return build_sde(sde_config_from_dict(card.sde))


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
    )


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA, then MPS, then CPU; an unavailable device is a usage error."""
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
    return dev


def make_generator(seed: int, device: torch.device) -> torch.Generator:
    """A seeded generator on ``device`` (CUDA noise must come from a CUDA generator)."""
    return torch.Generator(device=device).manual_seed(seed)


# ---- models from checkpoints -------------------------------------------------------------


def resolve_model_path(model: Path | None, runs_dir: Path) -> Path:
    """A run directory, a .safetensors file, or (None) the newest run under ``runs_dir``."""
    if model is None:
        candidates = sorted(runs_dir.glob(f"*/{WEIGHTS_NAME}"), key=lambda p: p.stat().st_mtime) if runs_dir.is_dir() else []
        if not candidates:
            raise CheckpointError(f"no --model given and no trained run under {runs_dir}/; run `diffuse train` first or pass --model")
        return candidates[-1]
    if model.is_dir():
        path = model / WEIGHTS_NAME
        if not path.is_file():
            raise CheckpointError(f"{model} holds no {WEIGHTS_NAME}; is it a run directory of `diffuse train`?")
        return path
    if not model.exists():
        raise CheckpointError(f"model {model} does not exist; pass a run directory or a .safetensors file")
    return model


def load_score_model(path: Path, use_ema: bool = True) -> tuple[ScoreModel, ModelCard]:
    """The score model stored at ``path`` (a run directory or weights file; EMA weights by default) and its card."""
    path = resolve_model_path(Path(path), Path("runs"))
    tensors, card = load_model(path)
    if card.kind != "score":
        raise CheckpointError(f"{path} holds a {card.kind} model, not a score model; pass the score model's run")
    model = ScoreModel(network_from_card(card, path), sde_from_card(card), str(card.parameterization))
    load_into(model.net, subset(tensors, "ema" if use_ema else "online"), path)
    return model.eval(), card


def load_classifier(path: Path) -> tuple[nn.Module, SDE, ModelCard]:
    """A time-dependent classifier, the SDE it was trained for, and its card."""
    path = resolve_model_path(Path(path), Path("runs"))
    tensors, card = load_model(path)
    if card.kind != "classifier":
        raise CheckpointError(f"{path} holds a {card.kind} model, not a classifier; pass a run of `diffuse train --task classifier`")
    net = network_from_card(card, path)
    load_into(net, subset(tensors, "ema"), path)
    return net.eval(), sde_from_card(card), card
