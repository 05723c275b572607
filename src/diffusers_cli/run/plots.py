"""A run's pictures drawn with matplotlib: the loss curve (loss.png) and the evaluation figures (metrics.png).

matplotlib is imported inside the functions, with the Agg canvas and no pyplot (no global figure
state, no display), so `diffuse --help` never loads it. Each ``*_figure`` returns the Figure, so the
tests read the plotted points back from its artists; ``save_figure`` writes a PNG atomically.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from diffusers_cli.support.files import atomic_path

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: Artist labels, so that tests (and readers of the legend) find each curve by name.
RAW_LABEL = "loss (each record)"
SMOOTH_LABEL = "loss (smoothed)"
LR_LABEL = "learning rate"
BEST_LABEL = "best checkpoint"

#: A positive series whose largest value is this many times its smallest is drawn on a log axis.
DECADES = 10.0
_DPI = 100
_BLUE, _ORANGE, _GREY = "#1f77b4", "#ff7f0e", "#7f7f7f"


class Ranked(Protocol):
    """What a plot needs of a metric (engine.metrics.Metric satisfies it)."""

    headline: str
    higher_is_better: bool


@dataclass(frozen=True)
class BestMark:
    """The checkpoint kept as best: which metric ranked it, its figure and its step."""

    metric: str
    value: float
    step: int


def finite(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points whose x and y are finite numbers (a NaN loss or a missing figure is left out, not drawn as 0)."""
    out = []
    for x, y in points:
        try:
            fx, fy = float(x), float(y)
        except (TypeError, ValueError):
            continue
        if math.isfinite(fx) and math.isfinite(fy):
            out.append((fx, fy))
    return out


