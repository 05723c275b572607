"""The ModelCard: a model file's typed, versioned description of itself (migrated from version 1 on read)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, cast

from diffusers_cli import __version__
from diffusers_cli.config.sde import SDE_CONFIGS, DDPMConfig, SubVPConfig, VEConfig, VPConfig, sde_config
from diffusers_cli.config.base import ConfigError
from diffusers_cli.support.errors import UsageError

FORMAT = "diffusers-cli"
#: 1: an untyped metadata dict (main up to 0.1.0); 2: a ModelCard (migrated from 1 on read).
FORMAT_VERSION = 2


#: The network classes a card may name (models.own.NETWORKS builds them).
ARCHS: tuple[str, ...] = ("unet", "wrn", "diffusers", "judge")


class CheckpointError(UsageError):
    """A checkpoint is missing, corrupt, foreign, or does not fit the model it is loaded into."""


@dataclass(frozen=True)
class Recommendation:
    """The sampler a model's maker recommends: what `diffuse sample` runs when given neither sampler nor steps.

    Stored as ``"recommended": {"sampler": ..., "steps": ...}``; a card without it (any written before it existed)
    recommends nothing, and older readers ignore the key, so the card version stays 2.
    """

    sampler: str  # a key of engine.samplers.SAMPLERS (checked where it is used: a newer sampler may be unknown here)
    steps: int  # its steps

    @classmethod
    def from_dict(cls, data: Any, path: Path) -> "Recommendation | None":
        """The stored form (None: no recommendation); CheckpointError for a malformed one."""
        if data is None:
            return None
        ok = (isinstance(data, dict) and isinstance(data.get("sampler"), str) and isinstance(data.get("steps"), int)
              and not isinstance(data.get("steps"), bool) and data["steps"] > 0)
        if not ok:
            raise CheckpointError(f"{path} has an invalid model card (recommended must be {{\"sampler\": NAME, \"steps\": N > 0}}, "
                                  f"got {data!r}); re-export it from its run")
        return cls(sampler=data["sampler"], steps=data["steps"])


@dataclass(frozen=True)
class ModelCard:
    """What a model file says about itself: enough to rebuild the model, and where it came from.

    Written and read only here (``save_model``, ``read_card``); jobs read its typed fields.
    """

    kind: Literal["score", "classifier", "judge"]  # a score network, a noise-aware classifier, or a judge of clean images
    arch: Literal["unet", "wrn", "diffusers", "judge"]  # which network class ``network`` configures (models.own.NETWORKS)
    network: dict[str, Any]  # the network's own constructor config (its ``config`` attribute)
    sde: VEConfig | VPConfig | SubVPConfig | DDPMConfig  # the SDE the model was trained for (config.SDE_CONFIGS)
    image_shape: tuple[int, int, int]  # (C, H, W) of the images
    class_names: tuple[str, ...]  # label index -> name (classifiers, class-conditional models)
    dataset: str  # what it was trained on
    parameterization: str | None = None  # score networks: edm, eps, v, score or x0 (engine.score.PARAMETERIZATIONS)
    step: int = 0  # training steps behind the weights
    ema_updates: int = 0  # updates of the EMA weights
    source: str = "diffuse"  # who made it
    package_version: str = __version__  # the diffusers-cli that wrote it
    extra: dict[str, Any] = field(default_factory=dict)  # free-form provenance (e.g. what a run was initialised from)
    recommended: Recommendation | None = None  # score models: the sampler to use when none is given

    def __post_init__(self) -> None:
        # A card may be built from the SDE's JSON form (a stored card, a diffusers scheduler mapped to one):
        # it is validated into its typed config here, once, so no reader of a card meets a dict.
        if not isinstance(self.sde, SDE_CONFIGS):
            try:
                typed = sde_config(self.sde)
            except ConfigError as err:
                raise CheckpointError(f"model card names an SDE that is not one of ours ({err})") from None
            object.__setattr__(self, "sde", typed)

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

    def to_dict(self) -> dict[str, Any]:
        """The card as JSON-able data, in the stored form (the SDE as its config's JSON)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "recommended"}
        # Written only when there is one, so a card without it stores exactly what it stored before the field existed.
        rec = {} if self.recommended is None else {"recommended": asdict(self.recommended)}
        return {**out, "sde": self.sde.model_dump(mode="json"), "image_shape": list(self.image_shape),
                "class_names": list(self.class_names), "network": dict(self.network), "extra": dict(self.extra), **rec}

    def to_json(self) -> str:
        """The card as the JSON stored in a safetensors header."""
        return json.dumps({"card_version": FORMAT_VERSION, **self.to_dict()})

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: Path) -> "ModelCard":
        """Validate a stored card (version 2), or migrate a version-1 metadata dict; CheckpointError if neither."""
        if not isinstance(data, dict):
            raise CheckpointError(f"{path} has damaged diffusers-cli metadata (not a JSON object); re-export it from its run")
        try:
            version = int(data.get("card_version", 1))
        except (TypeError, ValueError):
            raise CheckpointError(f"{path} has an invalid model card (card_version {data.get('card_version')!r}); "
                                  "re-export it from its run") from None
        if version > FORMAT_VERSION:
            raise CheckpointError(f"{path} was written by a newer diffusers-cli (card version {version}); upgrade diffusers-cli")
        if version == 1:
            data = _migrate_v1(data, path)
        if not isinstance(data.get("sde"), dict):
            raise CheckpointError(f"{path} has an invalid model card (its sde is not a config object); re-export it from its run")
        try:
            sde = sde_config(data["sde"])
        except ConfigError as err:
            raise CheckpointError(f"{path} has a model card whose SDE is not one of ours ({err}); re-export it from its run, "
                                  "or upgrade diffusers-cli") from None
        try:
            card = cls(
                kind=data["kind"], arch=data["arch"], network=dict(data["network"]), sde=sde,
                image_shape=cast(tuple[int, int, int], tuple(int(v) for v in data["image_shape"])),
                class_names=tuple(str(n) for n in data["class_names"]), dataset=str(data["dataset"]),
                parameterization=data.get("parameterization"), step=int(data.get("step", 0)),
                ema_updates=int(data.get("ema_updates", 0)), source=str(data.get("source", "diffuse")),
                package_version=str(data.get("package_version", "unknown")), extra=dict(data.get("extra") or {}),
                recommended=Recommendation.from_dict(data.get("recommended"), path),
            )
        except (KeyError, TypeError, ValueError, OverflowError) as err:
            raise CheckpointError(f"{path} has an invalid model card ({type(err).__name__}: {err}); re-export it from its run") from None
        if card.kind not in ("score", "classifier", "judge") or card.arch not in ARCHS or len(card.image_shape) != 3:
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
