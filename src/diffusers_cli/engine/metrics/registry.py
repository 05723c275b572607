"""METRICS, the one registry of metrics: `diffuse evaluate --metrics`, its help and its errors all read it (no torch here)."""

from __future__ import annotations

from diffusers_cli.engine.metrics.builtin import FID, BitsPerDim, InceptionScore
from diffusers_cli.engine.metrics.errors import MetricsError
from diffusers_cli.engine.metrics.kid import KID
from diffusers_cli.engine.metrics.metric import Metric

#: Every metric, in the order results are reported. A new metric is one module and one line here.
METRICS: dict[str, Metric] = {
    "fid": FID(),
    "is": InceptionScore(),
    "bpd": BitsPerDim(),
    "kid": KID(),
}


def check_metrics(names: list[str]) -> dict[str, Metric]:
    """The requested metrics in registry order; MetricsError for an unknown name or none at all."""
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise MetricsError(f"unknown metric {unknown[0]!r}; use a comma-separated list of {', '.join(METRICS)} (e.g. --metrics fid,is)")
    if not names:
        raise MetricsError(f"no metric asked for; pass --metrics with some of {', '.join(METRICS)}")
    return {name: metric for name, metric in METRICS.items() if name in names}
