"""The `diffuse` command line: one typer module per subcommand, each a thin layer over one job."""

from __future__ import annotations

import os
import sys

# Rich help and error boxes cost ~150 ms per call (typer renders them with rich); a shell script or
# CI log gains nothing from them, so without a terminal typer prints click's plain text. Typer reads
# this when it is first imported, hence before the import; TYPER_USE_RICH set by the user wins.
if not (sys.stdout.isatty() or sys.stderr.isatty()):
    os.environ.setdefault("TYPER_USE_RICH", "0")

import typer  # noqa: E402

from diffusers_cli import __version__
from diffusers_cli.cli.condition import condition_command
from diffusers_cli.cli.evaluate import evaluate_command
from diffusers_cli.cli.impute import impute_command
from diffusers_cli.cli.prepare import prepare_command
from diffusers_cli.cli.sample import sample_command
from diffusers_cli.cli.samplers import samplers_command
from diffusers_cli.cli.train import train_command
from diffusers_cli.cli.tune import tune_command
from diffusers_cli.cli.info import datasets_command, env_command
from diffusers_cli.cli.models import models_command
from diffusers_cli.cli.report import report_command

app = typer.Typer(
    name="diffuse",
    help="Train, sample, condition, impute with and evaluate score-based diffusion models of images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("train")(train_command)
app.command("sample")(sample_command)
app.command("evaluate")(evaluate_command)
app.command("condition")(condition_command)
app.command("impute")(impute_command)
app.command("prepare")(prepare_command)
app.command("datasets")(datasets_command)
app.command("env")(env_command)
app.command("samplers")(samplers_command)
app.command("models")(models_command)
app.command("tune")(tune_command)
app.command("report")(report_command)


def _version(value: bool) -> None:
    if value:
        print(f"diffusers-cli {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """diffuse: score-based diffusion models from one command."""
