"""The Metric protocol: a metric names what it needs, checks counts before any long work, and computes figures.

This module and every METRICS entry import no torch, numpy or scipy at the top (`diffuse evaluate
--help` lists the registry without loading them); an entry imports what it computes with inside
its methods.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple, Protocol

from diffusers_cli.engine.metrics.errors import MetricsError
from diffusers_cli.engine.options import Opt, OptionError, OptionSpec, checked_options, described, option_specs

if TYPE_CHECKING:
    import numpy as np

#: Inception pool3 features [N, 2048] and logits [N, 1008] of the scored images (a model's samples, or --images).
IMAGES = "images"
#: Statistics of the FID reference (and its features, when they were computed in this run or stored with them).
REFERENCE = "reference"
#: The reference's Inception features [N, 2048] themselves (KID): computed in this run or read from a statistics
#: file that stores them; a pytorch-fid .npz holds only mu and sigma and cannot provide them.
REFERENCE_FEATURES = "reference_features"
#: Bits/dim of each example of a data split under the model, per run of the trace estimator.
LIKELIHOOD = "likelihood"
#: Every need the evaluation job knows how to prepare.
NEEDS: tuple[str, ...] = (IMAGES, REFERENCE, REFERENCE_FEATURES, LIKELIHOOD)


@dataclass(frozen=True, kw_only=True)
class MetricOptions:
    """The user's settings that metrics read (the rest of the job's configuration is not theirs).

    Each field is one option, written once with its help and range (the samplers' signature rule): the configs'
    ``metric_options``, `diffuse evaluate --metric-option NAME=VALUE` and its help read them from here
    (``metric_option_specs``), so a new option is a field here and the metric that reads it.
    """

    allow_few: Annotated[bool, Opt("accept too few images for a meaningful figure (to test a pipeline)")] = False
    is_splits: Annotated[int, Opt("Inception Score splits; IS's std is over them", ge=1)] = 10
    kid_subsets: Annotated[int, Opt("KID: random subsets averaged (clean-fid's and torch-fidelity's 100)", ge=1)] = 100
    kid_subset_size: Annotated[int, Opt("KID: images per subset at most (theirs: 1000); MMD needs pairs", ge=2)] = 1000
    fid_bootstrap: Annotated[int, Opt("FID: bootstrap resamples of the scored images for its std; 0 skips it", ge=0)] = 20
    seed: int = 0  # the job's: seeds KID's subsets and FID's bootstrap resamples

    def __post_init__(self) -> None:
        """Refuse settings no metric can use, naming the flag."""
        if self.kid_subsets < 1:
            raise MetricsError(f"--kid-subsets must be at least 1; got {self.kid_subsets}")
        if self.kid_subset_size < 2:
            raise MetricsError(f"--kid-subset-size must be at least 2 (MMD needs pairs); got {self.kid_subset_size}")
        if self.fid_bootstrap < 0 or self.fid_bootstrap == 1:
            raise MetricsError(f"--fid-bootstrap must be 0 (no std) or at least 2 resamples; got {self.fid_bootstrap}")


def metric_option_specs() -> dict[str, OptionSpec]:
    """The options a user sets (``MetricOptions``' fields but the job's seed), with their types, defaults and help."""
    return {name: spec for name, spec in option_specs(MetricOptions).items() if name != "seed"}


def check_metric_options(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` by option name, converted to the options' types; OptionError naming the real ones or the range."""
    specs = metric_option_specs()
    unknown = sorted(set(values) - set(specs))
    if unknown:
        why = " (the evaluation's seed is --seed)" if unknown[0] == "seed" else ""
        raise OptionError(f"no metric option {unknown[0]!r}{why}; the metric options are: {described(specs)}")
    return checked_options(specs, values, "the metric")


def metric_options(settings: Any, extra: Mapping[str, Any], seed: int, **fixed: Any) -> MetricOptions:
    """The options of a job: the fields of ``settings`` (a config) named like options, then ``extra`` (its
    ``metric_options``, which win), then ``fixed``; a new option needs no change here or in the jobs."""
    named = {name: getattr(settings, name) for name in metric_option_specs() if hasattr(settings, name)}
    return MetricOptions(**{**named, **check_metric_options(extra), **fixed, "seed": seed})


class ReferenceStatistics(NamedTuple):
    """The reference: mean [D], covariance [D, D], and features [N, D] when known (computed in this run, or stored in its file).

    ``features`` is never None when a requested metric needs REFERENCE_FEATURES.
    """

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
    reference: ReferenceStatistics | None = None  # REFERENCE, REFERENCE_FEATURES (then with its features)
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
    headline: str            # the key of the figure that ranks results (training's best checkpoint, plots)
    higher_is_better: bool   # which way the headline figure improves

    def check(self, what: str, n: int, options: MetricOptions) -> str | None:
        """Before any long work: refuse ``n`` images of ``what`` (MetricsError) or return a warning line, else None.

        Called once for each counted set the metric needs: "evaluated images" (IMAGES), "reference
        images" (REFERENCE, where the reference says how many) and "reference features"
        (REFERENCE_FEATURES: the rows of features the reference will provide, 0 for a statistics
        file that holds only mu and sigma).
        """
        ...

    def compute(self, inputs: Inputs) -> Figures:
        """The figures, from the inputs its needs name (on the main process only)."""
        ...

    def describe(self, values: Mapping[str, Any], scored: str, reference: str | None) -> str:
        """The figures as one terminal line; ``scored`` says which images were scored, ``reference`` what against."""
        ...


def scores_samples_alone(metric: Metric) -> bool:
    """Whether ``metric`` needs only generated images (and a reference): what evaluation during training can run."""
    return IMAGES in metric.needs and LIKELIHOOD not in metric.needs
