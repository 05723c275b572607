"""What every subcommand shares: exit codes, one-line errors, progress reporters and the --json summary."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Callable, Optional, TypeVar

import click
import typer

from diffusers_cli.config.defaults import DEFAULT_SAMPLER, DEFAULT_STEPS
from diffusers_cli.config.overrides import sampler_section
from diffusers_cli.support.errors import MachineError, RunFailed, UsageError
from diffusers_cli.support.files import MACHINE_ERRNOS, MACHINE_HINTS
from diffusers_cli.support.memory import SMALLER_BATCH, out_of_memory
from diffusers_cli.support.progress import LineReporter

T = TypeVar("T")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    """Print one error line to stderr and return the Exit to raise."""
    print(f"diffuse: error: {message}", file=sys.stderr)
    return typer.Exit(code)


def first_line(err: BaseException) -> str:
    """The first non-empty line of an error's message, or its type's name when it has none."""
    text = str(err).strip()
    if text.startswith("Caught ") and "Original Traceback" in text:
        # Raised in a DataLoader worker: torch re-raises the same type with the worker's traceback as its message,
        # whose last line is the original "module.Type: message".
        last = text.splitlines()[-1].strip()
        return last.split(": ", 1)[1] if ": " in last else last
    return text.splitlines()[0].strip() if text else type(err).__name__


def debug_enabled() -> bool:
    """DIFFUSE_DEBUG set to anything but empty, 0, false or no: show tracebacks."""
    return os.environ.get("DIFFUSE_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def _os_error_line(err: OSError) -> str:
    """One line for an OSError: the file and the cause (and what to do for a failing machine), without '[Errno N]'."""
    if not err.strerror:
        return first_line(err)
    hint = MACHINE_HINTS.get(err.errno) if err.errno is not None else None
    cause = err.strerror + (f"; {hint}" if hint else "")
    if err.filename is None:
        return cause
    target = f"{err.filename} -> {err.filename2}" if err.filename2 is not None else str(err.filename)
    return f"{target}: {cause}"


def _failure(err: BaseException, message: str, code: int) -> typer.Exit:
    """Print the traceback under DIFFUSE_DEBUG=1, then the one error line; return the Exit to raise."""
    if debug_enabled():
        import traceback

        traceback.print_exception(err)
    return fail(message, code)


def run_job(job: Callable[[], T], memory_fix: str = SMALLER_BATCH) -> T:
    """Run a job under the error policy: bad input exits 2, a failing machine 1, a bug 1, Ctrl-C 130; one line each.

    Every outcome is one ``diffuse: error:`` line on stderr that says what went wrong and what to do;
    a traceback is shown only with DIFFUSE_DEBUG=1. Running out of memory is a failing machine: its line
    says what ran out, the size it tried, and ``memory_fix`` (the command's flags that make the work smaller).
    """
    try:
        return job()
    except (typer.Exit, typer.Abort, click.exceptions.ClickException):  # typer.Exit is a RuntimeError: keep it whole
        raise
    except UsageError as err:
        raise _failure(err, first_line(err), EXIT_USAGE) from None
    except (MachineError, RunFailed) as err:
        raise _failure(err, first_line(err), EXIT_FAILURE) from None
    except OSError as err:
        if err.errno in MACHINE_ERRNOS:  # a full disk etc. outside atomic_path: still the machine, not a bug
            raise _failure(err, _os_error_line(err), EXIT_FAILURE) from None
        if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError)):  # a bad path the user gave
            raise _failure(err, _os_error_line(err), EXIT_USAGE) from None
        raise _unexpected(err) from None
    except KeyboardInterrupt:
        raise fail("interrupted", EXIT_INTERRUPTED) from None
    except Exception as err:  # a bug, ours or a library's (a plain ValueError from numpy included)
        ran_out = out_of_memory(err)
        if ran_out is not None:
            raise _failure(err, f"out of memory: {ran_out}; {memory_fix}", EXIT_FAILURE) from None
        raise _unexpected(err) from None


def _unexpected(err: BaseException) -> typer.Exit:
    """A bug: one line naming the exception (with the DIFFUSE_DEBUG hint unless it is set); exit 1."""
    summary = f"unexpected failure: {type(err).__name__}: {first_line(err)}"
    return _failure(err, summary if debug_enabled() else f"{summary} (set DIFFUSE_DEBUG=1 for the traceback)", EXIT_FAILURE)


def emit_json(summary: dict[str, Any]) -> None:
    """Print the machine-readable summary on stdout (the only thing --json prints there)."""
    print(json.dumps(summary, default=lambda o: str(o) if isinstance(o, Path) else repr(o)), flush=True)


class RichReporter:
    """A rich progress bar (loss, it/s, ETA) on an interactive terminal."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
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
        from diffusers_cli.support.progress import SilentReporter

        return SilentReporter()
    if sys.stderr.isatty() and not json_mode and os.environ.get("TERM") != "dumb":
        return RichReporter()
    return LineReporter()


def _pairs(items: list[str] | None, flag: str, example: str) -> dict[str, Any]:
    """KEY=VALUE pairs of a repeatable flag; values are parsed as YAML scalars (numbers, booleans, lists)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{flag} expects KEY=VALUE (e.g. {flag} {example}), got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            out[key.strip()] = value  # not a YAML scalar: keep the text, the option's own check judges it
    return out


def parse_kv(items: list[str] | None) -> dict[str, Any]:
    """``--set a.b=value`` pairs; values are parsed as YAML scalars (numbers, booleans, lists)."""
    return _pairs(items, "--set", "optim.lr=1e-4")


def sampler_overrides(
    sampler: str | None = None,
    steps: int | None = None,
    grid: str | None = None,
    eps: float | None = None,
    no_denoise: bool = False,
    options: list[str] | None = None,
    section: str = "sampler",
    **named: Any,
) -> dict[str, object]:
    """Config overrides (None: not given) of a sampler section from its flags; ``-o KEY=VALUE`` pairs join the named ones."""
    return sampler_section(sampler, steps, grid, eps, False if no_denoise else None,
                           {**named, **_pairs(options, "-o", "corrector=true")}, section)


def metric_option_pairs(items: list[str] | None) -> dict[str, Any]:
    """``--metric-option KEY=VALUE`` pairs (engine.metrics' MetricOptions by name)."""
    return _pairs(items, "--metric-option", "kid_subsets=50")


def option_pairs(items: list[str] | None) -> dict[str, Any]:
    """``-o KEY=VALUE`` pairs (for commands whose options are not a sampler's, e.g. an imputation method's)."""
    return _pairs(items, "-o", "particles=32")


# Options shared by several subcommands: declared once so their names and help read alike everywhere.
# Sampler and metric names are not listed here: their registries live in the engine, which imports torch,
# and `--help` must answer at once; `diffuse samplers` lists them from the registry itself.
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="YAML, JSON or TOML config; flags override its values.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override any config key: --set sampler.options.snr=0.1.")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Seed; image i depends only on (seed, i), whatever the batch size.")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")]
ModelOpt = Annotated[Optional[Path], typer.Option("--model", help="Run directory (RUN@STEP: its snapshot of that step), .safetensors file, diffusers folder, hf:ORG/NAME[@REV] or builtin:NAME (`diffuse models`; default: the newest run under ./runs).")]
DownloadModelOpt = Annotated[bool, typer.Option("--download", help="Fetch a --model hf:ORG/NAME missing from the Hugging Face cache (huggingface_hub); never otherwise.")]
SamplerOpt = Annotated[Optional[str], typer.Option("--sampler", help="Sampler name; `diffuse samplers` lists them with their options.")]
UpscaleOpt = Annotated[Optional[int], typer.Option("--upscale", help="Write the PNGs K times larger (nearest neighbour: a 16x16 or 28x28 image becomes visible, no pixel invented).")]
StepsOpt = Annotated[Optional[int], typer.Option("--steps", help="Sampler steps (the ode sampler adapts its own).")]
# sample and condition: given neither, the model card's recommended sampler runs (parts.sampler_choice).
CardSamplerOpt = Annotated[Optional[str], typer.Option("--sampler", help=(
    "Sampler name; `diffuse samplers` lists them. Default: the model card's recommendation (`diffuse models` shows "
    f"the ready-made models'), else {DEFAULT_SAMPLER}; the summary line says which ran."))]
