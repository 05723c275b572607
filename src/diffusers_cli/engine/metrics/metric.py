"""The Metric protocol: a metric names what it needs, checks counts before any long work, and computes figures.

This module and every METRICS entry import no torch, numpy or scipy at the top (`diffuse evaluate
--help` lists the registry without loading them); an entry imports what it computes with inside
its methods.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    import numpy as np

#: Inception pool3 features [N, 2048] and logits [N, 1008] of the scored images (a model's samples, or --images).
IMAGES = "images"
#: Statistics of the FID reference (and its features, when they were computed in this run rather than read).
REFERENCE = "reference"
#: Bits/dim of each example of a data split under the model, per run of the trace estimator.
LIKELIHOOD = "likelihood"
#: Every need the evaluation job knows how to prepare.
NEEDS: tuple[str, ...] = (IMAGES, REFERENCE, LIKELIHOOD)


@dataclass(frozen=True)
class MetricOptions:
    """The user's settings that metrics read (the rest of the job's configuration is not theirs)."""

    allow_few: bool = False  # accept too few images for a meaningful figure (to test a pipeline)
    is_splits: int = 10      # Inception Score splits


class ReferenceStatistics(NamedTuple):
    """The reference side of FID: mean [D], covariance [D, D], and features [N, D] when computed in this run."""

    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray | None


class LikelihoodTable(NamedTuple):
    """Bits/dim [runs, examples] of a data split under the model, and which split it is."""

    bits: np.ndarray
    data: str


@dataclass(frozen=True)
class Inputs:
    """What a metric's compute receives: the options, and the inputs its needs named (None where no metric asked)."""

    options: MetricOptions
    features: np.ndarray | None = None            # IMAGES: pool3 features [N, 2048], float64
    logits: np.ndarray | None = None              # IMAGES: logits [N, 1008], float64
    reference: ReferenceStatistics | None = None  # REFERENCE
    likelihood: LikelihoodTable | None = None     # LIKELIHOOD


class Figures(NamedTuple):
    """A metric's figures (JSON-ready: numbers, strings, lists) and warnings about them."""

    values: dict[str, Any]
    warnings: tuple[str, ...] = ()


class Metric(Protocol):
    """One entry of METRICS: everything about a metric, so the job and the CLI never branch on its name."""

    name: str                # the --metrics name and the key of its figures in the summary
    description: str         # one line, for listings and the README
    needs: frozenset[str]    # a subset of NEEDS: what the job must prepare for compute

    def check(self, what: str, n: int, options: MetricOptions) -> str | None:
        """Before any long work: refuse ``n`` images of ``what`` (MetricsError) or return a warning line, else None.

        Called once for each counted image set the metric needs: "evaluated images" (IMAGES) and
        "reference images" (REFERENCE, where the reference says how many).
        """
        ...

    def compute(self, inputs: Inputs) -> Figures:
        """The figures, from the inputs its needs name (on the main process only)."""
        ...

    def describe(self, values: Mapping[str, Any], scored: str, reference: str | None) -> str:
        """The figures as one terminal line; ``scored`` says which images were scored, ``reference`` what against."""
        ...
