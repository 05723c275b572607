"""The run's curves: loss.png and metrics.png plot the metrics.jsonl records, read back from matplotlib's artists."""

from __future__ import annotations

import io
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image

from diffusers_cli.run.plots import (
    BEST_LABEL,
    LR_LABEL,
    RAW_LABEL,
    SMOOTH_LABEL,
    BestMark,
    evaluation_series,
    loss_figure,
    metrics_figure,
    png_bytes,
    save_figure,
    smooth,
    spans_decades,
    steps_per_epoch_of,
)

METRICS = {"fid": SimpleNamespace(headline="fid", higher_is_better=False),
           "kid": SimpleNamespace(headline="mean", higher_is_better=False),
           "is": SimpleNamespace(headline="mean", higher_is_better=True)}


def lines(fig: Any) -> dict[str, Any]:
    """Every labelled line of every axes of a figure, by label."""
    return {ln.get_label(): ln for ax in fig.axes for ln in ax.get_lines() if not ln.get_label().startswith("_")}


def texts(fig: Any) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def loss_rows(n: int = 40) -> list[dict[str, Any]]:
    rows = [{"step": 5 * (i + 1), "epoch": 5 * (i + 1) / 20, "loss": 2.0 * 0.9**i, "lr": 1e-3 * min(1.0, (i + 1) / 4),
             "it_per_s": 3.0} for i in range(n)]
    if n > 7:
        rows[7]["loss"] = float("nan")  # a skipped step's record: left out, not drawn as 0
    return rows


def eval_rows() -> list[dict[str, Any]]:
    return [
        {"step": 100, "epoch": 5.0, "eval": {"fid": {"fid": 1958.0, "std": 40.0, "std_method": "bootstrap"},
                                             "kid": {"mean": 0.5, "std": 0.05, "std_method": "subsets"},
                                             "is": {"mean": 1.2, "std": 0.1, "std_method": "splits"}}},
        {"step": 200, "epoch": 10.0, "eval": {"fid": {"fid": 104.0, "std": 33.0, "std_method": "bootstrap"},
                                              "kid": {"mean": float("nan"), "std": None},
                                              "is": {"mean": 1.5, "std": 0.2, "std_method": "splits"}}},
        {"step": 300, "epoch": 15.0, "eval": {"fid": {"fid": 120.0, "std": None, "std_method": None},
                                              "kid": {"mean": 0.04, "std": 0.01, "std_method": "subsets"},
                                              "is": {"mean": 1.4, "std": 0.1, "std_method": "splits"}}},
    ]


def test_loss_figure_plots_each_finite_record_its_smoothed_line_and_the_learning_rate() -> None:
    rows = loss_rows()
    fig = loss_figure(rows, "training loss (score)")
    got = lines(fig)
    finite = [(r["step"], r["loss"]) for r in rows if math.isfinite(r["loss"])]
    assert list(got[RAW_LABEL].get_xdata()) == [s for s, _ in finite]
    assert list(got[RAW_LABEL].get_ydata()) == pytest.approx([v for _, v in finite])
    # The smoothed line: a centred mean over 39 // 20 = 1 record on each side, the ends kept as they are.
    ys = [v for _, v in finite]
    expect = [ys[0]] + [(ys[i - 1] + ys[i] + ys[i + 1]) / 3 for i in range(1, len(ys) - 1)] + [ys[-1]]
    assert list(got[SMOOTH_LABEL].get_ydata()) == pytest.approx(expect)
    assert list(got[LR_LABEL].get_ydata()) == pytest.approx([r["lr"] for r in rows])
    loss_ax, lr_ax = got[RAW_LABEL].axes, got[LR_LABEL].axes
    assert lr_ax is not loss_ax and lr_ax.get_ylabel() == LR_LABEL  # the second y axis
    assert loss_ax.get_yscale() == "log"  # 2.0 down to 0.04: more than a decade
    assert loss_ax.get_xlabel() == "training step" and loss_ax.get_ylabel() == "loss" and loss_ax.get_title() == "training loss (score)"
    assert loss_ax.xaxis.get_gridlines()[0].get_visible()  # the light grid
    assert Image.open(io.BytesIO(png_bytes(fig))).size == (800, 450)


