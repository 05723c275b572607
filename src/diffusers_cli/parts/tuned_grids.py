"""Tuned time grids on disk: ``grids.json`` beside a model, entries keyed by sampler, steps, options and the weights' hash.

``diffuse tune`` writes entries (``engine.grid_tuning`` finds them); ``--grid tuned`` on sample,
condition and evaluate reads the one for its sampler and step count. Where the file is:
- ``--grids FILE`` when given (read and written);
- else beside the model: a run of ``diffuse train`` or a diffusers folder (``grids.json`` in it);
  the ready-made models ship theirs in the package;
- else, for reading and for models whose folder is not ours to write (``builtin:``, ``hf:``), the
  user's cache (``$XDG_CACHE_HOME/diffusers-cli/grids.json``).
Every entry carries the SHA-256 of the network's weights as loaded, so one file can hold grids of
several models and a grid is never used on a model it was not tuned for.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from diffusers_cli.engine.grids import TUNED
from diffusers_cli.support.errors import UsageError
from diffusers_cli.support.files import write_text_atomic
from diffusers_cli.models import builtin
from diffusers_cli.run.layout import GRIDS_NAME
from diffusers_cli.run.reader import MAX_TEXT_BYTES, RunFiles

if TYPE_CHECKING:
    from diffusers_cli.config.schema import SamplerConfig

__all__ = ["TUNED", "find_times", "grid_name", "lookup", "tuned_times", "make_entry", "write_entry", "weights_hash"]


def weights_hash(net: nn.Module) -> str:
    """SHA-256 of the network's parameters and buffers as loaded (names, dtypes, shapes and bytes, in name order)."""
    h = hashlib.sha256()
    for name, value in sorted(net.state_dict().items()):
        t = value.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def user_grids_file() -> Path:
    """The user's own grids file, for models whose folder is not ours to write."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "diffusers-cli" / GRIDS_NAME


def beside(model_path: Path) -> Path:
    """The grids file that belongs with a resolved model (``models.resolve_model_path``): in its folder, run or package."""
    # Entries carry the weights' hash, so one file per folder serves every model in it.
    folder = model_path if model_path.is_dir() else model_path.parent
    # Read (and rewritten) with the model: one that links out of its folder is refused, as a run's files are.
    RunFiles.of(folder).locate(GRIDS_NAME)
    return folder / GRIDS_NAME


def write_target(model_path: Path, grids: Path | None, model_spec: object) -> Path:
    """Where ``diffuse tune`` writes: ``--grids``, else beside a run or a diffusers folder, else the user's file."""
    if grids is not None:
        return grids
    if builtin.is_builtin_ref(model_spec) or str(model_spec).startswith("hf:"):
        return user_grids_file()
    return beside(model_path)


def read_entries(path: Path) -> list[dict[str, Any]]:
    """The entries of a grids file ([] if it does not exist); UsageError for one that is not a grids file."""
    if not path.is_file():
        return []
    try:
        if path.stat().st_size > MAX_TEXT_BYTES:  # never read a file no tuner wrote into memory whole
            raise ValueError(f"it is larger than {MAX_TEXT_BYTES:,} bytes")
        data = json.loads(path.read_text(encoding="utf-8"))
        entries = data["grids"]
        if not isinstance(entries, list) or not all(isinstance(e, dict) and "times" in e for e in entries):
            raise ValueError("entries")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UsageError(f"{path} is not a grids file of `diffuse tune` ({type(err).__name__}: {err}); "
                         "remove it, or make it again with `diffuse tune`") from err
    return entries


def _key(entry: dict[str, Any]) -> tuple[str, int, str]:
    return entry["sampler"], int(entry["steps"]), json.dumps(entry.get("options", {}), sort_keys=True)


def write_entry(path: Path, entry: dict[str, Any]) -> None:
    """Add ``entry`` to the grids file at ``path`` (atomically), replacing one of the same model, sampler, steps and options."""
    same = (*_key(entry), entry["weights_sha256"])
    kept = [e for e in read_entries(path) if (*_key(e), e.get("weights_sha256")) != same]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps({"grids": [*kept, entry]}, indent=1) + "\n")


