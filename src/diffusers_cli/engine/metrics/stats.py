"""Reference statistics files: pytorch-fid's .npz format (arrays ``mu`` and ``sigma``), written atomically."""

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


class Statistics(NamedTuple):
    """FID statistics read from a file: mean [D], covariance [D, D], and any extra arrays saved with them."""

    mu: np.ndarray
    sigma: np.ndarray
    extra: dict[str, np.ndarray]


def save_statistics(path: str | Path, mu: np.ndarray, sigma: np.ndarray, **extra: Any) -> Path:
    """Write mu, sigma (float64) and extra arrays (e.g. num_samples=50000) as an .npz both tools read; atomic."""
    path = Path(path)
    mu, sigma = np.asarray(mu, dtype=np.float64), np.asarray(sigma, dtype=np.float64)
    _check_shapes(mu, sigma, path)
    arrays = {k: np.asarray(v) for k, v in extra.items()}
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
    return Statistics(mu, sigma, arrays)


def _check_shapes(mu: np.ndarray, sigma: np.ndarray, path: Path) -> None:
    """mu must be [D] and sigma [D, D], all finite."""
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise MetricsError(f"{path}: 'mu' must be [D] and 'sigma' [D, D]; got mu {mu.shape} and sigma {sigma.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise MetricsError(f"{path}: 'mu' or 'sigma' contains NaN or infinity")