def test_a_loss_within_one_decade_stays_linear_and_epochs_show_only_when_asked() -> None:
    rows = [{"step": s, "epoch": s / 8, "loss": 1.0 + 0.01 * s} for s in range(1, 30)]
    ax = lines(loss_figure(rows))[RAW_LABEL].axes
    assert ax.get_yscale() == "linear" and not ax.child_axes
    ax = lines(loss_figure(rows, steps_per_epoch=steps_per_epoch_of(rows)))[RAW_LABEL].axes
    (top,) = ax.child_axes
    assert top.get_xlabel() == "epoch"
    assert steps_per_epoch_of(rows) == pytest.approx(8.0)
    # The secondary axis converts with the run's steps per epoch: step 16 is epoch 2.
    assert top._functions[0](16.0) == pytest.approx(2.0) and top._functions[1](3.0) == pytest.approx(24.0)


def test_metrics_figure_plots_each_figure_with_its_error_bar_and_stars_the_best() -> None:
    rows = loss_rows(3) + eval_rows()
    fig = metrics_figure(rows, METRICS, BestMark("fid", 104.0, 200))
    series = {s.name: s for s in evaluation_series(rows, METRICS)}
    assert series["fid"].steps == [100, 200, 300] and series["fid"].values == [1958.0, 104.0, 120.0]
    assert series["fid"].errors == [40.0, 33.0, 0.0]  # no bootstrap at step 300: no bar
    assert series["kid"].steps == [100, 300] and series["kid"].values == [0.5, 0.04]  # the NaN figure is left out
    panels = {ax.get_ylabel(): ax for ax in fig.axes if ax.get_ylabel()}
    assert list(panels) == ["FID", "KID", "IS"]
    for name, s in series.items():
        ax = panels[name.upper()]
        (bars,) = ax.containers
        data_line, _, (segments,) = bars.lines
        assert list(data_line.get_xdata()) == s.steps and list(data_line.get_ydata()) == pytest.approx(s.values)
        # Flat lists: pytest >= 9.2 refuses approx of nested sequences (a list of pairs).
        ends = [y for seg in segments.get_segments() for y in (seg[0][1], seg[1][1])]
        assert ends == pytest.approx([y for v, e in zip(s.values, s.errors) for y in (v - e, v + e)])
    assert panels["FID"].get_yscale() == "log" and panels["IS"].get_yscale() == "linear"
    assert "lower is better" in panels["FID"].get_title() and "higher is better" in panels["IS"].get_title()
    assert "bootstrap" in panels["FID"].get_title() and "splits" in panels["IS"].get_title()
    star = lines(fig)[BEST_LABEL]
    assert star.axes is panels["FID"] and list(star.get_xdata()) == [200] and list(star.get_ydata()) == [104.0]
    assert "best 104 (step 200)" in texts(fig)
    assert Image.open(io.BytesIO(png_bytes(fig))).size == (800, 60 + 3 * 280)


def test_one_point_nan_figures_and_no_evaluations_still_draw(tmp_path: Path) -> None:
    one = loss_figure([{"step": 1, "loss": 0.7, "lr": 1e-4}])
    assert list(lines(one)[RAW_LABEL].get_ydata()) == [0.7] and lines(one)[RAW_LABEL].get_marker() == "o"
    assert SMOOTH_LABEL not in lines(one)  # nothing to smooth in one record
    nan = loss_figure([{"step": 1, "loss": float("nan")}, {"step": 2, "loss": float("inf")}])
    assert RAW_LABEL not in lines(nan) and texts(nan) == ["no finite loss recorded yet"]
    none = metrics_figure(loss_rows(3), METRICS)
    assert texts(none) == ["no evaluations yet"]
    all_nan = metrics_figure([{"step": 5, "eval": {"fid": {"fid": float("nan"), "std": None}}}], METRICS)
    assert texts(all_nan) == ["no finite figure yet"]
    single = metrics_figure([{"step": 5, "eval": {"fid": {"fid": 12.5, "std": 0.5}}}], METRICS, BestMark("fid", 12.5, 5))
    assert list(lines(single)[BEST_LABEL].get_ydata()) == [12.5]
    for i, fig in enumerate((one, nan, none, all_nan, single)):
        save_figure(fig, tmp_path / f"{i}.png")  # each one renders to a whole PNG
        assert Image.open(tmp_path / f"{i}.png").format == "PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{i}.png" for i in range(5)]  # no temporary file left


def test_smoothing_and_the_log_axis_rule() -> None:
    assert smooth([0.0, 0.0, 9.0, 0.0, 0.0]) == [0.0, 3.0, 3.0, 3.0, 0.0]
    assert smooth([4.0]) == [4.0] and smooth([]) == []
    assert spans_decades([1.0, 10.0]) and not spans_decades([1.0, 9.9])
    assert not spans_decades([-1.0, 100.0]) and not spans_decades([float("nan")])