CardStepsOpt = Annotated[Optional[int], typer.Option("--steps", help=(
    "Sampler steps (the ode sampler adapts its own). Default: the model card's, when it recommends this sampler, "
    f"else {DEFAULT_STEPS}."))]
NumOpt = Annotated[Optional[int], typer.Option("-n", "--num-samples", help="How many images.")]
BatchOpt = Annotated[Optional[int], typer.Option("--batch-size", help="Images per batch (does not change the images).")]
GridOpt = Annotated[Optional[str], typer.Option("--grid", help="Time grid (default: the sampler's), or `tuned` for the model's own from `diffuse tune`; `diffuse samplers` lists them.")]
GridsOpt = Annotated[Optional[Path], typer.Option("--grids", help="The grids file of --grid tuned (default: grids.json beside the model, then the user's cache).")]
OptionOpt = Annotated[Optional[list[str]], typer.Option("-o", "--option", help="Sampler option KEY=VALUE, repeatable (e.g. -o corrector=true); `diffuse samplers` lists each sampler's.")]
SnrOpt = Annotated[Optional[float], typer.Option("--snr", help="Langevin signal-to-noise ratio (pc); = -o snr=V.")]
OrderOpt = Annotated[Optional[int], typer.Option("--order", help="Solver order (ei, ipndm); = -o order=N.")]
EtaOpt = Annotated[Optional[float], typer.Option("--eta", help="DDIM stochasticity (ddim); = -o eta=V.")]
RtolOpt = Annotated[Optional[float], typer.Option("--rtol", help="Relative tolerance (ode); = -o rtol=V.")]
AtolOpt = Annotated[Optional[float], typer.Option("--atol", help="Absolute tolerance (ode); = -o atol=V.")]
EpsOpt = Annotated[Optional[float], typer.Option("--eps", help="End time of sampling (default: the SDE's).")]
NoDenoiseOpt = Annotated[bool, typer.Option("--no-denoise", help="Skip the final denoising step.")]
IndividualOpt = Annotated[bool, typer.Option("--individual", help="One PNG per image instead of a grid.")]
