"""Run directories and images: names, the metrics log, sample grids and individual PNGs (plots.py draws the curves)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffusers_cli.errors import UsageError
from diffusers_cli.files import MACHINE_ERRNOS, atomic_path, check_image_output, machine_error

if TYPE_CHECKING:  # torch and PIL load only when an image is written, so `diffuse --help` stays instant
    from PIL import Image
    from torch import Tensor

METRICS_NAME = "metrics.jsonl"
CONFIG_NAME = "config.json"
LOSS_PLOT_NAME = "loss.png"
#: Evaluation during training: the figures' plot, the best checkpoint, the cached reference statistics.
METRICS_PLOT_NAME = "metrics.png"
BEST_NAME = "best.safetensors"
EVAL_REFERENCE_NAME = "eval_reference.npz"


def check_run_name(name: str) -> str:
    """``name`` if it is one safe path component, else UsageError naming the rule it breaks."""
    if not name:
        problem = "is empty"
    elif any(c in name for c in "/\\"):
        problem = "contains a path separator"
    elif name in {".", ".."} or ".." in name:
        problem = "contains '..'"
    elif name.startswith("."):
        problem = "starts with '.' (a hidden directory)"
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        problem = "contains a control character"
    else:
        return name
    raise UsageError(f"run name {name!r} {problem}: a run name is one folder inside --out, without '/', '\\', '..', "
                     "a leading '.' or control characters")


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


def to_uint8(x: Tensor) -> Tensor:
    """Images in [-1, 1] -> uint8 [B, C, H, W] (clamped, rounded)."""
    import torch

    return ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def to_pil(img: Tensor) -> Image.Image:
    """One uint8 image [C, H, W] (1 or 3 channels) as a PIL image."""
    from PIL import Image

    arr = img.permute(1, 2, 0).numpy()
    return Image.fromarray(arr[..., 0], "L") if arr.shape[2] == 1 else Image.fromarray(arr, "RGB")


def make_grid(x: Tensor, nrow: int | None = None, padding: int = 2) -> Tensor:
    """Tile images in [-1, 1] into one uint8 image [C, H', W'] with ``nrow`` per row (square by default)."""
    import torch

    imgs = to_uint8(x)
    b, c, h, w = imgs.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(b)))
    rows = math.ceil(b / nrow)
    grid = torch.zeros(c, rows * (h + padding) + padding, nrow * (w + padding) + padding, dtype=torch.uint8)
    for i in range(b):
        r, col = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top : top + h, left : left + w] = imgs[i]
    return grid


def save_png(img: Tensor, path: Path) -> None:
    """Write one uint8 image [C, H, W] as PNG, atomically; any other extension is refused (OutputError)."""
    check_image_output(path, flag=None)
    with atomic_path(path) as tmp:
        to_pil(img).save(tmp, format="PNG")


def save_grid(x: Tensor, path: Path, nrow: int | None = None) -> None:
    """Write images in [-1, 1] as one grid PNG."""
    save_png(make_grid(x, nrow), path)


def save_individual(x: Tensor, path: Path, first: int = 0) -> list[Path]:
    """Write image i as ``<stem>_<first + i>.png`` beside ``path`` (its index in the job); returns the paths."""
    check_image_output(path, flag=None, individual=True)
    out = []
    for i, img in enumerate(to_uint8(x)):
        p = path.with_name(f"{path.stem}_{first + i:05d}.png")
        save_png(img, p)
        out.append(p)
    return out


def write_images(x: Tensor, out: Path, individual: bool, first: int = 0) -> list[Path]:
    """Write images in [-1, 1] as one grid PNG at ``out``, or one PNG each beside it (numbered from ``first``)."""
    if individual:
        return save_individual(x, out, first)
    save_grid(x, out)
    return [out]


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
        """All records so far (a torn last line from a crash is skipped)."""
        if not self.path.is_file():
            return []
        rows = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return rows

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (a resumed run re-does them)."""
        keep = [r for r in self.read() if r.get("step", 0) <= step]
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in keep), encoding="utf-8")
