"""``builtin:NAME``: the ready-made models shipped in the package (fp16 EMA weights + card), offline and instant.

Each file's card is the one source of what the model is: its description, recipe, data, commit and measured
quality sit in ``card.extra["builtin"]``, written by ``examples/builtin_models.py`` (which trains and packs them).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from diffusers_cli.checkpoints.card import CheckpointError
from diffusers_cli.checkpoints.weights import read_card
from diffusers_cli.run.layout import GRIDS_NAME

PREFIX = "builtin:"

#: The ready-made models: name -> weights file in ``diffusers_cli/models/weights/``.
BUILTIN_MODELS: dict[str, str] = {
    "shapes": "shapes.safetensors",
    "shapes-ve": "shapes-ve.safetensors",
    "shapes-subvp": "shapes-subvp.safetensors",
    "shapes-classifier": "shapes-classifier.safetensors",
    "mnist": "mnist.safetensors",
    "mnist-classifier": "mnist-classifier.safetensors",
    "mnist-judge": "mnist-judge.safetensors",
}


def is_builtin_ref(model: object) -> bool:
    """Whether ``--model`` names a ready-made model (``builtin:NAME``)."""
    return str(model).startswith(PREFIX)


def weights_dir() -> Path:
    """The package folder that holds the ready-made weights."""
    return Path(str(resources.files("diffusers_cli.models") / "weights"))


def resolve(ref: str) -> Path:
    """The weights file of ``builtin:NAME``; CheckpointError naming the models for an unknown name or a missing file."""
    name = str(ref)[len(PREFIX):]
    if name not in BUILTIN_MODELS:
        raise CheckpointError(f"there is no ready-made model {name!r}; use one of "
                              f"{', '.join(PREFIX + n for n in BUILTIN_MODELS)} (`diffuse models` describes them)")
    path = weights_dir() / BUILTIN_MODELS[name]
    if not path.is_file():
        raise CheckpointError(f"the weights of {PREFIX}{name} are missing from this installation ({path}); "
                              "reinstall diffusers-cli, or rebuild them with `python examples/"
                              f"{'builtin_judge.py' if name == 'mnist-judge' else 'builtin_models.py'}`")
    return path


def describe(name: str) -> dict[str, Any]:
    """What `diffuse models` says of one ready-made model, read from its card alone (no weights are loaded)."""
    path = resolve(PREFIX + name)
    card = read_card(path)
    info = dict(card.extra.get("builtin", {}))
    return {
        "name": PREFIX + name, "kind": card.kind, "description": info.get("description", ""),
        "image_shape": list(card.image_shape), "classes": list(card.class_names),
        # A judge reads clean images: the SDE its card must carry means nothing, and is not shown.
        "sde": {"kind": "no"} if card.kind == "judge" else card.sde.model_dump(mode="json"),
        "dataset": card.dataset, "parameterization": card.parameterization, "training_steps": card.step,
        "parameters": info.get("parameters"), "size_bytes": path.stat().st_size, "dtype": info.get("dtype"),
        "recipe": info.get("recipe"), "commit": info.get("commit"), "data": info.get("data"),
        "train_seconds": info.get("train_seconds"), "train_threads": info.get("train_threads"), "cpu": info.get("cpu"),
        "quality": info.get("quality", {}), "goes_with": info.get("goes_with"),
        # What `diffuse sample` runs on it when given neither --sampler nor --steps.
        "recommended": None if card.recommended is None else {"sampler": card.recommended.sampler,
                                                              "steps": card.recommended.steps},
        "tuned_grids": shipped_grids(name),
    }


def shipped_grids(name: str) -> list[dict[str, Any]]:
    """The tuned grids shipped for ``builtin:NAME`` (the package's grids.json, made by examples/builtin_models.py):
    sampler, steps, whether each is used by default (kept: it beat the default grid on held-out noise and under the
    judge), and what it cost. Read as JSON alone: no weights are loaded."""
    path = weights_dir() / GRIDS_NAME
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))["grids"] if path.is_file() else []
    except (OSError, ValueError, KeyError, TypeError):
        return []  # a damaged file is reported where grids are used (parts.tuned_grids), not in a listing
    return [{"sampler": e.get("sampler"), "steps": e.get("steps"), "kept": e.get("kept") is True,
             "seconds": (e.get("cost") or {}).get("seconds")} for e in entries if e.get("model") == PREFIX + name]
