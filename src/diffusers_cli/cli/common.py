"""What every subcommand shares: exit codes, one-line errors, progress reporters and the --json summary."""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Annotated, Any, Callable, Optional, TypeVar

import typer

T = TypeVar("T")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    """Print one error line to stderr and return the Exit to raise."""
    print(f"diffuse: error: {message}", file=sys.stderr)
    return typer.Exit(code)


def run_job(job: Callable[[], T]) -> T:
    """Run a job; bad input (any ValueError: config, data, checkpoint, output) exits 2 with one line, bugs exit 1."""
    try:
        return job()
    except typer.Exit:  # typer.Exit is a RuntimeError: let it through untouched
        raise
    except (ValueError, FileNotFoundError, PermissionError, IsADirectoryError) as err:
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise fail(msg, EXIT_USAGE) from None
    except KeyboardInterrupt:
        raise fail("interrupted", EXIT_INTERRUPTED) from None
    except Exception as err:  # an unexpected failure is a bug: show where, exit 1
        if os.environ.get("DIFFUSE_DEBUG") or not isinstance(err, (RuntimeError, FloatingPointError, OSError)):
            traceback.print_exc()
        raise fail(f"unexpected failure: {type(err).__name__}: {err}", EXIT_FAILURE) from None


def emit_json(summary: dict[str, Any]) -> None:
    """Print the machine-readable summary on stdout (the only thing --json prints there)."""
    print(json.dumps(summary, default=lambda o: str(o) if isinstance(o, Path) else repr(o)), flush=True)


class LineReporter:
    """Plain progress lines on stderr (for logs and CI): at most one every ``every`` seconds."""

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self.total = 0
        self.done = 0
        self.desc = ""
        self._t0 = self._last = time.perf_counter()
        self.fields: dict[str, Any] = {}

    def start(self, total: int, description: str) -> None:
        """Begin a task."""
        self.total, self.done, self.desc, self.fields, self._printed = total, 0, description, {}, -1
        self._t0 = self._last = time.perf_counter()
        print(f"{description}: {total} steps", file=sys.stderr, flush=True)

    def advance(self, n: int = 1, **fields: Any) -> None:
        """Count progress; print a line now and then."""
        self.done += n
        self.fields.update(fields)
        now = time.perf_counter()
        if now - self._last >= self.every:
            self._last = now
            self._printed = self.done
            print(self._line(now), file=sys.stderr, flush=True)

    def _line(self, now: float) -> str:
        rate = self.done / max(now - self._t0, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        extra = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in self.fields.items())
        return f"{self.desc}: {self.done}/{self.total} {extra} {rate:.2f} it/s eta {eta:.0f}s".replace("  ", " ")

    def finish(self) -> None:
        """End the task with a last line (unless that line was just printed)."""
        if getattr(self, "_printed", -1) != self.done:
            print(self._line(time.perf_counter()), file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        """An informational line."""
        print(text, file=sys.stderr, flush=True)


class RichReporter:
    """A rich progress bar (loss, it/s, ETA) on an interactive terminal."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TextColumn("{task.speed:.2f} it/s" if False else ""),
            TimeElapsedColumn(), TimeRemainingColumn(), console=self.console,
        )
        self.task: Any = None
        self._t0 = time.perf_counter()

    def start(self, total: int, description: str) -> None:
        """Begin a task."""
        self.progress.start()
        self._t0 = time.perf_counter()
        self.task = self.progress.add_task(description, total=total, info="")

    def advance(self, n: int = 1, **fields: Any) -> None:
        """Advance the bar and show the fields."""
        done = self.progress.tasks[-1].completed + n if self.task is not None else n
        rate = done / max(time.perf_counter() - self._t0, 1e-9)
        info = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())
        self.progress.update(self.task, advance=n, info=f"{info} {rate:.2f} it/s")

    def finish(self) -> None:
        """Stop the bar."""
        self.progress.stop()

    def message(self, text: str) -> None:
        """An informational line above the bar."""
        self.console.print(text, markup=False, highlight=False)


def make_reporter(json_mode: bool, quiet: bool = False) -> Any:
    """Rich on an interactive terminal, plain lines otherwise; --json keeps stdout for the summary."""
    if quiet:
        from diffusers_cli.jobs.report import SilentReporter

        return SilentReporter()
    if sys.stderr.isatty() and not json_mode and os.environ.get("TERM") != "dumb":
        return RichReporter()
    return LineReporter()


def parse_kv(items: list[str] | None) -> dict[str, Any]:
    """``--set a.b=value`` pairs; values are parsed as YAML scalars (numbers, booleans, lists)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE (e.g. optim.lr=1e-4), got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


# Options shared by several subcommands: declared once so their names and help read alike everywhere.
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="YAML, JSON or TOML config; flags override its values.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override any config key: --set sampler.snr=0.1.")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Seed; the same seed gives the same result.")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")]
ModelOpt = Annotated[Optional[Path], typer.Option("--model", help="Run directory or .safetensors file (default: the newest run under ./runs).")]
SamplerOpt = Annotated[Optional[str], typer.Option("--sampler", help="em, pc, ddpm, ode, euler, heun, ei, ddim, ipndm.")]
StepsOpt = Annotated[Optional[int], typer.Option("--steps", help="Sampler steps (the ode sampler adapts its own).")]
NumOpt = Annotated[Optional[int], typer.Option("-n", "--num-samples", help="How many images.")]
BatchOpt = Annotated[Optional[int], typer.Option("--batch-size", help="Images per batch.")]
GridOpt = Annotated[Optional[str], typer.Option("--grid", help="Time grid: uniform, quadratic, logsnr, karras.")]
SnrOpt = Annotated[Optional[float], typer.Option("--snr", help="Langevin signal-to-noise ratio (pc).")]
OrderOpt = Annotated[Optional[int], typer.Option("--order", help="Solver order (ei).")]
EtaOpt = Annotated[Optional[float], typer.Option("--eta", help="DDIM stochasticity (ddim).")]
IndividualOpt = Annotated[bool, typer.Option("--individual", help="One PNG per image instead of a grid.")]
