"""The report job: read a run directory, write its self-contained report.html, return the facts it shows."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from diffusers_cli.run.report import Report, write_report


def report_run(run_dir: Path, warn: Callable[[str], None] | None = None) -> Report:
    """Write ``run_dir``/report.html (card, curves, grids, evaluations, timing, commands); RunError for bad input.

    ``warn`` hears one line per file of the run left out of the page (a link out of the run, a file not a PNG).
    """
    return write_report(Path(run_dir), warn=warn)
