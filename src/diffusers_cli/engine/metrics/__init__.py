"""Image metrics: FID and Inception Score with pytorch-fid's Inception network, offline, plus reference statistics files."""

from __future__ import annotations

from diffusers_cli.engine.metrics.errors import MetricsError
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
    check_sample_count,
    compute_statistics,
    fid_from_features,
    frechet_distance,
)
from diffusers_cli.engine.metrics.inception import (
    FEATURE_DIM,
    NUM_CLASSES,
    InceptionV3Features,
    check_state_dict,
    convert_weights,
    load_inception,
)
from diffusers_cli.engine.metrics.inception_score import inception_score
from diffusers_cli.engine.metrics.stats import Statistics, load_statistics, save_statistics
from diffusers_cli.engine.metrics.weights import (
    FID_WEIGHTS_NAME,
    FID_WEIGHTS_SHA256,
    FID_WEIGHTS_URL,
    WEIGHTS_ENV,
    InceptionWeights,
    hub_weights_path,
    locate_weights,
    read_weights,
)

__all__ = [
    "FEATURE_DIM",
    "FID_WEIGHTS_NAME",
    "FID_WEIGHTS_SHA256",
    "FID_WEIGHTS_URL",
    "IMAGE_EXTENSIONS",
    "NUM_CLASSES",
    "RECOMMENDED_SAMPLES",
    "WEIGHTS_ENV",
    "InceptionV3Features",
    "InceptionWeights",
    "MetricsError",
    "Statistics",
    "check_sample_count",
    "check_state_dict",
    "compute_statistics",
    "convert_weights",
    "extract_features",
    "fid_from_features",
    "folder_features",
    "folder_images",
    "frechet_distance",
    "hub_weights_path",
    "image_batches",
    "inception_score",
    "load_image",
    "load_inception",
    "load_statistics",
    "locate_weights",
    "read_weights",
    "save_statistics",
    "stack_images",
]
