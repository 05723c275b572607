"""report.html: one self-contained page about a run (images as data URIs, inline CSS, no network, no JavaScript).

``write_report`` reads the run (``run.facts``, through the run's one reader ``run.reader``), draws its
curves (``plots``), embeds them with the sample grids written over training, and writes the page
atomically into the run. ``render`` is the page alone, from the facts and the PNG bytes, so tests can
parse what it shows.

The page is made to be shared, and the run it shows may be a stranger's: every value from the run is
escaped as text, every image it embeds was decoded and re-encoded here (``RunFiles.png``; a file that
links out of the run, is not a PNG or does not decode is left out, and the page says so), and its
Content-Security-Policy (``CSP``) lets the browser run no script and fetch nothing, should an escape
ever be missed.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffusers_cli import __version__
from diffusers_cli.run.facts import GRID_COLUMNS, Run, counts_epochs, facts, read_run
from diffusers_cli.run.layout import REPORT_NAME, SNAPSHOT_SCORES_NAME
from diffusers_cli.run.reader import RunFileError
from diffusers_cli.run.snapshots import read_scores
from diffusers_cli.support.files import write_text_atomic
from diffusers_cli.support.image_files import ImageError

#: At most this many sample grids side by side (evenly chosen, the first and last always among them).
MAX_GRIDS = 10
#: The page's Content-Security-Policy: no script, nothing fetched, images from data: URIs and styles inline only.
CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'")

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; margin-bottom: 0.1em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
.lead { color: #555; margin-top: 0; } nav a { margin-right: 1em; }
table { border-collapse: collapse; margin: 0.5em 0; } th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left;
       vertical-align: top; } th { background: #f6f6f6; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.best td { background: #fff6d5; } pre { background: #f6f6f6; padding: 0.7em; overflow-x: auto; font-size: 12.5px; }
.curves img { max-width: 100%; border: 1px solid #eee; } .grids { display: flex; flex-wrap: wrap; gap: 0.8em; }
.grids figure { margin: 0; text-align: center; } .grids img { width: 200px; image-rendering: pixelated; border: 1px solid #ddd; }
.grids figcaption { font-size: 12px; color: #555; } .note { color: #777; }
.wide { overflow-x: auto; } #grids { font-size: 12px; }
"""


@dataclass
class Report:
    """A written report: where it is and the facts it shows."""

    path: Path
    facts: dict[str, Any]


def data_uri(png: bytes) -> str:
    """PNG bytes as a data URI that an <img> shows with no file beside the page."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _e(value: Any) -> str:
    # A JSON string may hold a lone surrogate ("\\udc80"), which no UTF-8 page can carry: it shows as U+FFFD.
    return html.escape(str(value).encode("utf-8", "replace").decode("utf-8"), quote=True)


def _fmt(value: Any) -> str:
    """A figure as a reader wants it: 4 significant digits, integers with separators, nothing for None."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def _rounded(value: Any) -> Any:
    """Floats inside lists and dicts cut to 4 significant digits, for reading (--json keeps every digit)."""
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.4g}")
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


