"""Inception Score (Salimans et al. 2016): exp E_x KL(p(y|x) || p(y)) over splits, as in openai/improved-gan."""

from __future__ import annotations

import numpy as np
from scipy.special import log_softmax, logsumexp
from torch import Tensor

from diffusers_cli.engine.metrics.errors import MetricsError

#: Splits of the original implementation.
SPLITS = 10


def inception_score(logits: Tensor | np.ndarray, splits: int = SPLITS) -> tuple[float, float]:
    """(mean, std) over ``splits`` consecutive parts of exp(mean KL(p(y|x) || p(y))), with p = softmax over all classes.

    With the FID Inception, pass its 1008 logits: the softmax runs over all 1008 outputs (8 of them
    never fire), exactly as the original TF code does. Parts are ``[k N // splits, (k+1) N // splits)``
    in the given order (no shuffling); std is over parts (ddof 0). Computed in float64 with
    log-softmax, so one-hot predictions give finite scores.
    """
    x = _as_float64(logits)
    if x.ndim != 2 or x.shape[1] < 2:
        raise MetricsError(f"Inception Score takes logits [N, classes >= 2]; got shape {x.shape}")
    n = x.shape[0]
    if not 1 <= splits <= n:
        raise MetricsError(f"Inception Score with {splits} splits needs at least {splits} samples; got {n}")
    if not np.isfinite(x).all():
        raise MetricsError("logits contain NaN or infinity")
    logp = log_softmax(x, axis=1)
    scores = []
    for k in range(splits):
        part = logp[k * n // splits : (k + 1) * n // splits]
        log_marginal = logsumexp(part, axis=0) - np.log(part.shape[0])
        kl = np.sum(np.exp(part) * (part - log_marginal), axis=1)
        scores.append(np.exp(np.mean(kl)))
    return float(np.mean(scores)), float(np.std(scores))


def _as_float64(logits: Tensor | np.ndarray) -> np.ndarray:
    """Logits as a float64 numpy array."""
    if isinstance(logits, Tensor):
        return logits.detach().cpu().double().numpy()
    return np.asarray(logits, dtype=np.float64)


def splits_for(n: int, splits: int, allow_few: bool) -> tuple[int, str | None]:
    """The number of IS splits to use for n images, and a warning when there are too few images for ``splits``."""
    if n >= splits:
        return splits, None
    if not allow_few:
        raise MetricsError(
            f"Inception Score in {splits} splits needs at least {splits} images; got {n} "
            f"(use more images, lower --is-splits, or pass --allow-few to score them in one split)"
        )
    return 1, f"Inception Score of {n} images in one split ({splits} splits need {splits}): its std is 0 and the score is not comparable"
