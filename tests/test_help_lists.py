"""Every name list in a help text comes from its registry: each registry, joined in its own order, stands in the
help of the option that takes its names, so a new entry (or a removed one) shows in `--help` with no second edit."""

from __future__ import annotations

import pytest
import typer.main

from diffusers_cli.cli import app
from diffusers_cli.config.defaults import LogKind, Precision
from diffusers_cli.config.sde import SCHEDULES, SDE_KINDS
from diffusers_cli.data.registry import DATASETS
from diffusers_cli.data.spec import SPLITS
from diffusers_cli.engine.choices import EmaProfile, LrDecay, Probe, TimeSampling, names
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


@pytest.mark.parametrize("command, option, choice", [
    ("train", "--split", SPLITS), ("prepare", "--split", SPLITS), ("evaluate", "--split", SPLITS),
    ("evaluate", "--bpd-split", SPLITS), ("train", "--lr-decay", names(LrDecay)),
    ("train", "--time-sampling", names(TimeSampling)), ("train", "--ema-profile", names(EmaProfile)),
    ("train", "--precision", names(Precision)), ("train", "--log", names(LogKind)),
    ("evaluate", "--bpd-probe", names(Probe)),
])
def test_a_fixed_choice_is_listed_whole_in_prose(command: str, option: str, choice: tuple[str, ...]) -> None:
    # "a, b or c": the config's own Literal, in order, with its last two joined by "or".
    assert len(choice) >= 2
    assert f"{', '.join(choice[:-1])} or {choice[-1]}" in _help(command, option)


def test_samplers_methods_and_grids_are_listed_by_the_command_their_options_point_at() -> None:
    from typer.testing import CliRunner

    from diffusers_cli.engine.grids import GRIDS
    from diffusers_cli.engine.imputation import METHODS
    from diffusers_cli.engine.samplers import SAMPLERS

    out = CliRunner().invoke(app, ["samplers"]).stdout
    listed = {line.split()[0] for line in out.splitlines() if line.startswith("  ") and not line.startswith("    ")}
    assert set(SAMPLERS) <= listed and set(METHODS) <= listed, listed
    assert all(name in out for name in GRIDS)
    for command, option in (("sample", "--sampler"), ("sample", "--grid"), ("impute", "--method")):
        assert "`diffuse samplers`" in _help(command, option)


def test_every_metric_option_is_in_the_help_of_metric_option() -> None:
    from diffusers_cli.engine.metrics import metric_option_specs

    text = _help("evaluate", "--metric-option")
    specs = metric_option_specs()
    assert len(specs) >= 5 and "seed" not in specs
    assert all(f"{name}={spec.default}:" in text for name, spec in specs.items())