def _table(rows: Sequence[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(_fmt(v))}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _card_section(f: Mapping[str, Any]) -> str:
    card = f["model"]
    if card is None:
        return '<p class="note">No checkpoint has been written yet, so there is no model card.</p>'
    sde = ", ".join(f"{k} {_fmt(v)}" for k, v in card["sde"].items())
    classes = ", ".join(card["class_names"]) if card["class_names"] else "none"
    rows = [("what it is", card["description"]), ("kind", card["kind"]), ("SDE", sde),
            ("network", f"{card['arch']}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in card["network"].items())),
            ("parameters", card["parameters"]), ("parameterisation", card["parameterization"]),
            ("image shape (C, H, W)", " x ".join(str(d) for d in card["image_shape"])), ("classes", classes),
            ("data", ", ".join(f"{k} {_fmt(v)}" for k, v in f["data"].items() if v is not None)),
            ("recipe", ", ".join(f"{k} {_fmt(v)}" for k, v in f["recipe"].items() if v is not None)),
            ("training steps behind the weights", card["step"]), ("EMA updates", card["ema_updates"]),
            ("commit", card["commit"] or "not recorded (a package installed outside a git checkout, or an older run)"),
            ("diffusers-cli version", card["package_version"])]
    if card["init_from"]:
        rows.append(("initialised from", card["init_from"]))
    return _table(rows)


def _timing_section(f: Mapping[str, Any]) -> str:
    t = f["training"]
    rows = [("steps logged", t["steps"]), ("final loss (last record)", t["final_loss"]),
            ("training speed (median over records)", f"{_fmt(t['it_per_s'])} it/s" if t["it_per_s"] else None),
            ("wall time of the logged steps (hooks included)", f"{_fmt(t['wall_seconds'])} s" if t["wall_seconds"] else None),
            ("evaluations", t["evaluations"]),
            ("time per evaluation (mean)", f"{_fmt(t['seconds_per_evaluation'])} s" if t["seconds_per_evaluation"] else
             ("not recorded" if t["evaluations"] else None))]
    return _table([(k, v) for k, v in rows if v is not None])


def _figure_cell(figures: Mapping[str, Any], headline: str) -> str:
    value, std = figures.get(headline), figures.get("std")
    text = _fmt(value)
    if isinstance(std, (int, float)) and math.isfinite(std) and std:
        text += f" ± {_fmt(float(std))}"
    return text


def evaluation_table(f: Mapping[str, Any], headlines: Mapping[str, str]) -> str:
    """One row per evaluation: step, epoch, each metric's headline ± std, samples, NFE, seconds; the best row marked."""
    evals = f["evaluations"]
    if not evals:
        return '<p class="note">No evaluations in this run (train with --eval-every to score EMA samples).</p>'
    names = list(dict.fromkeys(name for ev in evals for name in ev["figures"]))
    best = f["best"]
    head = "".join(f"<th>{_e(h)}</th>" for h in ["step", "epoch", *(n.upper() for n in names), "samples", "NFE", "seconds", ""])
    body = []
    for ev in evals:
        is_best = best is not None and ev["step"] == best.get("step")
        cells = [_fmt(ev["step"]), _fmt(ev["epoch"])]
        cells += [_figure_cell(ev["figures"].get(n, {}), headlines.get(n, "mean")) for n in names]
        cells += [_fmt(ev["samples"]), _fmt(ev["nfe"]), _fmt(ev["seconds"]), f"best {best['metric']}" if is_best else ""]
        tds = "".join(f'<td class="num">{_e(c)}</td>' for c in cells)
        body.append(f'<tr class="best">{tds}</tr>' if is_best else f"<tr>{tds}</tr>")
    return f'<table id="evaluations"><tr>{head}</tr>{"".join(body)}</table>'


def grids_table(f: Mapping[str, Any]) -> str:
    """The tuned time grids of grids.json, whatever fields its entries carry."""
    entries = f["grids"]
    if not entries:
        note = f["grids_note"] or "No tuned grids (grids.json) in this run."
        return f'<p class="note">{_e(note)}</p>'
    keys = [k for k in GRID_COLUMNS if any(k in e for e in entries)]
    keys += [k for k in dict.fromkeys(k for e in entries for k in e) if k not in keys]

    def cell(key: str, value: Any) -> str:
        value = _rounded(value)
        if isinstance(value, list) and len(value) > 8:  # a long time grid: its ends and its length
            return f"{_fmt(value[:3])[:-1]}, ... {_fmt(value[-2:])[1:]} ({len(value)} values)"
        if isinstance(value, str) and key.endswith(("sha256", "hash")) and len(value) > 16:
            return value[:12] + "…"  # enough to tell two models apart; --json has it whole
        if isinstance(value, dict) and value:
            return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
        return _fmt(value)

    head = "".join(f"<th>{_e(k)}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{_e(cell(k, e.get(k)))}</td>" for k in keys) + "</tr>" for e in entries)
    return f'<div class="wide"><table id="grids"><tr>{head}</tr>{body}</table></div>'


def chosen_grids(samples: Sequence[Any], limit: int = MAX_GRIDS) -> list[Any]:
    """At most ``limit`` of the grids, evenly spread, the first and the last always kept."""
    if len(samples) <= limit:
        return list(samples)
    idx = sorted({round(i * (len(samples) - 1) / (limit - 1)) for i in range(limit)})
    return [samples[i] for i in idx]


def _grids_section(grids: Sequence[tuple[str, bytes]]) -> str:
    if not grids:
        return '<p class="note">No sample grids in this run yet (--sample-every N writes one every N steps).</p>'
    figs = "".join(f'<figure><img src="{data_uri(png)}" alt="{_e(caption)}"><figcaption>{_e(caption)}</figcaption></figure>'
                   for caption, png in grids)
    return f'<div class="grids">{figs}</div>'


def snapshots_section(rows: Sequence[Mapping[str, Any]], png: bytes | None, headlines: Mapping[str, str]) -> str:
    """``evaluate --snapshots``' table (step, each metric's headline ± std) and its plot by step."""
    if not rows:
        return ('<p class="note">No scored snapshots in this run (train with --snapshot-every N, then '
                "<code>diffuse evaluate --model RUN --snapshots</code>).</p>")
    names = list(dict.fromkeys(name for row in rows for name in row if name != "step"))
    head = "".join(f"<th>{_e(h)}</th>" for h in ["step", *(n.upper() for n in names)])
    body = "".join("<tr>" + "".join(f'<td class="num">{_e(c)}</td>' for c in
                                    [_fmt(row["step"]), *(_figure_cell(row.get(n, {}), headlines.get(n, "mean")) for n in names)])
                   + "</tr>" for row in rows)
    img = f'<p><img src="{data_uri(png)}" alt="metrics per snapshot"></p>' if png else ""
    return f'<table id="snapshot-scores"><tr>{head}</tr>{body}</table><div class="curves">{img}</div>'


def render(f: Mapping[str, Any], curves: Sequence[tuple[str, bytes]], grids: Sequence[tuple[str, bytes]],
           headlines: Mapping[str, str], snapshots: str | None = None) -> str:
    """The page: card, timing, curves, sample grids, evaluations, snapshots, tuned grids, commands, config."""
    cmds = "".join(f"<h3>{_e(k.replace('_', ' '))}</h3><pre>{_e(v)}</pre>" for k, v in f["commands"].items())
    imgs = "".join(f'<p><img src="{data_uri(png)}" alt="{_e(alt)}"></p>' for alt, png in curves)
    sections = [("card", "Model card", _card_section(f)), ("timing", "Timing", _timing_section(f)),
                ("curves", "Curves", f'<div class="curves">{imgs}</div>'),
                ("samples", "Samples over training", _grids_section(grids)),
                ("evaluations", "Evaluations", evaluation_table(f, headlines)),
                ("snapshots", "Snapshots", snapshots if snapshots is not None else snapshots_section([], None, headlines)),
                ("grids", "Tuned time grids", grids_table(f)),
                ("commands", "Commands", cmds),
                ("config", "Config", f"<pre>{_e(json.dumps(f['config'], indent=2))}</pre>")]
    nav = "".join(f'<a href="#{s}">{_e(title)}</a>' for s, title, _ in sections)
    body = "".join(f'<section id="{s}"><h2>{_e(title)}</h2>{content}</section>' for s, title, content in sections)
    # Files of the run the page does not show (a link out of it, a picture that is not a PNG of ours), said first:
    # a grid, a grids.json or a snapshot table may be missing, and the reader should know before reading on.
    gone = "".join(f'<p class="note left-out">{_e(line)}</p>' for line in f.get("left_out", ()))
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{_e(CSP)}"><title>{_e(f["name"])}: diffusers-cli run report</title>'
            f"<style>{_CSS}</style></head><body><h1>{_e(f['name'])}</h1><p class=\"lead\">{_e(f['description'])}</p>{gone}"
            f"<nav>{nav}</nav>{body}<p class=\"note\">Written by diffusers-cli {_e(__version__)} from {_e(f['run'])}.</p>"
            "</body></html>\n")


