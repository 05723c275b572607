"""Checkpoints without pickle: safetensors weights with JSON metadata, and a resumable training state."""

from __future__ import annotations

from diffusers_cli.errors import UsageError

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor, nn

from diffusers_cli.files import atomic_path

FORMAT = "diffusers-cli"
FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
STATE_NAME = "state.safetensors"


class CheckpointError(UsageError):
    """A checkpoint is missing, corrupt, foreign, or does not fit the model it is loaded into."""


def save_weights(path: Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """Write tensors and JSON-able metadata as one self-describing safetensors file, atomically."""
    header = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "meta": json.dumps(meta)}
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(Path(path)) as tmp:
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
    try:
        return load_file(str(path)), meta
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
