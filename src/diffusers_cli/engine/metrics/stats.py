"""Reference statistics files: pytorch-fid's .npz format (arrays ``mu`` and ``sigma``, and ours optionally ``features``), written atomically."""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from diffusers_cli.engine.metrics.errors import MetricsError

#: The keys pytorch-fid writes and reads.
KEYS = ("mu", "sigma")
#: The key of the features [N, D] the statistics came from (pytorch-fid ignores it): what KID needs of a reference.
FEATURES_KEY = "features"


class Statistics(NamedTuple):
    """Statistics read from a file: mean [D], covariance [D, D], extra arrays saved with them, and their features [N, D] if stored."""

    mu: np.ndarray
    sigma: np.ndarray
    extra: dict[str, np.ndarray]
    features: np.ndarray | None = None


def save_statistics(path: str | Path, mu: np.ndarray, sigma: np.ndarray, features: np.ndarray | None = None,
                    **extra: Any) -> Path:
    """Write mu, sigma (float64), optionally the features [N, D] they came from, and extra arrays as an .npz both tools read; atomic.

    Features are stored as float32 when that loses nothing (Inception features come from a
    float32 network; half the bytes of float64), else as float64. N x D x 4 bytes is large next
    to mu and sigma (D x D x 8) once N > 2D: store them only for a metric that needs them (KID).
    """
    path = Path(path)
    mu, sigma = np.asarray(mu, dtype=np.float64), np.asarray(sigma, dtype=np.float64)
    _check_shapes(mu, sigma, path)
    arrays = {k: np.asarray(v) for k, v in extra.items()}
    if features is not None:
        feats = np.asarray(features, dtype=np.float64)
        _check_features(feats, mu, path)
        narrow = feats.astype(np.float32)
        arrays[FEATURES_KEY] = narrow if np.array_equal(narrow, feats) else feats
    clash = set(arrays) & set(KEYS)
    odd = [k for k, v in arrays.items() if v.dtype == object]
    if clash or odd:
        raise ValueError(f"extra statistics must be plain arrays not named mu/sigma; bad: {sorted(clash | set(odd))}")
    path.parent.mkdir(parents=True, exist_ok=True)
    # np.savez to a file object keeps the name as given (no ".npz" appended) and lets os.replace publish it whole.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, mu=mu, sigma=sigma, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_statistics(path: str | Path) -> Statistics:
    """Read an .npz of FID statistics (pytorch-fid's or ours), without pickle; MetricsError if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise MetricsError(f"statistics file {path} does not exist")
    not_npz = f"{path} is not an .npz statistics file (pytorch-fid format, arrays 'mu' and 'sigma')"
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise MetricsError(f"{not_npz}: it holds a single array")
        with loaded as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        if isinstance(err, MetricsError):
            raise
        raise MetricsError(f"{not_npz}: {err}") from None
    missing = [k for k in KEYS if k not in arrays]
    if missing:
        found = ", ".join(sorted(arrays)) or "nothing"
        raise MetricsError(f"{path} lacks {' and '.join(repr(k) for k in missing)} (found: {found}); expected pytorch-fid's keys 'mu' and 'sigma'")
    mu, sigma = arrays.pop("mu"), arrays.pop("sigma")
    if not (np.issubdtype(mu.dtype, np.number) and np.issubdtype(sigma.dtype, np.number)):
        raise MetricsError(f"{path}: 'mu' and 'sigma' must be numeric; got {mu.dtype} and {sigma.dtype}")
    mu, sigma = mu.astype(np.float64), sigma.astype(np.float64)
    _check_shapes(mu, sigma, path)
    features = arrays.pop(FEATURES_KEY, None)
    if features is not None:
        if not np.issubdtype(features.dtype, np.number):
            raise MetricsError(f"{path}: 'features' must be numeric; got {features.dtype}")
        features = features.astype(np.float64)
        _check_features(features, mu, path)
    return Statistics(mu, sigma, arrays, features)


def _check_shapes(mu: np.ndarray, sigma: np.ndarray, path: Path) -> None:
    """mu must be [D] and sigma [D, D], all finite."""
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise MetricsError(f"{path}: 'mu' must be [D] and 'sigma' [D, D]; got mu {mu.shape} and sigma {sigma.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise MetricsError(f"{path}: 'mu' or 'sigma' contains NaN or infinity")


def _check_features(features: np.ndarray, mu: np.ndarray, path: Path) -> None:
    """Features must be [N >= 2, D] for mu [D], finite, and have mu as their mean (so they are the statistics' own)."""
    if features.ndim != 2 or features.shape[0] < 2 or features.shape[1] != mu.shape[0]:
        raise MetricsError(f"{path}: 'features' must be [N >= 2, {mu.shape[0]}] for 'mu' of length {mu.shape[0]}; got {features.shape}")
    if not np.isfinite(features).all():
        raise MetricsError(f"{path}: 'features' contains NaN or infinity")
    if not np.allclose(features.mean(axis=0), mu, rtol=1e-5, atol=1e-6 * max(float(np.abs(mu).max()), 1.0)):
        raise MetricsError(f"{path}: 'features' are not the ones 'mu' was computed from (their mean differs); save them together")
