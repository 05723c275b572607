"""Checkpoints without pickle: safetensors weights with a typed, versioned ModelCard, and a resumable training state."""

from __future__ import annotations

from diffusers_cli.errors import UsageError

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor, nn

from diffusers_cli import __version__
from diffusers_cli.files import atomic_path

FORMAT = "diffusers-cli"
#: 1: an untyped metadata dict (main up to 0.1.0); 2: a ModelCard (migrated from 1 on read).
FORMAT_VERSION = 2
WEIGHTS_NAME = "model.safetensors"
STATE_NAME = "state.safetensors"


#: The network classes a card may name (models.own.NETWORKS builds them).
ARCHS: tuple[str, ...] = ("unet", "wrn", "diffusers")


class CheckpointError(UsageError):
    """A checkpoint is missing, corrupt, foreign, or does not fit the model it is loaded into."""


@dataclass(frozen=True)
class ModelCard:
    """What a model file says about itself: enough to rebuild the model, and where it came from.

    Written and read only here (``save_model``, ``read_card``); jobs read its typed fields.
    """

    kind: Literal["score", "classifier"]  # a score network, or a noise-aware classifier
    arch: Literal["unet", "wrn", "diffusers"]  # which network class ``network`` configures (models.own.NETWORKS)
    network: dict[str, Any]  # the network's own constructor config (its ``config`` attribute)
    sde: dict[str, Any]  # the SDE config (config.SDEConfig) the model was trained for
    image_shape: tuple[int, int, int]  # (C, H, W) of the images
    class_names: tuple[str, ...]  # label index -> name (classifiers, class-conditional models)
    dataset: str  # what it was trained on
    parameterization: str | None = None  # score networks: edm, eps, v, score or x0 (engine.score.PARAMETERIZATIONS)
    step: int = 0  # training steps behind the weights
    ema_updates: int = 0  # updates of the EMA weights
    source: str = "diffuse"  # who made it
    package_version: str = __version__  # the diffusers-cli that wrote it
    extra: dict[str, Any] = field(default_factory=dict)  # free-form provenance (e.g. what a run was initialised from)

    @property
    def channels(self) -> int:
        """Image channels."""
        return self.image_shape[0]

    @property
    def image_hw(self) -> tuple[int, int]:
        """(height, width) of the images."""
        return self.image_shape[1], self.image_shape[2]

    @property
    def num_classes(self) -> int:
        """How many class names the model knows."""
        return len(self.class_names)

    @property
    def class_conditional(self) -> bool:
        """A score network that takes class labels (classifier-free guidance)."""
        return self.kind == "score" and self.network.get("num_classes") is not None

    def to_json(self) -> str:
        """The card as the JSON stored in a safetensors header."""
        return json.dumps({"card_version": FORMAT_VERSION, **asdict(self)})

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: Path) -> "ModelCard":
        """Validate a stored card (version 2), or migrate a version-1 metadata dict; CheckpointError if neither."""
        version = int(data.get("card_version", 1))
        if version > FORMAT_VERSION:
            raise CheckpointError(f"{path} was written by a newer diffusers-cli (card version {version}); upgrade diffusers-cli")
        if version == 1:
            data = _migrate_v1(data, path)
        try:
            card = cls(
                kind=data["kind"], arch=data["arch"], network=dict(data["network"]), sde=dict(data["sde"]),
                image_shape=cast(tuple[int, int, int], tuple(int(v) for v in data["image_shape"])),
                class_names=tuple(str(n) for n in data["class_names"]), dataset=str(data["dataset"]),
                parameterization=data.get("parameterization"), step=int(data.get("step", 0)),
                ema_updates=int(data.get("ema_updates", 0)), source=str(data.get("source", "diffuse")),
                package_version=str(data.get("package_version", "unknown")), extra=dict(data.get("extra") or {}),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{path} has an invalid model card ({type(err).__name__}: {err}); re-export it from its run") from None
        if card.kind not in ("score", "classifier") or card.arch not in ARCHS or len(card.image_shape) != 3:
            raise CheckpointError(f"{path} has an invalid model card (kind {card.kind!r}, arch {card.arch!r}, "
                                  f"image shape {card.image_shape}); re-export it from its run")
        if card.kind == "score" and card.parameterization is None:
            raise CheckpointError(f"{path} is a score model whose card names no parameterization; re-export it from its run")
        return card


def _migrate_v1(meta: dict[str, Any], path: Path) -> dict[str, Any]:
    """A version-1 metadata dict (square images, the network's preset kwargs) as a version-2 card dict."""
    try:
        kind, size, channels = meta["kind"], int(meta["image_size"]), int(meta["channels"])
        network = {**meta["network"], "image_size": size, "in_channels": channels}
        if kind == "classifier":
            network["num_classes"] = int(meta["num_classes"])
        # Version 1 wrote the training config's parameterization for classifiers too, where it means nothing.
        return {**meta, "arch": "unet" if kind == "score" else "wrn", "network": network, "image_shape": (channels, size, size),
                "parameterization": meta.get("parameterization") if kind == "score" else None,
                "package_version": "0.1.0 (format 1)"}
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path} has damaged version-1 diffusers-cli metadata ({type(err).__name__}: {err}); re-export it from its run") from None


