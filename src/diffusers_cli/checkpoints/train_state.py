"""A resumable training state: optimizer moments, RNG states and counters as safetensors plus JSON (no pickle)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffusers_cli.checkpoints.card import CheckpointError
from diffusers_cli.checkpoints.weights import load_weights, save_weights


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
    """Optimizer moments, the run's generator and counters, as safetensors + JSON.

    torch's default generators are not saved: training never draws from them (its dropout is seeded per step),
    so they are no part of a run's state.
    """
    tensors, groups = _optimizer_tensors(optimizer)
    tensors["rng.generator"] = generator.get_state()
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
    # An older state's rng.torch / rng.cuda.* (the default generators) are left unread: setting them would change the
    # caller's global generators and nothing in training draws from them any more.
    generator.set_state(tensors["rng.generator"])
    return meta
