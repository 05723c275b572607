"""Dotted config overrides of a sampler section, shared by the command line's flags and the Python face's arguments."""

from __future__ import annotations

from typing import Any


def sampler_section(
    name: str | None = None,
    steps: int | None = None,
    grid: str | None = None,
    eps: float | None = None,
    final_denoise: bool | None = None,
    options: dict[str, Any] | None = None,
    section: str = "sampler",
) -> dict[str, object]:
    """``{"sampler.name": ..., "sampler.options.KEY": ...}`` for ``build_config`` (None: not given).

    Options become ``<section>.options.KEY``, where the engine signature of the chosen sampler checks them.
    """
    out: dict[str, object] = {
        f"{section}.name": name, f"{section}.steps": steps, f"{section}.grid": grid, f"{section}.eps": eps,
        f"{section}.final_denoise": final_denoise,
    }
    out.update({f"{section}.options.{k}": v for k, v in (options or {}).items() if v is not None})
    return out
