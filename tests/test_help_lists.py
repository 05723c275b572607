"""Every name list in a help text comes from its registry: each registry, joined in its own order, stands in the
help of the option that takes its names, so a new entry (or a removed one) shows in `--help` with no second edit."""

from __future__ import annotations

import pytest
import typer.main

from diffusers_cli.cli import app
from diffusers_cli.config.sde import SCHEDULES, SDE_KINDS
from diffusers_cli.data.registry import DATASETS
from diffusers_cli.engine.masks import HALF_SIDES, MASKS
from diffusers_cli.engine.metrics import METRICS
from diffusers_cli.engine.metrics.metric import scores_samples_alone
from diffusers_cli.engine.networks.presets import UNET_PRESETS, WRN_PRESETS
from diffusers_cli.engine.weightings import WEIGHTINGS


def _help(command: str, option: str) -> str:
    group = typer.main.get_command(app)
    cmd = group.commands[command]  # type: ignore[attr-defined]
    (param,) = [p for p in cmd.params if option in getattr(p, "opts", ())]
    return " ".join((getattr(param, "help", None) or "").split())


@pytest.mark.parametrize("command, option, names, sep", [
    ("train", "--dataset", list(DATASETS), ", "),
    ("train", "--sde", SDE_KINDS, ", "),
    ("train", "--schedule", SCHEDULES, " or "),
    ("train", "--preset", list(UNET_PRESETS), ", "),
    ("train", "--preset", list(WRN_PRESETS), ", "),
    ("train", "--loss-weighting", list(WEIGHTINGS), ", "),
    ("train", "--eval-metrics", [n for n, m in METRICS.items() if scores_samples_alone(m)], ", "),
    ("train", "--download", [s.name for s in DATASETS.values() if s.download == "--download"], ", "),
    ("prepare", "--download", [s.name for s in DATASETS.values() if s.download == "--download"], ", "),
    ("evaluate", "--metrics", list(METRICS), ", "),
    ("impute", "--mask", list(MASKS), ", "),
    ("impute", "--mask-side", list(HALF_SIDES), ", "),
])
def test_an_option_lists_its_registry_in_order(command: str, option: str, names: list[str], sep: str) -> None:
    assert len(names) >= 2
    assert sep.join(names) in _help(command, option)


def test_a_metric_that_cannot_run_in_training_is_not_offered_there() -> None:
    # bits/dim needs the likelihood ODE, which evaluation during training does not run.
    assert "bpd" in METRICS and "bpd" not in _help("train", "--eval-metrics")
