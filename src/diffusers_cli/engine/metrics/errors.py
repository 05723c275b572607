"""The one exception of the metrics engine: bad input, reported as a single clear line."""

from __future__ import annotations

from diffusers_cli.support.errors import UsageError


class MetricsError(UsageError):
    """Bad input to a metric (missing or wrong Inception weights, a bad statistics file, too few images); the CLI exits 2."""
