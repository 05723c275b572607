"""`diffuse report`: one self-contained HTML page about a run (card, curves, sample grids, evaluations, commands)."""

from __future__ import annotations

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

        result = report_run(run)
        if json_:
            emit_json(result.facts)
            return
        t = result.facts["training"]
        evals = f", {t['evaluations']} evaluation(s)" if t["evaluations"] else ""
        print(f"wrote {result.path} ({t['steps']} steps{evals}, {len(result.facts['samples'])} sample grid(s))")

    run_job(job)
