"""Frechet Inception Distance (Heusel et al. 2017), computed exactly as pytorch-fid computes it, in float64."""

from __future__ import annotations

import warnings

import numpy as np
from scipy import linalg

from diffusers_cli.engine.metrics.errors import MetricsError
from diffusers_cli.engine.metrics.inception import FEATURE_DIM

#: The sample count published FIDs use; smaller sets give an upward-biased FID.
RECOMMENDED_SAMPLES = 50_000


def check_sample_count(n: int, dims: int = FEATURE_DIM, allow_few: bool = False) -> str | None:
    """Refuse n <= dims (singular covariance) unless ``allow_few``; return a warning line for n < 50,000, else None."""
    if n <= dims and not allow_few:
        raise MetricsError(
            f"FID needs more images than feature dimensions: got {n:,}, need at least {dims + 1:,} "
            f"(with n <= {dims} the {dims}x{dims} covariance is singular and FID is meaningless; "
            f"{RECOMMENDED_SAMPLES:,} is standard)"
        )
    if n <= dims:
        return (
            f"FID from {n:,} samples is meaningless: the {dims}x{dims} covariance is singular "
            f"below {dims + 1:,} samples; use it only to test the pipeline"
        )
    if n < RECOMMENDED_SAMPLES:
        return (
            f"FID from {n:,} samples is biased upward (published FIDs use {RECOMMENDED_SAMPLES:,}); "
            f"compare only FIDs computed from the same number of samples"
        )
    return None


def compute_statistics(features: np.ndarray, allow_few: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and covariance [D, D] of features [N, D] in float64 (np.mean, np.cov rowvar=False, as pytorch-fid)."""
    act = np.asarray(features, dtype=np.float64)
    if act.ndim != 2 or act.shape[0] < 2:
        raise MetricsError(f"features must be an array [N >= 2, D]; got shape {act.shape}")
    if not np.isfinite(act).all():
        raise MetricsError("features contain NaN or infinity (check the images and the Inception weights)")
    check_sample_count(act.shape[0], dims=act.shape[1], allow_few=allow_few)
    return np.mean(act, axis=0), np.cov(act, rowvar=False)


def frechet_distance(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    eps: float = 1e-6,
) -> float:
    """d^2 = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)); pytorch-fid's calculate_frechet_distance, errors as MetricsError."""
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape:
        raise MetricsError(f"the two mean vectors differ in length: {mu1.shape} vs {mu2.shape} (statistics of different features?)")
    if sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0],) * 2:
        raise MetricsError(f"covariances {sigma1.shape} and {sigma2.shape} do not match means of length {mu1.shape[0]}")
    diff = mu1 - mu2
    covmean = _sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        # The product is (almost) singular: pytorch-fid retries with eps added to both diagonals.
        warnings.warn(
            f"FID: singular product of covariances; adding {eps} to their diagonals", RuntimeWarning, stacklevel=2
        )
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = _sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        # Rounding may leave a tiny imaginary part; a large one means the covariances are not valid.
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            m = np.max(np.abs(covmean.imag))
            raise MetricsError(
                f"FID is undefined here: sqrt(sigma1 sigma2) has an imaginary component {m:.3g} "
                f"(covariances singular or not positive semi-definite; use more samples)"
            )
        covmean = covmean.real
    tr_covmean = np.trace(covmean)
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def _sqrtm(a: np.ndarray) -> np.ndarray:
    """scipy's matrix square root (the same Schur algorithm pytorch-fid calls, without its deprecated ``disp``)."""
    out = linalg.sqrtm(a)
    return out[0] if isinstance(out, tuple) else out


def fid_from_features(features1: np.ndarray, features2: np.ndarray, allow_few: bool = False) -> float:
    """FID between two feature sets [N, D] (statistics of each, then the Frechet distance)."""
    return frechet_distance(*compute_statistics(features1, allow_few), *compute_statistics(features2, allow_few))