def _caption(step: int | None, final_step: int) -> str:
    return f"step {step:,}" if step is not None else f"final (step {final_step:,})"


def write_report(run_dir: Path, loss_png: bytes | None = None, warn: Callable[[str], None] | None = None) -> Report:
    """Write ``run_dir``/report.html from the run's files; RunError for a path that is not a run or a damaged log.

    ``loss_png``: the loss curve as the caller has just drawn it from the same log (training passes its loss.png),
    so the page does not draw it a second time. ``warn`` hears one line per file of the run left out of the page
    (a link out of the run, a file that is not a PNG of ours); the page says so too, without the link's target.
    """
    from diffusers_cli.engine.metrics import METRICS
    from diffusers_cli.run.plots import BestMark, loss_figure, metrics_figure, png_bytes, snapshots_figure

    run: Run = read_run(run_dir)
    f = facts(run)
    spe = _steps_per_epoch(run) if counts_epochs(run.config) else None
    best = BestMark(run.best["metric"], float(run.best["value"]), int(run.best["step"])) if run.best else None
    curves = [("training loss", loss_png or png_bytes(loss_figure(run.rows, f"training loss ({run.config.task})", spe)))]
    if f["evaluations"]:
        curves.append(("evaluation figures", png_bytes(metrics_figure(run.rows, METRICS, best, spe))))
    lines = [message for message, _ in run.left_out]  # for stderr: whole messages, naming both ends of a link
    grids = []
    for step, name in chosen_grids(run.samples):
        try:
            grids.append((_caption(step, f["training"]["steps"]), run.files.png(name)))
        except (RunFileError, ImageError) as err:
            lines.append(f"{err}; left out of the report")
            reason = getattr(err, "reason", "it is not a readable image (truncated, corrupt or over the pixel limit)")
            f["left_out"].append(f"{name} was left out: {reason}.")
    headlines = {name: m.headline for name, m in METRICS.items()}
    try:
        scores = read_scores(run.path)
    except RunFileError as err:  # a link out of the run: said on stderr and on the page, as a left-out picture is
        scores = []
        lines.append(f"{err}; left out of the report")
        f["left_out"].append(f"{SNAPSHOT_SCORES_NAME} was left out: {err.reason}.")
    snapshots = snapshots_section(scores, png_bytes(snapshots_figure(scores, METRICS)) if scores else None, headlines)
    path = run.path / REPORT_NAME
    write_text_atomic(path, render(f, curves, grids, headlines, snapshots))
    for line in lines:
        if warn is not None:
            warn(line)
    return Report(path, f)


def _steps_per_epoch(run: Run) -> float | None:
    from diffusers_cli.run.plots import steps_per_epoch_of

    return steps_per_epoch_of(run.rows)
