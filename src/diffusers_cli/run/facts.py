"""What a run directory says about itself, for `diffuse report`: card, config, log, evaluations, timing, grids, commands.

``read_run`` checks and reads the files through the run's one reader (``run.reader``: nothing from outside
the run; bad input is one UsageError line), the config as the typed ``TrainConfig`` (so its defaults are the
config's own, written once); ``facts`` turns them into the JSON-able facts that `diffuse report --json` prints
and report.html shows. Nothing here draws.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffusers_cli.checkpoints.card import ModelCard
from diffusers_cli.checkpoints.weights import WEIGHTS_NAME, read_card
from diffusers_cli.config.schema import TrainConfig, dump_config
from diffusers_cli.run.layout import (BEST_NAME, CONFIG_NAME, FINAL_SAMPLES_NAME, GRIDS_NAME, METRICS_NAME, REPORT_NAME,
                                      SAMPLES_DIR, STEP_GRIDS)
from diffusers_cli.run.reader import RunFileError, RunFiles, shown
from diffusers_cli.support.errors import UsageError

#: Columns of the tuned-grids table, in this order when present; other keys follow as found.
GRID_COLUMNS = ("sampler", "steps", "options", "objective", "cost", "date", "weights_sha256", "times")


class RunError(UsageError):
    """The path is not a run directory of `diffuse train`, or its config or metrics log is missing or damaged."""


@dataclass
class Run:
    """A run directory's files, read and checked."""

    path: Path
    config: TrainConfig  # config.json, validated: the effective TrainConfig
    rows: list[dict[str, Any]]  # metrics.jsonl records, in order
    card: ModelCard | None  # of model.safetensors (None: no checkpoint written yet)
    parameters: int | None  # network parameters (the EMA copy's count)
    best: dict[str, Any] | None  # {"metric", "value", "step"} of best.safetensors
    samples: list[tuple[int | None, str]]  # (step, grid PNG's name in the run) over training; None: the final grid
    grids: list[dict[str, Any]] = field(default_factory=list)  # grids.json entries
    grids_note: str | None = None  # why grids.json could not be read (it is never fatal)
    saved: dict[str, Any] = field(default_factory=dict)  # config.json as saved, shown as it is
    # Files of the run that were refused: (the whole message for stderr, the page's line naming no outside path).
    left_out: list[tuple[str, str]] = field(default_factory=list)

    @property
    def files(self) -> RunFiles:
        """The one reader of this run's files."""
        return RunFiles.of(self.path)


def counts_epochs(config: TrainConfig) -> bool:
    """Whether a run was set in epochs (--epochs, or --eval-every Ne): its plots then show epochs too."""
    return config.epochs is not None or config.eval.every.endswith("e")


def read_rows(files: RunFiles, name: str = METRICS_NAME) -> list[dict[str, Any]]:
    """metrics.jsonl records; RunError naming the line when one is not a JSON object (a torn last line is skipped)."""
    path = shown(files.root / name)
    try:
        text = files.read_text(name) or ""
    except UnicodeDecodeError:
        raise RunError(f"{path} is not a text file; it is damaged (restore it, or train again)") from None
    rows: list[dict[str, Any]] = []
    lines = text.splitlines()
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) and not text.endswith("\n"):
                continue  # a crash mid-write tears only the last line (MetricsLog.read skips it too)
            raise RunError(f"{path} line {i} is not JSON; the log is damaged (restore it, or train again)") from None
        if not isinstance(row, dict) or not _whole(row.get("step")):
            raise RunError(f"{path} line {i} is not a record with a step; the log is damaged (restore it, or train again)")
        rows.append(row)
    return rows


def _parameters(weights: Path) -> int:
    """Parameters of the network in a weights file, counted from the tensor shapes (no tensor is read)."""
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        keys = list(f.keys())
        ema = [k for k in keys if k.startswith("ema.")]
        total = 0
        for key in ema or keys:
            n = 1
            for d in f.get_slice(key).get_shape():
                n *= int(d)
            total += n
    return total


