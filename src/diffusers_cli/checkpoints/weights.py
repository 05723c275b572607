"""Model files without pickle: safetensors tensors with a ModelCard (or plain metadata) as JSON, written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor, nn

from diffusers_cli.checkpoints.card import FORMAT, FORMAT_VERSION, CheckpointError, ModelCard
from diffusers_cli.support.files import atomic_path

WEIGHTS_NAME = "model.safetensors"
STATE_NAME = "state.safetensors"


def save_model(path: Path, tensors: dict[str, Tensor], card: ModelCard, atomic: bool = True) -> None:
    """Write a model's tensors with its card, atomically (``atomic=False``: the caller already writes to a temporary path)."""
    _save(path, tensors, card.to_json(), atomic)


def read_card(path: Path) -> ModelCard:
    """The card of a diffusers-cli model file (migrated if it is version 1), validating that it is one."""
    meta = read_meta(path)
    if isinstance(meta, dict) and meta.get("kind") == "train-state":
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
    name = _utf8(path)
    try:
        with safe_open(name, framework="pt") as f:
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


def _utf8(path: Path) -> str:
    """The path as safetensors takes it (UTF-8 text); CheckpointError for a name of other bytes, which it cannot open."""
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a name of non-UTF-8 bytes reaches Python as lone surrogates
        shown = os.fsencode(path).decode("utf-8", "replace")
        raise CheckpointError(f"{shown} cannot be read: safetensors opens only paths whose names are UTF-8 text; "
                              "rename the file or its folder") from None
    return text


def _load_tensors(path: Path) -> dict[str, Tensor]:
    name = _utf8(path)
    try:
        return load_file(name)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is corrupt ({err}); restore it or retrain") from None


def subset(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The tensors under ``prefix.`` with the prefix removed."""
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def stored_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape as the safetensors header states it, without reading any tensor."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file ({err}); is it corrupt or truncated?") from None


def check_fits(own: dict[str, tuple[int, ...]], stored: dict[str, tuple[int, ...]], source: Path) -> None:
    """CheckpointError, one line, unless the stored tensors have exactly the names and shapes a network's own have."""
    missing = sorted(set(own) - set(stored))
    extra = sorted(set(stored) - set(own))
    wrong = sorted(k for k in set(own) & set(stored) if tuple(own[k]) != tuple(stored[k]))
    if missing or extra or wrong:
        what = (
            f"missing {missing[0]!r}" if missing else f"unexpected {extra[0]!r}" if extra
            else f"{wrong[0]!r} has shape {tuple(stored[wrong[0]])}, expected {tuple(own[wrong[0]])}"
        )
        raise CheckpointError(f"weights in {source} do not fit the network its metadata describes ({what})")


def load_into(module: nn.Module, state: dict[str, Tensor], source: Path) -> None:
    """Load a state dict strictly, turning key or shape mismatches into one clear line."""
    check_fits({k: tuple(v.shape) for k, v in module.state_dict().items()}, {k: tuple(v.shape) for k, v in state.items()}, source)
    module.load_state_dict(state)


# ---- resumable training state ----------------------------------------------------------