def smooth(values: Sequence[float]) -> list[float]:
    """A centred moving average over about a twentieth of the series on each side (narrower at the ends).

    Centred, unlike an exponential average, so the line does not lag a falling loss; the window shrinks
    symmetrically towards the ends, so the first and last points are the records themselves.
    """
    n = len(values)
    half = max(1, n // 20)
    out = []
    for i in range(n):
        h = min(half, i, n - 1 - i)
        window = values[i - h : i + h + 1]
        out.append(sum(window) / len(window))
    return out


def spans_decades(values: Iterable[float]) -> bool:
    """Whether a log axis suits the values: all positive and the largest at least ``DECADES`` times the smallest."""
    vals = [v for v in values if math.isfinite(v)]
    return bool(vals) and min(vals) > 0 and max(vals) / min(vals) >= DECADES


def steps_per_epoch_of(rows: Iterable[Mapping[str, Any]]) -> float | None:
    """Steps per epoch read from the log's records (step / epoch), or None when no record says."""
    for row in rows:
        step, epoch = row.get("step"), row.get("epoch")
        if isinstance(step, (int, float)) and isinstance(epoch, (int, float)) and epoch > 0:
            return float(step) / float(epoch)
    return None


def _new_figure(width: float, height: float) -> Figure:
    """A Figure on the Agg canvas, outside pyplot (no global state, works without a display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _style(ax: Axes, xlabel: str | None, ylabel: str) -> None:
    """A light grid under the data, labelled axes."""
    ax.grid(True, which="major", color="#dddddd", linewidth=0.8)
    ax.grid(True, which="minor", color="#f0f0f0", linewidth=0.5)
    ax.set_axisbelow(True)
    if xlabel:
        ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)


def _epoch_axis(ax: Axes, steps_per_epoch: float | None) -> None:
    """Epochs along the top, when the run counts them."""
    if steps_per_epoch:
        top = ax.secondary_xaxis("top", functions=(lambda s: s / steps_per_epoch, lambda e: e * steps_per_epoch))
        top.set_xlabel("epoch")


def _empty(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color=_GREY)


def loss_figure(rows: Sequence[Mapping[str, Any]], title: str = "training loss",
                steps_per_epoch: float | None = None) -> Figure:
    """The loss of each metrics.jsonl record (faint), its smoothed line, and the learning rate on a second axis."""
    fig = _new_figure(8, 4.5)
    ax = fig.add_subplot()
    pts = finite((r.get("step"), r.get("loss")) for r in rows if "loss" in r)
    lrs = finite((r.get("step"), r.get("lr")) for r in rows if "lr" in r)
    _style(ax, "training step", "loss")
    ax.set_title(title)
    handles = []
    if pts:
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        few = len(pts) < 50  # markers where a line alone would hide single records
        handles += ax.plot(xs, ys, color=_BLUE, alpha=0.3, linewidth=1, marker="o" if few else None, markersize=3,
                           label=RAW_LABEL)
        if len(pts) > 2:
            handles += ax.plot(xs, smooth(ys), color=_BLUE, linewidth=2, label=SMOOTH_LABEL)
        if spans_decades(ys):
            ax.set_yscale("log")
    else:
        _empty(ax, "no finite loss recorded yet")
    if lrs:
        from matplotlib.ticker import FormatStrFormatter

        ax2 = ax.twinx()
        handles += ax2.plot([p[0] for p in lrs], [p[1] for p in lrs], color=_ORANGE, linewidth=1, linestyle="--",
                            label=LR_LABEL)
        ax2.set_ylabel(LR_LABEL, color=_ORANGE)
        ax2.tick_params(axis="y", colors=_ORANGE)
        ax2.yaxis.set_major_formatter(FormatStrFormatter("%.2g"))  # 0.003, not 3.0 under a '1e-3' offset
        ax2.set_ylim(bottom=0)
    if handles:
        # Centre right: a falling loss has left it and the learning rate's plateau runs above it.
        ax.legend(handles=handles, loc="center right", fontsize="small")
    _epoch_axis(ax, steps_per_epoch)
    return fig


@dataclass(frozen=True)
class Series:
    """One metric's headline figure at each evaluation, with its spread (0 where none was measured)."""

    name: str
    headline: str
    higher_is_better: bool
    steps: list[float]
    values: list[float]
    errors: list[float]
    spread: str | None  # how the spread was measured (bootstrap, subsets, splits), from the figures


def evaluation_series(rows: Sequence[Mapping[str, Any]], metrics: Mapping[str, Ranked]) -> list[Series]:
    """Each known metric's (step, headline, std) from the evaluation records, finite ones only, in log order."""
    found: dict[str, list[tuple[float, float, float]]] = {}
    spread: dict[str, str | None] = {}
    for row in rows:
        evaluation = row.get("eval")
        if not isinstance(evaluation, Mapping):
            continue
        for name, figures in evaluation.items():
            metric = metrics.get(name)
            if metric is None or not isinstance(figures, Mapping):
                continue
            pts = finite([(row.get("step"), figures.get(metric.headline))])
            points = found.setdefault(name, [])
            if pts:
                std = finite([(0, figures.get("std"))])
                points.append((*pts[0], std[0][1] if std else 0.0))
                spread[name] = figures.get("std_method") or spread.get(name)
    return [Series(name, metrics[name].headline, metrics[name].higher_is_better, [p[0] for p in pts],
                   [p[1] for p in pts], [p[2] for p in pts], spread.get(name)) for name, pts in found.items()]


def metrics_figure(rows: Sequence[Mapping[str, Any]], metrics: Mapping[str, Ranked], best: BestMark | None = None,
                   steps_per_epoch: float | None = None) -> Figure:
    """One panel per metric: its headline figure by training step with error bars (+- std), the best checkpoint starred."""
    series = evaluation_series(rows, metrics)
    fig = _new_figure(8, 0.6 + 2.8 * max(1, len(series)))
    if not series:
        ax = fig.add_subplot()
        _style(ax, "training step", "figure")
        ax.set_title("evaluations")
        _empty(ax, "no evaluations yet")
        return fig
    axes = fig.subplots(len(series), 1, sharex=True, squeeze=False)[:, 0]
    for i, (ax, s) in enumerate(zip(axes, series)):
        last = i == len(series) - 1
        better = "higher" if s.higher_is_better else "lower"
        spread = f", bars: +- std over {s.spread}" if s.spread and any(s.errors) else ""
        _style(ax, "training step" if last else None, s.name.upper())
        ax.set_title(f"{s.name.upper()} ({s.headline}; {better} is better{spread})", fontsize="medium")
        if not s.steps:
            _empty(ax, "no finite figure yet")
            continue
        ax.errorbar(s.steps, s.values, yerr=s.errors, color=_BLUE, marker="o", markersize=4, capsize=3, linewidth=1.5,
                    label=s.name.upper())
        if spans_decades(s.values):
            ax.set_yscale("log")
        if best is not None:
            ax.axvline(best.step, color=_GREY, linestyle=":", linewidth=1)
            if best.metric == s.name and best.step in s.steps:
                y = s.values[s.steps.index(best.step)]
                ax.plot([best.step], [y], linestyle="none", marker="*", markersize=15, color="gold",
                        markeredgecolor="black", label=BEST_LABEL)
                ax.annotate(f"best {y:.4g} (step {best.step:g})", (best.step, y), textcoords="offset points",
                            xytext=(-8, 10), ha="right", fontsize="small")
        ax.legend(loc="upper right", fontsize="small")
        if i == 0:
            _epoch_axis(ax, steps_per_epoch)
    return fig


def snapshots_figure(rows: Sequence[Mapping[str, Any]], metrics: Mapping[str, Ranked]) -> Figure:
    """One panel per metric: its headline figure (+- std) at each snapshot's training step (``evaluate --snapshots``' rows)."""
    return metrics_figure([{"step": r["step"], "eval": {k: v for k, v in r.items() if k != "step"}} for r in rows], metrics)


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return buf.getvalue()


def save_figure(fig: Figure, path: Path) -> bytes:
    """Write the figure as a PNG, atomically (a reader never sees half a picture); returns the PNG's bytes."""
    data = png_bytes(fig)
    with atomic_path(Path(path)) as tmp:
        tmp.write_bytes(data)
    return data