def save_model(path: Path, tensors: dict[str, Tensor], card: ModelCard, atomic: bool = True) -> None:
    """Write a model's tensors with its card, atomically (``atomic=False``: the caller already writes to a temporary path)."""
    _save(path, tensors, card.to_json(), atomic)


def read_card(path: Path) -> ModelCard:
    """The card of a diffusers-cli model file (migrated if it is version 1), validating that it is one."""
    meta = read_meta(path)
    if meta.get("kind") == "train-state":
        raise CheckpointError(f"{path} is a training state, not a model; pass the run's {WEIGHTS_NAME}")
    return ModelCard.from_dict(meta, Path(path))


def load_model(path: Path) -> tuple[dict[str, Tensor], ModelCard]:
    """Tensors and card of a diffusers-cli model file."""
    card = read_card(path)
    return _load_tensors(path), card


def save_weights(path: Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """Write tensors and JSON-able metadata as one self-describing safetensors file, atomically."""
    _save(path, tensors, json.dumps(meta))


def _save(path: Path, tensors: dict[str, Tensor], meta_json: str, atomic: bool = True) -> None:
    header = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "meta": meta_json}
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    if not atomic:
        save_file(flat, str(path), metadata=header)
        return
    with atomic_path(Path(path), durable=True) as tmp:
        save_file(flat, str(tmp), metadata=header)


def read_meta(path: Path) -> dict[str, Any]:
    """The metadata of a diffusers-cli safetensors file, validating that it is one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass a run directory or a .safetensors file made by diffuse")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file ({err}); is it corrupt or truncated?") from None
    if header.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a safetensors file but not a diffusers-cli checkpoint (no '{FORMAT}' metadata); "
            "train one with `diffuse train`"
        )
    if int(header.get("format_version", "0")) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer diffusers-cli (format {header['format_version']}); upgrade diffusers-cli")
    try:
        return json.loads(header["meta"])
    except (KeyError, json.JSONDecodeError):
        raise CheckpointError(f"{path} has damaged diffusers-cli metadata; re-export it from its run") from None


def load_weights(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Tensors and metadata of a diffusers-cli safetensors file."""
    meta = read_meta(path)
    return _load_tensors(path), meta


def _load_tensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is corrupt ({err}); restore it or retrain") from None


def subset(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The tensors under ``prefix.`` with the prefix removed."""
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def load_into(module: nn.Module, state: dict[str, Tensor], source: Path) -> None:
    """Load a state dict strictly, turning key or shape mismatches into one clear line."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or extra or wrong:
        what = (
            f"missing {missing[0]!r}" if missing else f"unexpected {extra[0]!r}" if extra
            else f"{wrong[0]!r} has shape {tuple(state[wrong[0]].shape)}, expected {tuple(own[wrong[0]].shape)}"
        )
        raise CheckpointError(f"weights in {source} do not fit the network its metadata describes ({what})")
    module.load_state_dict(state)


# ---- resumable training state ----------------------------------------------------------


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], list[dict[str, Any]]]:
    sd = opt.state_dict()
    tensors: dict[str, Tensor] = {}
    for idx, st in sd["state"].items():
        for key, val in st.items():
            t = val if isinstance(val, Tensor) else torch.tensor(val)
            tensors[f"optim.{idx}.{key}"] = t
    return tensors, sd["param_groups"]


def save_train_state(
    path: Path,
    step: int,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    extra: dict[str, Any],
) -> None:
    """Optimizer moments, RNG states (torch, CUDA, the run's generator) and counters, as safetensors + JSON."""
    tensors, groups = _optimizer_tensors(optimizer)
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.generator"] = generator.get_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    save_weights(path, tensors, {"kind": "train-state", "step": step, "param_groups": groups, **extra})


def load_train_state(path: Path, optimizer: torch.optim.Optimizer, generator: torch.Generator) -> dict[str, Any]:
    """Restore what ``save_train_state`` wrote; returns its metadata (with ``step``)."""
    tensors, meta = load_weights(path)
    if meta.get("kind") != "train-state":
        raise CheckpointError(f"{path} is not a training state; it cannot be resumed from")
    state: dict[int, dict[str, Tensor]] = {}
    for key, val in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = val
    try:
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (ValueError, KeyError) as err:
        raise CheckpointError(f"optimizer state in {path} does not fit this model ({err}); start a new run instead of --resume") from None
    torch.set_rng_state(tensors["rng.torch"])
    generator.set_state(tensors["rng.generator"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    return meta
