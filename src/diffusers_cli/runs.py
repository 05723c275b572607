"""Run directories and images: names, the metrics log, sample grids, individual PNGs and the loss plot."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

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


def _panel(points: Iterable[tuple[float, float]], title: str, size: tuple[int, int], log_y: bool = True) -> Any:
    """One line plot as a PIL image (log-scaled y when asked and every value is positive), with no plotting library."""
    from PIL import Image, ImageDraw

    pts = [(float(x), float(y)) for x, y in points if math.isfinite(y)]
    w, h = size
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    left, right, top, bottom = 60, w - 20, 30, h - 40
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text((left, 8), title, fill="black")
    if len(pts) == 1:
        draw.ellipse([(left + right) / 2 - 3, (top + bottom) / 2 - 3, (left + right) / 2 + 3, (top + bottom) / 2 + 3],
                     fill=(31, 119, 180))
        draw.text((4, (top + bottom) / 2 - 5), f"{pts[0][1]:.3g}", fill="black")
        draw.text((left, bottom + 6), f"{pts[0][0]:g}", fill="black")
    if len(pts) >= 2:
        use_log = log_y and all(y > 0 for _, y in pts)
        ys = [math.log10(y) if use_log else y for _, y in pts]
        xs = [x for x, _ in pts]
        x0, x1 = min(xs), max(xs) or 1.0
        y0, y1 = min(ys), max(ys)
        if y1 - y0 < 1e-12:
            y0, y1 = y0 - 1, y1 + 1
        sx = lambda v: left + (v - x0) / max(x1 - x0, 1e-12) * (right - left)  # noqa: E731
        sy = lambda v: bottom - (v - y0) / (y1 - y0) * (bottom - top)  # noqa: E731
        draw.line([(sx(x), sy(y)) for x, y in zip(xs, ys)], fill=(31, 119, 180), width=2)
        for x, y in zip(xs, ys):
            draw.ellipse([sx(x) - 2, sy(y) - 2, sx(x) + 2, sy(y) + 2], fill=(31, 119, 180))
        fmt = (lambda v: f"{10 ** v:.3g}") if use_log else (lambda v: f"{v:.3g}")
        draw.text((4, top), fmt(y1), fill="black")
        draw.text((4, bottom - 10), fmt(y0), fill="black")
        draw.text((left, bottom + 6), f"{x0:g}", fill="black")
        draw.text((right - 40, bottom + 6), f"{x1:g}", fill="black")
    return img


def plot_series(points: Iterable[tuple[float, float]], path: Path, title: str = "loss", size: tuple[int, int] = (640, 400)) -> None:
    """A minimal line plot (log-scaled y when positive) written as PNG, atomically."""
    with atomic_path(path) as tmp:
        _panel(points, title, size).save(tmp, format="PNG")


def plot_panels(series: dict[str, list[tuple[float, float]]], path: Path, size: tuple[int, int] = (640, 300)) -> None:
    """One panel per series (title: its name), stacked top to bottom, as one PNG; linear y, so small changes show."""
    from PIL import Image

    panels = [_panel(points, title, size, log_y=False) for title, points in series.items()] or [_panel([], "no figures yet", size)]
    img = Image.new("RGB", (size[0], size[1] * len(panels)), "white")
    for i, panel in enumerate(panels):
        img.paste(panel, (0, i * size[1]))
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
