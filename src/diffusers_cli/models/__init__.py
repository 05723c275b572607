"""Where a score model comes from: our checkpoints, diffusers folders and the Hugging Face cache -> (ScoreModel, ModelCard).

``--model`` is resolved here, once, for every command that reads a model:
- nothing: the newest run under ``runs/``;
- a run directory or a ``.safetensors`` file of ``diffuse train`` (``models.ours``);
- a diffusers pipeline folder or a bare UNet2DModel folder (``models.diffusers_folder``);
- ``hf:ORG/NAME[@REVISION]``: a snapshot in the Hugging Face cache, fetched only with --download (``models.hub``).
Below the jobs and build.py, above the engine (which never imports it).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from diffusers_cli.checkpoints import WEIGHTS_NAME, CheckpointError, ModelCard, read_card
from diffusers_cli.engine.score import ScoreModel
from diffusers_cli.engine.sde import SDE
from diffusers_cli.models import diffusers_folder, hub, ours


def resolve_model_path(model: Path | str | None, runs_dir: Path = Path("runs"), download: bool = False) -> Path:
    """The file or folder ``--model`` names: our weights file, a diffusers folder, or a cached hf: snapshot."""
    if model is None:
        return ours.newest_run(Path(runs_dir))
    if hub.is_hub_ref(model):
        return hub.resolve(str(model), download)
    path = Path(model)
    if path.is_dir():
        if (path / WEIGHTS_NAME).is_file():
            return path / WEIGHTS_NAME
        if diffusers_folder.is_diffusers_folder(path):
            return path
        raise CheckpointError(f"{model} holds neither {WEIGHTS_NAME} (a run of `diffuse train`) nor a diffusers model "
                              "(model_index.json, or the config.json of a UNet2DModel)")
    if not path.exists():
        raise CheckpointError(f"model {model} does not exist; pass a run directory, a .safetensors file, a diffusers folder "
                              "or hf:ORG/NAME")
    return path


def read_model_card(path: Path | str) -> ModelCard:
    """The card of a resolved model (``resolve_model_path``) without reading its weights."""
    path = Path(path)
    return diffusers_folder.read_card(path) if path.is_dir() else read_card(path)


def load_score_model(model: Path | str | None, use_ema: bool = True, download: bool = False) -> tuple[ScoreModel, ModelCard]:
    """The score model ``model`` names (EMA weights of our runs by default) and its card; its SDE is the card's."""
    path = resolve_model_path(model, Path("runs"), download)
    net: nn.Module
    if path.is_dir():
        net, card = diffusers_folder.load(path)
    else:
        net, card = ours.load_net(path, "score", use_ema)
    return ScoreModel(net, ours.sde_from_card(card), str(card.parameterization)).eval(), card


def load_classifier(model: Path | str) -> tuple[nn.Module, SDE, ModelCard]:
    """A time-dependent classifier of ours, the SDE it was trained for, and its card."""
    path = resolve_model_path(model)
    if path.is_dir():
        raise CheckpointError(f"{model} is a diffusers folder, not a classifier; pass a run of `diffuse train --task classifier`")
    net, card = ours.load_net(path, "classifier")
    return net, ours.sde_from_card(card), card
