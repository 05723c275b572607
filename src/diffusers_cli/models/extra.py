"""The optional ``diffusers`` extra: diffusers and huggingface_hub, imported only when a model needs them."""

from __future__ import annotations

import importlib

from diffusers_cli.checkpoints.card import CheckpointError

INSTALL = 'pip install "diffusers-cli[diffusers]"'


class MissingExtraError(CheckpointError):
    """A model needs the diffusers extra, which is not installed."""


def require(module: str, what: str) -> None:
    """Import ``module`` (diffusers, huggingface_hub) or fail with one line naming the extra that brings it."""
    try:
        importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(f"{what} needs {module}, which is not installed: {INSTALL}") from None
