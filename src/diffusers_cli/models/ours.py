"""Our own checkpoints: a run directory or a .safetensors file of ``diffuse train``, rebuilt from its ModelCard."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from diffusers_cli.checkpoints.weights import WEIGHTS_NAME, check_fits, load_into, load_model, read_card, stored_shapes, subset
from diffusers_cli.checkpoints.card import CheckpointError, ModelCard
from diffusers_cli.engine.networks.classifier import WideResNet
from diffusers_cli.engine.networks.judge import Judge
from diffusers_cli.engine.networks.unet import UNet
from diffusers_cli.engine.sde import SDE
from diffusers_cli.models.diffusers_folder import DiffusersUNet
from diffusers_cli.run.reader import RunFiles

#: Network classes by the ``arch`` a model card names (checkpoints.ARCHS).
NETWORKS: dict[str, Callable[..., nn.Module]] = {"unet": UNet, "wrn": WideResNet, "diffusers": DiffusersUNet, "judge": Judge}


def arch_of(net: nn.Module) -> str:
    """The ``arch`` a card names for this network."""
    for arch, cls in NETWORKS.items():
        if isinstance(cls, type) and isinstance(net, cls):
            return arch
    raise ValueError(f"{type(net).__name__} is not a network a model card can name ({', '.join(NETWORKS)})")


def sde_from_card(card: ModelCard) -> SDE:
    """The SDE a card's model was trained for (the card's typed SDE config builds it)."""
    return card.sde.build()


def network_from_card(card: ModelCard, path: Path) -> nn.Module:
    """The network a card describes (its own config), untrained; CheckpointError if the config does not build."""
    try:
        return NETWORKS[card.arch](**card.network)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: its model card describes a network that cannot be built ({err})") from None


def newest_run(runs_dir: Path) -> Path:
    """The weights of the most recently written run under ``runs_dir``."""
    candidates = sorted(runs_dir.glob(f"*/{WEIGHTS_NAME}"), key=lambda p: p.lstat().st_mtime) if runs_dir.is_dir() else []
    if candidates:  # the newest run's weights, read only from inside it (run.reader)
        candidates[-1] = RunFiles.of(candidates[-1].parent).file(WEIGHTS_NAME) or candidates[-1]
    if not candidates:
        raise CheckpointError(f"no --model given and no trained run under {runs_dir}/; run `diffuse train` first or pass --model")
    return candidates[-1]


def check_card_fits(path: Path, card: ModelCard, prefix: str) -> None:
    """The network the card describes has exactly the shapes of the weights under ``prefix``: checked before any allocation.

    The network is built on the meta device (shapes, no memory) and the weights' shapes come from the safetensors
    header, so a card claiming a network far larger than its weights fails in milliseconds with one line.
    """
    stored = stored_shapes(path)
    with torch.device("meta"):
        net = network_from_card(card, path)
    n = len(prefix) + 1
    check_fits({k: tuple(v.shape) for k, v in net.state_dict().items()},
               {k[n:]: v for k, v in stored.items() if k.startswith(prefix + ".")}, path)


def load_net(path: Path, kind: str, use_ema: bool = True, checked: bool = False) -> tuple[nn.Module, ModelCard]:
    """The network (EMA or online weights, eval mode) and card of one of our model files of ``kind`` (score | classifier).

    ``checked``: the caller has already run ``check_card_fits`` on this file (``parts.opening.locate``).
    """
    card = read_card(path)
    if card.kind != kind:
        wanted = {"score": ("score model", "pass the score model's run"),
                  "classifier": ("classifier", "pass a run of `diffuse train --task classifier`"),
                  "judge": ("judge", "pass builtin:mnist-judge or a file of examples/builtin_judge.py")}[kind]
        raise CheckpointError(f"{path} holds a {card.kind} model, not a {wanted[0]}; {wanted[1]}")
    prefix = "ema" if use_ema else "online"
    if not use_ema and not any(k.startswith("online.") for k in stored_shapes(path)):
        # The ready-made models and snapshots ship their EMA weights alone (half the size).
        raise CheckpointError(f"{path} holds only EMA weights; drop --no-ema")
    if not checked:
        check_card_fits(path, card, prefix)
    tensors, card = load_model(path)
    net = network_from_card(card, path)
    load_into(net, subset(tensors, prefix), path)
    return net.eval(), card
