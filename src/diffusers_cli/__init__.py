"""diffusers-cli: train, sample, condition, impute with and evaluate score-based diffusion models of images.

``import diffusers_cli as dc`` gives the commands as functions (``dc.load_model``, ``dc.sample``, ``dc.condition``,
``dc.impute``, ``dc.evaluate``, ``dc.tune``, ``dc.train``, ``dc.list_models``) and notebook helpers (``dc.grid``, ``dc.to_pil``);
they live in ``diffusers_cli.api`` and are imported on first use, so that the command line starts without torch.
The images they return carry ``.info``, a ``dc.RunInfo``: the sampler that ran, its steps, why that one, and the NFE.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

#: The names ``diffusers_cli.api`` offers at the top level.
API = ("load_model", "list_models", "sample", "condition", "impute", "evaluate", "tune", "train", "judge", "grid", "to_pil", "Model", "ModelLike",
       "RunInfo")

__all__ = ["__version__", *API]


def __getattr__(name: str) -> Any:
    """``dc.sample`` and the rest: imported from ``diffusers_cli.api`` when first asked for."""
    if name in API:
        from diffusers_cli import api

        return getattr(api, name)
    raise AttributeError(f"module 'diffusers_cli' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *API])
