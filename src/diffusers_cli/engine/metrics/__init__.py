"""Metrics: FID, KID and Inception Score with pytorch-fid's Inception network, offline, reference statistics files, bits/dim.

Importing this package imports no torch, numpy or scipy: METRICS (the registry) and the Metric
protocol answer `diffuse evaluate --help` at once, and the names that need those libraries are
imported from their modules on first use (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from diffusers_cli.engine.metrics.errors import MetricsError
from diffusers_cli.engine.metrics.metric import (
    IMAGES,
    LIKELIHOOD,
    NEEDS,
    REFERENCE,
    REFERENCE_FEATURES,
    Figures,
    Inputs,
    LikelihoodTable,
    Metric,
    MetricOptions,
    ReferenceStatistics,
    metric_option_specs,
    metric_options,
)
from diffusers_cli.engine.metrics.registry import METRICS, check_metrics

if TYPE_CHECKING:
    from diffusers_cli.engine.metrics.features import (
        IMAGE_EXTENSIONS,
        extract_features,
        folder_features,
        folder_images,
        image_batches,
        load_image,
        stack_images,
    )
    from diffusers_cli.engine.metrics.fid import (
        RECOMMENDED_SAMPLES,
        bootstrap_fids,
        check_fid_count,
        check_sample_count,
        compute_statistics,
        fid_against,
        fid_from_features,
        frechet_distance,
        frechet_distance_low_rank,
    )
    from diffusers_cli.engine.metrics.inception import (
        FEATURE_DIM,
        NUM_CLASSES,
        InceptionV3Features,
        check_state_dict,
        convert_weights,
        load_inception,
    )
    from diffusers_cli.engine.metrics.iscore import inception_score, splits_for
    from diffusers_cli.engine.metrics.kid import check_kid_count, kid_values, mmd2_unbiased, polynomial_kernel
    from diffusers_cli.engine.metrics.stats import Statistics, load_statistics, save_statistics
    from diffusers_cli.engine.metrics.weights import (
        FID_WEIGHTS_NAME,
        FID_WEIGHTS_SHA256,
        FID_WEIGHTS_URL,
        WEIGHTS_ENV,
        InceptionWeights,
        download_weights,
        hub_weights_path,
        locate_weights,
        read_weights,
    )

#: The module of each name that needs torch, numpy or scipy (the imports above, for type checkers, list the same).
_HOMES: dict[str, str] = {
    **dict.fromkeys(("IMAGE_EXTENSIONS", "extract_features", "folder_features", "folder_images", "image_batches",
                     "load_image", "stack_images"), "features"),
    **dict.fromkeys(("RECOMMENDED_SAMPLES", "bootstrap_fids", "check_fid_count", "check_sample_count", "compute_statistics", "fid_against",
                     "fid_from_features", "frechet_distance", "frechet_distance_low_rank"), "fid"),
    **dict.fromkeys(("FEATURE_DIM", "NUM_CLASSES", "InceptionV3Features", "check_state_dict", "convert_weights",
                     "load_inception"), "inception"),
    **dict.fromkeys(("inception_score", "splits_for"), "iscore"),
    **dict.fromkeys(("check_kid_count", "kid_values", "mmd2_unbiased", "polynomial_kernel"), "kid"),
    **dict.fromkeys(("Statistics", "load_statistics", "save_statistics"), "stats"),
    **dict.fromkeys(("FID_WEIGHTS_NAME", "FID_WEIGHTS_SHA256", "FID_WEIGHTS_URL", "WEIGHTS_ENV", "InceptionWeights",
                     "download_weights", "hub_weights_path", "locate_weights", "read_weights"), "weights"),
}

__all__ = [
    "IMAGES",
    "LIKELIHOOD",
    "METRICS",
    "NEEDS",
    "REFERENCE",
    "REFERENCE_FEATURES",
    "Figures",
    "Inputs",
    "LikelihoodTable",
    "Metric",
    "MetricOptions",
    "MetricsError",
    "metric_option_specs",
    "metric_options",
    "ReferenceStatistics",
    "check_metrics",
    *_HOMES,
]


def __getattr__(name: str) -> Any:
    """A name that needs torch, numpy or scipy, imported from its module on first use."""
    if name in _HOMES:
        return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
