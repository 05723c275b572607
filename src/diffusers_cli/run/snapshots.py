"""A run's snapshots (``train --snapshot-every``): the EMA weights with their card at chosen steps, kept beside the rolling checkpoint.

One file per step in ``runs/<name>/snapshots/`` (``run.layout.snapshot_name``), written atomically by rank 0;
``--keep-snapshots K`` deletes the oldest beyond K. ``--model RUN@STEP`` opens one (``models.resolve_model_path``),
``diffuse evaluate --snapshots`` scores them all.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffusers_cli.checkpoints.card import ModelCard
from diffusers_cli.run.layout import SNAPSHOT_FILE, SNAPSHOT_SCORES_NAME, SNAPSHOTS, SNAPSHOTS_DIR, snapshot_name
from diffusers_cli.run.reader import RunFiles
from diffusers_cli.support.files import write_text_atomic

if TYPE_CHECKING:  # the report and the listings read snapshots without torch
    from torch import Tensor, nn

#: The most bytes snapshot_scores.json may have: a table of figures per snapshot, far below this.
SCORES_LIMIT = 2**24


def list_snapshots(run_dir: Path) -> dict[int, Path]:
    """The run's snapshot files by step, oldest first ({} when it keeps none).

    Read through the run's reader: RunFileError (one line) for a snapshots folder or a snapshot that leads out of
    the run, or a snapshot that is not a plain file, so ``evaluate --snapshots`` never opens a file outside the run.
    """
    files = RunFiles.of(run_dir)
    found: dict[int, Path] = {}
    for name in files.names(SNAPSHOTS_DIR, SNAPSHOTS):
        m = SNAPSHOT_FILE.fullmatch(Path(name).name)
        if m and files.file(name) is not None:
            found[int(m.group(1))] = Path(run_dir) / name
    return dict(sorted(found.items()))


def write_snapshot(run_dir: Path, ema: nn.Module, card: ModelCard, keep: int | None) -> Path:
    """Write the EMA weights of ``card.step`` with their card, then delete the oldest snapshots beyond ``keep`` (None: keep all)."""
    from diffusers_cli.checkpoints.weights import save_model

    folder = Path(run_dir) / SNAPSHOTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / snapshot_name(card.step)
    # The "ema." prefix of the run's model.safetensors, so a snapshot opens like any of our weights files.
    tensors: dict[str, Tensor] = {f"ema.{k}": v for k, v in ema.state_dict().items()}
    save_model(path, tensors, card)
    if keep is not None:
        steps = list(list_snapshots(run_dir))
        for step in steps[: max(0, len(steps) - keep)]:
            (folder / snapshot_name(step)).unlink(missing_ok=True)
    return path


def drop_after(run_dir: Path, step: int) -> None:
    """Delete snapshots past ``step``: a resumed run re-trains those steps and writes them again."""
    for s, path in list_snapshots(run_dir).items():
        if s > step:
            path.unlink(missing_ok=True)


def _plain(value: Any) -> Any:
    """Figures as strict JSON: a non-finite float (a NaN FID of a diverged snapshot) as null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def write_scores(run_dir: Path, rows: list[dict[str, Any]]) -> Path:
    """Write ``evaluate --snapshots``' table ({"step": S, metric: figures, ...} per snapshot) into the run, atomically."""
    path = Path(run_dir) / SNAPSHOT_SCORES_NAME
    write_text_atomic(path, json.dumps({"snapshots": _plain(rows)}, indent=1) + "\n")
    return path


def read_scores(run_dir: Path) -> list[dict[str, Any]]:
    """The table ``write_scores`` wrote, rows with an integer step and figure dicts only; [] if absent or not ours.

    RunFileError (from the run's reader) if the file leads out of the run, is not a plain file or is too large.
    """
    try:
        text = RunFiles.of(run_dir).read_text(SNAPSHOT_SCORES_NAME, limit=SCORES_LIMIT)
        data = json.loads(text) if text is not None else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return []
    rows = data.get("snapshots") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        return []
    return [{"step": r["step"], **{k: v for k, v in r.items() if k != "step" and isinstance(v, dict)}}
            for r in rows if isinstance(r, dict) and type(r.get("step")) is int]
