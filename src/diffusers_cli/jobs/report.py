"""The report job: read a run directory, write its self-contained report.html, return the facts it shows."""

from __future__ import annotations

from pathlib import Path

from diffusers_cli.run.report import Report, write_report


def report_run(run_dir: Path) -> Report:
    """Write ``run_dir``/report.html (card, curves, grids, evaluations, timing, commands); RunError for bad input."""
    return write_report(Path(run_dir))