def _whole(value: Any) -> bool:
    """A step as the log writes it: a whole, finite number (not a bool, NaN or a string)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value == int(value)


def _samples(files: RunFiles) -> tuple[list[tuple[int | None, str]], list[tuple[str, str]]]:
    """The sample grids written during training (by step), then the final one: names in the run, each checked when it
    is read; and what was left out (a samples folder that leads out of the run) as (message, the page's line)."""
    found: list[tuple[int | None, str]] = []
    try:
        names = files.names(SAMPLES_DIR, STEP_GRIDS)
    except RunFileError as err:
        return [], [(str(err), f"{SAMPLES_DIR}/ was left out: {err.reason}.")]
    for name in names:
        digits = Path(name).stem.split("_", 1)[1]
        if digits.isascii() and digits.isdigit():  # int() would take "+1", " 1" and other scripts' digits too
            found.append((int(digits), name))
    if os.path.lexists(files.root / FINAL_SAMPLES_NAME):
        found.append((None, FINAL_SAMPLES_NAME))
    return found, []


def _grids(files: RunFiles) -> tuple[list[dict[str, Any]], str | None, list[tuple[str, str]]]:
    """grids.json's entries (the first list of objects in it, or the file itself if it is one), or a note why not;
    and, for a file the reader refused, what was left out as (message, the page's line), as ``_samples`` gives it."""
    try:
        text = files.read_text(GRIDS_NAME)
        if text is None:
            return [], None, []
        data = json.loads(text)
    except RunFileError as err:  # the page gets the reason alone: the message names where a link leads
        return [], f"{GRIDS_NAME} was not read: {err.reason}.", [(f"{err}; left out of the report",
                                                                     f"{GRIDS_NAME} was left out: {err.reason}.")]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return [], f"{GRIDS_NAME} could not be read ({type(err).__name__}); run `diffuse tune` again", []
    lists = [data] if isinstance(data, list) else [v for v in data.values() if isinstance(v, list)] if isinstance(data, dict) else []
    entries = next((items for items in lists if all(isinstance(e, dict) for e in items)), None)
    if entries is None:
        return [], f"{GRIDS_NAME} holds no list of entries", []
    return [dict(e) for e in entries], None, []


def _config(files: RunFiles) -> tuple[TrainConfig, dict[str, Any]]:
    """config.json as the typed TrainConfig (the defaults are its own) and as saved; RunError if it is not one."""
    from pydantic import ValidationError

    path = shown(files.root / CONFIG_NAME)
    try:
        saved = json.loads(files.read_text(CONFIG_NAME) or "")
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise RunError(f"{path} is not valid JSON; the run is damaged (restore the file)") from None
    if not isinstance(saved, dict):
        raise RunError(f"{path} is not a config object; the run is damaged (restore the file)")
    try:
        return TrainConfig.model_validate(saved), saved
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the config"
        raise RunError(f"{path} is not a training config ({where}: {first['msg']}); the run is damaged or from another "
                       "diffusers-cli (restore the file)") from None
    except UsageError as err:  # a validator's own one line (a run name, a sampler option)
        raise RunError(f"{path} is not a training config ({err}); the run is damaged (restore the file)") from None


def read_run(path: Path) -> Run:
    """Read a run directory; RunError (exit 2, one line) if it is not one or its config or log is missing or damaged.

    Every file is read through the run's reader: a file that leads out of the run is refused (RunFileError),
    and sample grids are only listed here, to be checked and decoded where they are shown.
    """
    path = Path(path)
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is a file, not a folder"
        raise RunError(f"{shown(path)} {what}; pass a run directory of `diffuse train` (runs/NAME)")
    files = RunFiles.of(path)
    if files.file(CONFIG_NAME) is None:
        raise RunError(f"{shown(path)} is not a run directory of `diffuse train` (no {CONFIG_NAME}); pass runs/NAME")
    config, saved = _config(files)
    if files.file(METRICS_NAME) is None:
        raise RunError(f"{shown(path)} has no {METRICS_NAME}: the run never logged a step (train it, or --resume it)")
    rows = read_rows(files)
    card, parameters, best = None, None, None
    weights = files.file(WEIGHTS_NAME)
    if weights is not None:
        card = read_card(weights)
        parameters = _parameters(weights)
        best_file = files.file(BEST_NAME)
        if best_file is not None:
            best = _best(read_card(best_file).extra.get("best"))
    grids, note, grids_left = _grids(files)
    samples, left_out = _samples(files)
    return Run(path, config, rows, card, parameters, best, samples, grids, note, saved, [*grids_left, *left_out])


def _best(mark: Any) -> dict[str, Any] | None:
    """best.safetensors' record of what it is best at, if it is one (a metric name, a finite value and a whole step)."""
    if (isinstance(mark, dict) and isinstance(mark.get("metric"), str) and isinstance(mark.get("value"), (int, float))
            and not isinstance(mark.get("value"), bool) and math.isfinite(mark["value"]) and _whole(mark.get("step"))):
        return {"metric": mark["metric"], "value": mark["value"], "step": int(mark["step"])}
    return None


def describe_model(run: Run) -> str:
    """The model in one line: what it generates, from what noise process, with which network."""
    card, cfg = run.card, run.config
    if card is None:
        return f"a {cfg.task} model of {cfg.data.dataset}, no checkpoint written yet"
    c, h, w = card.image_shape
    colour = "greyscale" if c == 1 else "RGB"
    classes = f" ({card.num_classes} classes)" if card.num_classes else ""
    sde = card.sde.kind
    size = f", {run.parameters:,} parameters" if run.parameters else ""
    if card.kind == "classifier":
        return f"a noise-aware classifier of {h}x{w} {colour} images of {card.dataset}{classes} for the {sde} SDE ({card.arch}{size})"
    cond = "class-conditional " if card.class_conditional else ""
    return (f"a {cond}score model of {h}x{w} {colour} images of {card.dataset}{classes}: {sde} SDE, "
            f"{card.parameterization} parameterisation, {card.arch} network{size}")


def _recipe(cfg: TrainConfig) -> dict[str, Any]:
    """The training recipe: how long, how big a batch, the optimiser and EMA, the loss weighting."""
    keys = ("task", "steps", "epochs", "batch_size", "precision", "seed", "class_conditional", "label_dropout", "loss_weighting",
            "min_snr_gamma", "time_sampling", "lognormal_mean", "lognormal_std", "importance_widen")
    whole = dump_config(cfg)
    return {**{k: whole[k] for k in keys}, **{f"optim.{k}": v for k, v in whole["optim"].items()}}


def _timing(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Steps per second (median over log records), wall time of the logged steps, time per evaluation."""
    loss_rows = [r for r in rows if isinstance(r.get("it_per_s"), (int, float)) and r["it_per_s"] > 0]
    wall, last = 0.0, 0.0
    for r in loss_rows:
        wall += max(0.0, float(r["step"]) - last) / float(r["it_per_s"])  # includes the hooks run since the record before
        last = float(r["step"])
    evals = [float(r["eval_seconds"]) for r in rows if "eval" in r and isinstance(r.get("eval_seconds"), (int, float))]
    return {
        "it_per_s": round(statistics.median(r["it_per_s"] for r in loss_rows), 3) if loss_rows else None,
        "wall_seconds": round(wall, 1) if loss_rows else None,
        "evaluations": sum(1 for r in rows if "eval" in r),
        "seconds_per_evaluation": round(statistics.mean(evals), 2) if evals else None,
        "evaluation_seconds": round(sum(evals), 1) if evals else None,
    }


def evaluations(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per evaluation record: step, epoch, samples, NFE, seconds and each metric's figures."""
    out = []
    for r in rows:
        if isinstance(r.get("eval"), Mapping):
            out.append({"step": r["step"], "epoch": r.get("epoch"), "samples": r.get("eval_samples"), "nfe": r.get("eval_nfe"),
                        "seconds": r.get("eval_seconds"), "figures": dict(r["eval"])})
    return out


def _command(*args: object) -> str:
    return " ".join(shlex.quote(shown(str(a))) for a in args)


def commands(run: Run) -> dict[str, str]:
    """The exact commands that train this run again (from its saved config) and sample from it."""
    cfg, path = run.config, run.path
    again: list[object] = ["diffuse", "train", "--config", path / CONFIG_NAME, "--name", f"{path.name}-again"]
    if cfg.resume:
        again += ["--set", "resume=false"]  # the saved config of a resumed leg says resume: start afresh instead
    out = {"reproduce": _command(*again),
           "resume": _command("diffuse", "train", "--resume", "--out", path.parent, "--name", path.name, "--steps", "N")}
    if cfg.task == "score":
        sample = ["--sampler", cfg.sampler.name, "--steps", cfg.sampler.steps, "-n", 64, "--seed", cfg.seed]
        out["sample"] = _command("diffuse", "sample", "--model", path, *sample, "--out", "samples.png")
        if run.best is not None:
            out["sample_best"] = _command("diffuse", "sample", "--model", path / BEST_NAME, *sample, "--out", "best.png")
    else:
        out["condition"] = _command("diffuse", "condition", "--model", "SCORE_RUN", "--classifier", path, "--class", "0")
    return out


def card_facts(run: Run) -> dict[str, Any] | None:
    """The model card's fields, with the parameter count and the commit that trained it."""
    card = run.card
    if card is None:
        return None
    extra = dict(card.extra)
    return {
        "description": describe_model(run), "kind": card.kind, "source": card.source, "arch": card.arch,
        "parameters": run.parameters, "sde": card.sde.model_dump(mode="json"), "network": card.network, "parameterization": card.parameterization,
        "image_shape": list(card.image_shape), "class_names": list(card.class_names), "dataset": card.dataset,
        "step": card.step, "ema_updates": card.ema_updates, "package_version": card.package_version,
        "commit": extra.pop("commit", None), "init_from": extra.pop("init_from", None), "extra": extra,
    }


def facts(run: Run) -> dict[str, Any]:
    """Everything `diffuse report` says about a run, JSON-able (`--json` prints exactly this)."""
    cfg = run.config
    loss = [r for r in run.rows if "loss" in r]
    return {
        "run": shown(run.path), "name": shown(run.path.name), "report": shown(run.path / REPORT_NAME),
        "model": card_facts(run),
        "description": describe_model(run),
        "data": dump_config(cfg.data),
        "recipe": _recipe(cfg),
        "training": {"steps": max((int(r["step"]) for r in run.rows), default=0),
                     "final_loss": loss[-1]["loss"] if loss else None, "records": len(loss),
                     "counts_epochs": counts_epochs(cfg), **_timing(run.rows)},
        "evaluations": evaluations(run.rows),
        "best": run.best,
        "samples": [{"step": step, "path": shown(run.path / name)} for step, name in run.samples],
        "left_out": [page for _, page in run.left_out],
        "grids": run.grids, "grids_note": run.grids_note,
        "commands": commands(run),
        "config": run.saved,
    }
