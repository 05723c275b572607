"""Where a score model comes from: our checkpoints, the ready-made models, diffusers folders, the Hugging Face cache -> (ScoreModel, ModelCard).

``--model`` is resolved here, once, for every command that reads a model:
- nothing: the newest run under ``runs/``;
- a run directory or a ``.safetensors`` file of ``diffuse train`` (``models.ours``);
- ``RUN@STEP``: the run's snapshot of that step (``run.snapshots``, written by ``train --snapshot-every``);
- ``builtin:NAME``: a ready-made model shipped in the package (``models.builtin``);
- a diffusers pipeline folder or a bare UNet2DModel folder (``models.diffusers_folder``);
- ``hf:ORG/NAME[@REVISION]``: a snapshot in the Hugging Face cache, fetched only with --download (``models.hub``).
Below the jobs and build.py, above the engine (which never imports it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from diffusers_cli.checkpoints.weights import WEIGHTS_NAME, read_card
from diffusers_cli.checkpoints.card import CheckpointError, ModelCard
from diffusers_cli.engine.score import ScoreModel
from diffusers_cli.engine.sde import SDE
from diffusers_cli.models import builtin, diffusers_folder, hub, ours
from diffusers_cli.run.reader import RunFiles
from diffusers_cli.run.snapshots import list_snapshots


def resolve_model_path(model: Path | str | None, runs_dir: Path = Path("runs"), download: bool = False) -> Path:
    """The file or folder ``--model`` names: our weights file, a diffusers folder, or a cached hf: snapshot."""
    if model is None:
        return ours.newest_run(Path(runs_dir))
    if hub.is_hub_ref(model):
        return hub.resolve(str(model), download)
    if builtin.is_builtin_ref(model):
        return builtin.resolve(str(model))
    path = Path(model)
    if not path.exists() and (snapshot := snapshot_of(str(model))) is not None:
        return snapshot
    if path.is_dir():
        # A run's weights are read only from inside the run (run.reader): a link to a file elsewhere is refused.
        weights = RunFiles.of(path).file(WEIGHTS_NAME) if os.path.lexists(path / WEIGHTS_NAME) else None
        if weights is not None:
            return weights
        if diffusers_folder.is_diffusers_folder(path):
            return path
        raise CheckpointError(f"{model} holds neither {WEIGHTS_NAME} (a run of `diffuse train`) nor a diffusers model "
                              "(model_index.json, or the config.json of a UNet2DModel)")
    if not path.exists():
        raise CheckpointError(f"model {model} does not exist; pass a run directory, a .safetensors file, a diffusers folder, "
                              "hf:ORG/NAME or builtin:NAME (`diffuse models` lists them)")
    return path


def snapshot_of(model: str) -> Path | None:
    """The snapshot file ``RUN@STEP`` names (None when ``model`` is not of that form); CheckpointError for a step it lacks."""
    run, at, step = model.rpartition("@")
    if not at or not run or not step.isdigit() or not Path(run).is_dir():
        return None
    snapshots = list_snapshots(Path(run))
    if int(step) in snapshots:
        # Read from inside the run only (run.reader): a snapshot linked to a file elsewhere is refused.
        found = RunFiles.of(run).file(snapshots[int(step)].relative_to(run))
        if found is not None:
            return found
    if not snapshots:
        raise CheckpointError(f"{run} keeps no snapshots, so it has none of step {int(step)}; "
                              "train with --snapshot-every N to keep them, or pass the run itself")
    raise CheckpointError(f"{run} has no snapshot of step {int(step)}; its snapshots are of steps "
                          f"{', '.join(str(s) for s in snapshots)} (pass {run}@STEP with one of them)")


def read_model_card(path: Path | str) -> ModelCard:
    """The card of a resolved model (``resolve_model_path``) without reading its weights."""
    path = Path(path)
    return diffusers_folder.read_card(path) if path.is_dir() else read_card(path)


def load_score_model(model: Path | str | None, use_ema: bool = True, download: bool = False,
                     checked: bool = False) -> tuple[ScoreModel, ModelCard]:
    """The score model ``model`` names (EMA weights of our runs by default) and its card; its SDE is the card's.

    ``checked``: our card was already checked against its weights' shapes (``ours.check_card_fits``).
    """
    path = resolve_model_path(model, Path("runs"), download)
    net: nn.Module
    if path.is_dir():
        net, card = diffusers_folder.load(path)
    else:
        net, card = ours.load_net(path, "score", use_ema, checked)
    return ScoreModel(net, ours.sde_from_card(card), str(card.parameterization)).eval(), card


def load_classifier(model: Path | str) -> tuple[nn.Module, SDE, ModelCard]:
    """A time-dependent classifier of ours, the SDE it was trained for, and its card."""
    path = resolve_model_path(model)
    if path.is_dir():
        raise CheckpointError(f"{model} is a diffusers folder, not a classifier; pass a run of `diffuse train --task classifier`")
    net, card = ours.load_net(path, "classifier")
    return net, ours.sde_from_card(card), card


@dataclass
class Loaded:
    """A model read once, for jobs that are handed one instead of a ``--model`` (the Python face, ``dc.load_model``).

    Pass it to ``dc.sample``, ``dc.condition`` or ``dc.impute`` (or as ``classifier=``) to skip reading it again.

    Attributes:
        spec: What the user named: a path, ``hf:ORG/NAME[@REV]``, ``builtin:NAME`` (the resolved path when None was).
        path: The file or folder it resolved to.
        card: The model card (``checkpoints.card.ModelCard``): kind, SDE, image shape (C, H, W), class names,
            parameterization, training step, the sampler it recommends (``card.recommended``) and provenance.
        net: The network (``torch.nn.Module``, in eval mode): the score network, or the classifier.
        sde: The forward SDE (``engine.sde.SDE``) the model was trained for.
        score: The score model (``engine.score.ScoreModel``: ``score.score(x, t, labels)`` is grad_x log p_t(x));
            None for a classifier.
        use_ema: Whether ``net`` holds the EMA weights (our runs; False: the online ones).
    """

    spec: str  # what the user named (a path, hf:..., builtin:...)
    path: Path  # the file or folder it resolved to
    card: ModelCard  # what the model says about itself
    net: nn.Module  # the score network (inside ``score``) or the classifier
    sde: SDE  # the SDE it was trained for
    score: ScoreModel | None  # the score model; None for a classifier
    use_ema: bool = True  # whether ``net`` holds the EMA weights

    def __repr__(self) -> str:
        c, h, w = self.card.image_shape
        classes = f", classes {list(self.card.class_names)}" if self.card.class_names else ""
        return (f"Model({self.spec!s}: {self.card.kind}, {c}x{h}x{w}, {self.card.sde.kind} SDE, "
                f"{sum(p.numel() for p in self.net.parameters()):,} parameters{classes})")


def load(spec: Path | str | None, use_ema: bool = True, download: bool = False, runs_dir: Path = Path("runs")) -> Loaded:
    """Any ``--model`` value as a Loaded model: a score model, or one of our classifiers."""
    path = resolve_model_path(spec, runs_dir, download)
    if not path.is_dir() and read_card(path).kind == "classifier":
        net, sde, card = load_classifier(path)
        return Loaded(str(spec), path, card, net, sde, None, use_ema)
    score, card = load_score_model(path, use_ema)
    return Loaded(str(spec if spec is not None else path), path, card, score.net, score.sde, score, use_ema)


def score_model_of(loaded: Loaded) -> ScoreModel:
    """The score model of a Loaded model; CheckpointError for a classifier."""
    if loaded.score is None:
        raise CheckpointError(f"{loaded.spec} is a classifier, not a score model; pass it as the classifier and a score model as the model")
    return loaded.score
