"""A run directory's layout: the names of its files and folders (each written once, here), where a run lies, its metrics log."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from diffusers_cli.run.reader import RunFileError, RunFiles, shown
from diffusers_cli.support.errors import UsageError
from diffusers_cli.support.files import MACHINE_ERRNOS, atomic_path, check_run_name, machine_error

METRICS_NAME = "metrics.jsonl"
CONFIG_NAME = "config.json"
LOSS_PLOT_NAME = "loss.png"
#: Evaluation during training: the figures' plot, the best checkpoint, the cached reference statistics.
METRICS_PLOT_NAME = "metrics.png"
BEST_NAME = "best.safetensors"
EVAL_REFERENCE_NAME = "eval_reference.npz"
#: The report page, the preview grids' folder and tuned time grids (`diffuse tune`: {"grids": [...]}).
REPORT_NAME = "report.html"
SAMPLES_DIR = "samples"
GRIDS_NAME = "grids.json"
#: Snapshots (``train --snapshot-every``): EMA weights with their card, one file per step; ``evaluate --snapshots``
#: writes its table and plot of them beside the run's other figures.
SNAPSHOTS_DIR = "snapshots"
SNAPSHOT_SCORES_NAME = "snapshot_scores.json"
SNAPSHOT_PLOT_NAME = "snapshot_metrics.png"


#: The preview grid at the end of training, in the run's own folder.
FINAL_SAMPLES_NAME = "samples.png"
#: Preview grids during training (``--sample-every``), one per step in SAMPLES_DIR: ``step_grid_name`` and its glob.
STEP_GRIDS = "step_*.png"


def step_grid_name(step: int) -> str:
    """The file name of the preview grid of ``step`` in SAMPLES_DIR (zero-padded, so names sort by step)."""
    return f"step_{step:07d}.png"


def snapshot_name(step: int) -> str:
    """The file name of the snapshot of ``step`` (zero-padded, so names sort by step)."""
    return f"snapshot_{step:07d}.safetensors"


#: The file names ``snapshot_name`` writes (ASCII digits: \d would take other scripts' digits too), and their glob.
SNAPSHOT_FILE = re.compile(r"snapshot_([0-9]+)\.safetensors")
SNAPSHOTS = "snapshot_*.safetensors"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def run_dir_inside(out: Path, name: str) -> Path:
    """``out / name`` once the name is checked and the resolved path is seen to stay inside ``out``."""
    run = out / check_run_name(name)
    if not run.resolve().is_relative_to(out.resolve()):  # e.g. a symlink named like the run pointing elsewhere
        raise UsageError(f"run {run} resolves to {run.resolve()}, outside --out {out}; choose another --name")
    return run


def new_run_name(dataset: str, sde: str) -> str:
    """A readable, sortable, unique-enough run name: dataset-sde-YYYYmmdd-HHMMSS."""
    return f"{Path(dataset).name}-{sde}-{time.strftime('%Y%m%d-%H%M%S')}"


def latest_run(runs_dir: Path) -> Path | None:
    """The most recently modified run directory under ``runs_dir`` that has a config."""
    runs = [p.parent for p in runs_dir.glob(f"*/{CONFIG_NAME}")] if runs_dir.is_dir() else []
    return max(runs, key=lambda p: p.stat().st_mtime) if runs else None


class MetricsLog:
    """Append-only JSON-lines log of training metrics (one object per line, flushed each write)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        """Append one record; a full disk raises MachineError naming the log (a torn last line is skipped on read)."""
        try:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as err:
            if err.errno in MACHINE_ERRNOS:
                raise machine_error(self.path, err, "its earlier records are intact") from err
            raise

    def read(self) -> list[dict[str, Any]]:
        """All records so far (a torn last line from a crash is skipped, and so is a line that is not a record).

        Read through the run's reader: a log that links out of the run, or is not a plain file, is RunFileError.
        """
        try:
            text = RunFiles.of(self.path.parent).read_text(self.path.name)
        except UnicodeDecodeError:
            raise RunFileError(f"{shown(self.path)} is not UTF-8 text; the log is damaged (restore it, or remove it "
                               "to go on without its records)", "it is not UTF-8 text") from None
        rows = []
        for line in (text or "").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                rows.append(row)
        return rows

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (a resumed run re-does them), and any whose step is not a number."""
        keep = [r for r in self.read() if _number(r.get("step", 0)) and r.get("step", 0) <= step]
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in keep), encoding="utf-8")