def _checked(features: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features [N >= 2, D] and statistics (mu [D], sigma [D, D]) as float64, or a MetricsError saying what does not fit."""
    x = np.asarray(features, dtype=np.float64)
    mu, sigma = np.asarray(mu, dtype=np.float64), np.asarray(sigma, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise MetricsError(f"features must be an array [N >= 2, D]; got shape {x.shape}")
    d = x.shape[1]
    if mu.shape != (d,) or sigma.shape != (d, d):
        raise MetricsError(f"statistics mu {mu.shape} and sigma {sigma.shape} do not match features of dimension {d}")
    return x, mu, sigma


def frechet_distance_low_rank(features: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> float:
    """FID between features [n, D] and statistics (mu [D], sigma [D, D]), exact for any n, cheap for n <= D.

    With A = U diag(s) V^T the centred features, S1 = V diag(s^2) V^T / (n - 1), and the non-zero
    eigenvalues of S1 sigma are those of the symmetric r x r matrix diag(s) V^T sigma V diag(s) / (n - 1)
    (r = rank of A). So Tr sqrt(S1 sigma) is the sum of the square roots of its eigenvalues. With
    n <= D, S1 is singular, where scipy's sqrtm (pytorch-fid's route) is slow and inaccurate
    (an image folder against itself gives |FID| ~ 1e-3); here it is exact to rounding.
    """
    x, mu, sigma = _checked(features, mu, sigma)
    n, d = x.shape
    mu1 = np.mean(x, axis=0)
    a = x - mu1
    _, s, vt = np.linalg.svd(a, full_matrices=False)
    # Directions with s ~ 0 (one is always lost to centring) carry no variance; keeping them would add sqrt(rounding).
    keep = s > s.max(initial=0.0) * max(n, d) * np.finfo(np.float64).eps
    s, vt = s[keep], vt[keep]
    w = s[:, None] * (vt @ sigma @ vt.T) * s[None, :] / (n - 1)
    ev = np.linalg.eigvalsh((w + w.T) / 2) if s.size else np.zeros(0)
    if ev.size and ev.min() < -1e-8 * np.abs(ev).max():
        raise MetricsError(f"FID is undefined here: the reference covariance is not positive semi-definite (eigenvalue {ev.min():.3g})")
    diff = mu1 - mu
    tr1 = float(np.sum(a * a)) / (n - 1)
    return float(diff.dot(diff) + tr1 + np.trace(sigma) - 2 * np.sqrt(np.clip(ev, 0.0, None)).sum())


def fid_against(
    features: np.ndarray,
    mu: np.ndarray,
    sigma: np.ndarray,
    ref_features: np.ndarray | None = None,
) -> tuple[float, list[str]]:
    """FID of features [n, D] against reference statistics (with the reference's features if known), and numerical warnings.

    pytorch-fid's computation (frechet_distance) when both sides have more images than feature
    dimensions; the exact low-rank route when either side has no more (possible with --allow-few),
    where sqrtm of the singular product is slow and off by rounding.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if features.shape[0] <= features.shape[1]:
            fid = frechet_distance_low_rank(features, mu, sigma)
        elif ref_features is not None and ref_features.shape[0] <= ref_features.shape[1]:
            # FID is symmetric: the few reference features against the many images' statistics.
            fid = frechet_distance_low_rank(ref_features, *compute_statistics(features))
        else:
            fid = frechet_distance(*compute_statistics(features), mu, sigma)
    messages = [str(w.message) for w in caught]
    return fid, [m if m.startswith("FID") else f"FID: {m}" for m in messages]


#: Rows of the resampled features multiplied at a time (bounds the memory of one resample to a few of these blocks).
_CHUNK = 4096


def bootstrap_fids(
    features: np.ndarray,
    mu: np.ndarray,
    sigma: np.ndarray,
    resamples: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """FIDs [resamples] of bootstrap resamples of features [n, D] (n rows drawn with replacement) against fixed (mu, sigma).

    Resample b takes the rows ``rng.integers(0, n, size=(resamples, n))[b]``. Each FID is exact
    to rounding and needs no sqrtm: Tr sqrt(S_b sigma) is the sum of the square roots of the
    eigenvalues of a symmetric Gram matrix of the r ~ 0.63 n distinct rows drawn, each weighted
    by how often it was drawn. With n <= D that is the r x r matrix (x_i - m)^T sigma (x_j - m),
    a re-centred block of one n x n product; with n > D, the D x D (or r x r) Gram matrix of the
    rows of Y = X sigma^(1/2), after one eigh of sigma.

    The std of these FIDs is the standard error of FID with the reference fixed. It is right
    when the distributions differ; when they (nearly) agree, FID moves with the square of the
    sampling error and the bootstrap overstates its spread, up to about twice.
    """
    x, mu, sigma = _checked(features, mu, sigma)
    n, d = x.shape
    sym = (sigma + sigma.T) / 2
    # A constant shift changes no covariance; centring first keeps the sums below from cancelling.
    centre = x.mean(axis=0)
    x0 = x - centre
    sq = np.einsum("ij,ij->i", x0, x0)
    if n <= d:
        p = (x0 @ sym) @ x0.T
    else:
        lam, vec = np.linalg.eigh(sym)
        _check_psd(lam)
        y = x0 @ ((vec * np.sqrt(np.clip(lam, 0.0, None))) @ vec.T)
    trace_sigma = float(np.trace(sigma))
    draws = rng.integers(0, n, size=(resamples, n))
    fids = np.empty(resamples)
    for b, rows in enumerate(draws):
        counts = np.bincount(rows, minlength=n).astype(np.float64)
        used = np.flatnonzero(counts)
        w = counts[used]
        mean0 = counts @ x0 / n
        tr1 = float(counts @ sq - n * mean0.dot(mean0))  # sum of w_i |x_i - m|^2
        if n <= d:
            # (x_i - m)^T sigma (x_j - m) = P_ij - a_i - a_j + c, with a = P w / n and c = w^T P w / n^2.
            a = p[used] @ counts / n
            k = p[np.ix_(used, used)] - a[:, None] - a[None, :] + (w @ a) / n
            gram = np.sqrt(w)[:, None] * k * np.sqrt(w)[None, :]
        elif used.size <= d:
            z = np.sqrt(w)[:, None] * (y[used] - counts @ y / n)
            gram = z @ z.T
        else:
            # In blocks of rows: a centred copy of all r rows would take as much memory as the features.
            mean_y, gram = counts @ y / n, np.zeros((d, d))
            for start in range(0, used.size, _CHUNK):
                part = used[start : start + _CHUNK]
                z = np.sqrt(counts[part])[:, None] * (y[part] - mean_y)
                gram += z.T @ z
        ev = np.linalg.eigvalsh((gram + gram.T) / 2) / (n - 1)
        _check_psd(ev)
        diff = centre + mean0 - mu
        fids[b] = diff.dot(diff) + tr1 / (n - 1) + trace_sigma - 2 * np.sqrt(np.clip(ev, 0.0, None)).sum()
    return fids


def _check_psd(eigenvalues: np.ndarray) -> None:
    """MetricsError when eigenvalues show a covariance that is not positive semi-definite (beyond rounding)."""
    if eigenvalues.size and eigenvalues.min() < -1e-8 * max(np.abs(eigenvalues).max(), np.finfo(np.float64).tiny):
        raise MetricsError(
            f"FID is undefined here: the reference covariance is not positive semi-definite (eigenvalue {eigenvalues.min():.3g})"
        )


def check_fid_count(n: int, what: str, allow_few: bool) -> str | None:
    """check_sample_count for the images of ``what``, naming the flag that overrides it; returns the warning line, if any."""
    if n < 2:
        raise MetricsError(f"FID needs at least 2 {what}; got {n}")
    try:
        line = check_sample_count(n, FEATURE_DIM, allow_few)
    except MetricsError as err:
        raise MetricsError(f"{what}: {err}; pass --allow-few to compute it anyway (to test a pipeline only)") from None
    return f"{what}: {line}" if line else None