def make_entry(sampler: str, steps: int, options: dict[str, Any], times: Tensor, digest: str, **facts: Any) -> dict[str, Any]:
    """One grids.json entry: what it is for, the times, and ``facts`` (objective, error, cost, model ...)."""
    now = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    return {"sampler": sampler, "steps": steps, "options": options, "times": [float(t) for t in times],
            "weights_sha256": digest, "date": now, **facts}


def _search_files(model_path: Path, grids: Path | None) -> list[Path]:
    return [grids] if grids is not None else [beside(model_path), user_grids_file()]


def lookup(model_path: Path, net: nn.Module, sampler: str, steps: int, options: dict[str, Any],
           grids: Path | None = None) -> dict[str, Any] | None:
    """The grids.json entry for this model (by weights hash), sampler, step count and options, or None (never raises for absence)."""
    want = (sampler, steps, json.dumps(options, sort_keys=True))
    digest = weights_hash(net)
    for f in _search_files(model_path, grids):
        for e in read_entries(f):
            if _key(e) == want and e.get("weights_sha256") == digest:
                return {**e, "file": str(f)}
    return None


def find_times(model_path: Path, net: nn.Module, sampler: str, steps: int, options: dict[str, Any],
               grids: Path | None = None, model_spec: object = None) -> Tensor:
    """The tuned times for this model, sampler, step count and options; UsageError saying how to make them."""
    found = lookup(model_path, net, sampler, steps, options, grids)
    if found is not None:
        return torch.tensor(found["times"], dtype=torch.float64)
    files = _search_files(model_path, grids)
    want = (sampler, steps, json.dumps(options, sort_keys=True))
    digest = weights_hash(net)
    others = [(f, str(e.get("weights_sha256", "?"))) for f in files for e in read_entries(f) if _key(e) == want]
    opts = "".join(f" -o {k}={v}" for k, v in options.items())
    make = f"`diffuse tune {model_spec or model_path} --sampler {sampler} --steps {steps}{opts}`"
    if others:
        f, other = others[0]
        raise UsageError(f"{f} has a grid for {sampler} at {steps} steps tuned for another model (weights sha256 "
                         f"{other[:12]}, this model {digest[:12]}); make one for this model with {make}")
    where = " or ".join(str(f) for f in files)
    raise UsageError(f"no tuned grid for {sampler} at {steps} steps of this model in {where}; make one with {make}")


def tuned_times(sampler: "SamplerConfig", model_path: Path, net: nn.Module, grids: Path | None = None,
                model_spec: object = None, guidance: float | None = None) -> Tensor | None:
    """The times a job samples on instead of a named grid, or None for the named grid.

    ``--grid tuned``: this model's tuned grid, or a UsageError saying how to make one. No ``--grid``:
    the tuned grid when one exists for this sampler, step count and options, it beat the default
    grid on held-out noise (``kept``; the shipped models carry theirs), and it was tuned at the
    classifier-free ``guidance`` scale, eps and final step the job samples with (None: none);
    otherwise the sampler's default.
    An explicitly named grid is always used as named.
    """
    if sampler.grid == TUNED:
        return find_times(model_path, net, sampler.name, sampler.steps, dict(sampler.options), grids, model_spec)
    if sampler.grid is not None:
        return None
    found = lookup(model_path, net, sampler.name, sampler.steps, dict(sampler.options), grids)
    if found is None or found.get("kept") is not True:  # grids from before the held-out check: --grid tuned only
        return None
    # Another guidance scale is another score field, where the grid was never compared with the default; another
    # eps or final step is another sampler (the grid's last time, what the last step does), never compared either.
    if (found.get("guidance") != guidance or found.get("eps") != sampler.eps
            or found.get("final_denoise", True) != sampler.final_denoise):
        return None
    return torch.tensor(found["times"], dtype=torch.float64)


def grid_name(sampler: "SamplerConfig", times: Tensor | None) -> str:
    """The grid a job ran, as its output names it: "tuned" (times from grids.json), else the named grid."""
    from diffusers_cli.engine.samplers import check_sampler

    if times is not None:
        return TUNED
    return sampler.grid or check_sampler(sampler.name).grid
