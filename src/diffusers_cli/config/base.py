"""The base of every config: unknown keys are errors; and ConfigError, the one-line bad-config error."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from diffusers_cli.support.errors import UsageError


class ConfigError(UsageError):
    """A config file or value is invalid; the message is one line naming the key and the fix."""


class Strict(BaseModel):
    """Base model: unknown keys are errors, so a typo is never a silent default."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
