"""`diffuse report`: one self-contained HTML page about a run (card, curves, sample grids, evaluations, commands)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from diffusers_cli.cli.common import JsonOpt, emit_json, run_job


def report_command(
    run: Annotated[Path, typer.Argument(help="Run directory of `diffuse train` (runs/NAME).", show_default=False)],
    json_: JsonOpt = False,
) -> None:
    """Write RUN/report.html: the model card, config, curves, sample grids over training, evaluations, timing, commands."""

    def job() -> None:
        from diffusers_cli.jobs.report import report_run
        from diffusers_cli.run.reader import shown

        result = report_run(run, warn=lambda line: print(f"diffuse: warning: {line}", file=sys.stderr))
        if json_:
            emit_json(result.facts)
            return
        t = result.facts["training"]
        evals = f", {t['evaluations']} evaluation(s)" if t["evaluations"] else ""
        gone = len(result.facts["left_out"])
        left = f", {gone} file(s) left out" if gone else ""
        print(f"wrote {shown(result.path)} ({t['steps']} steps{evals}, {len(result.facts['samples'])} sample grid(s){left})")

    run_job(job)
