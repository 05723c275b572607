"""Kernel Inception Distance (Binkowski et al. 2018): the unbiased MMD^2 of Inception features under a cubic kernel, over random subsets."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from diffusers_cli.engine.metrics.errors import MetricsError
from diffusers_cli.engine.metrics.metric import IMAGES, REFERENCE_FEATURES, Figures, Inputs, MetricOptions

if TYPE_CHECKING:
    import numpy as np

# numpy is imported inside the functions: METRICS holds KID and must load without it.

#: Subsets and their size at most: the defaults of clean-fid (kernel_distance) and torch-fidelity (kid_subsets, kid_subset_size).
SUBSETS = 100
SUBSET_SIZE = 1000

#: The one line that tells a user with a pytorch-fid statistics file what to pass instead.
NO_REFERENCE_FEATURES = (
    "KID needs the reference's Inception features, not only its mu and sigma (a pytorch-fid statistics .npz holds "
    "no more): pass --reference a folder of images or a dataset name, or a .npz written by --save-reference-stats"
)


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (x . y / d + 1)^3 between the rows of x [m, d] and y [n, d] -> [m, n] (the KID paper's kernel)."""
    k = (x @ y.T) / x.shape[1]
    k += 1.0
    return k * k * k  # products are cheaper than numpy's general ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of samples x [m, d] and y [n, d] under polynomial_kernel.

    The within-sample means leave out the diagonal (k(x_i, x_i)): sum over i != j divided by
    m (m - 1). The cross term averages over all m n pairs, as clean-fid and torch-fidelity
    (its ``mmd_est="unbiased"``) do.
    """
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise MetricsError(f"the unbiased MMD needs at least 2 samples on each side; got {m} and {n}")
    return _within(x) + _within(y) - 2.0 * float(polynomial_kernel(x, y).mean())


def _within(x: np.ndarray) -> float:
    """The mean of k(x_i, x_j) over the m (m - 1) pairs i != j of rows of x [m, d]."""
    import numpy as np

    k, m = polynomial_kernel(x, x), x.shape[0]
    return float((k.sum() - np.trace(k)) / (m * (m - 1)))


def _kernel_sums(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """sum_i k(x_i, y_j) for each row y_j of y [n, d] -> [n], in blocks of y's rows (all of K(x, y) may not fit)."""
    import numpy as np

    return np.concatenate([polynomial_kernel(x, y[start : start + 1024]).sum(axis=0) for start in range(0, y.shape[0], 1024)])


def subset_size_for(n: int, n_ref: int, subset_size: int = SUBSET_SIZE) -> int:
    """The images per subset: ``subset_size``, or fewer when either side has fewer images."""
    return min(subset_size, n, n_ref)


def kid_values(
    features: np.ndarray,
    ref_features: np.ndarray,
    rng: np.random.Generator,
    subsets: int = SUBSETS,
    subset_size: int = SUBSET_SIZE,
) -> np.ndarray:
    """The MMD^2 of each of ``subsets`` random subset pairs [subsets]: m = subset_size_for(n, n_ref, subset_size) rows of each side.

    Subset k draws ``rng.choice(n, m, replace=False)`` rows of ``features``, then
    ``rng.choice(n_ref, m, replace=False)`` of ``ref_features``; a side with only m rows is not
    drawn (every subset holds all of it). When that is both sides, every subset is the same
    pair of sets, so it is computed once and one value is returned.
    """
    import numpy as np

    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(ref_features, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise MetricsError(f"KID takes features [N, D] of the same D on both sides; got {x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise MetricsError("features contain NaN or infinity (check the images and the Inception weights)")
    n, n_ref = x.shape[0], y.shape[0]
    m = subset_size_for(n, n_ref, subset_size)
    if m < 2:
        raise MetricsError(f"KID needs at least 2 images on each side; got {n} scored and {n_ref} reference")
    if m == n == n_ref:
        return np.array([mmd2_unbiased(x, y)])
    values = np.empty(subsets)
    if m == n or m == n_ref:
        # One side whole in every subset (few scored images, as in training): its within-sample mean is one
        # number, and each cross term a sum of kernel sums precomputed once, so a subset costs one kernel matrix, not three.
        whole, drawn = (x, y) if m == n else (y, x)
        within_whole, sums = _within(whole), _kernel_sums(whole, drawn)
        for k in range(subsets):
            rows = rng.choice(drawn.shape[0], m, replace=False)
            values[k] = within_whole + _within(drawn[rows]) - 2.0 * float(sums[rows].sum()) / (m * m)
        return values
    for k in range(subsets):
        xs = x[rng.choice(n, m, replace=False)]
        values[k] = mmd2_unbiased(xs, y[rng.choice(n_ref, m, replace=False)])
    return values


def check_kid_count(n: int, what: str, subset_size: int = SUBSET_SIZE) -> str | None:
    """Refuse fewer than 2 images of ``what`` (0 reference features: a statistics file without them); warn below ``subset_size``."""
    if what == "reference features" and n == 0:
        raise MetricsError(NO_REFERENCE_FEATURES)
    if n < 2:
        raise MetricsError(f"KID needs at least 2 {what}; got {n}")
    if n < subset_size:
        return (
            f"KID: {n:,} {what}, fewer than the subset size {subset_size:,}: subsets hold at most {n:,} "
            f"(all of them); compare KIDs only at equal subset sizes"
        )
    return None


class KID:
    """``kid``: mean and std over random subsets of the unbiased MMD^2 between the scored and the reference features."""

    name = "kid"
    description = "Kernel Inception Distance (Binkowski et al. 2018): mean and std over subsets, as torch-fidelity"
    needs = frozenset({IMAGES, REFERENCE_FEATURES})
    headline = "mean"
    higher_is_better = False

    def check(self, what: str, n: int, options: MetricOptions) -> str | None:
        """At least 2 images a side and reference features to draw from; a warning below --kid-subset-size."""
        return check_kid_count(n, what, options.kid_subset_size)

    def compute(self, inputs: Inputs) -> Figures:
        """{"mean", "std" (over subsets, ddof 0), "std_method": "subsets", "subsets", "subset_size"}."""
        import numpy as np

        assert inputs.features is not None and inputs.reference is not None
        ref = inputs.reference.features
        if ref is None:
            raise MetricsError(NO_REFERENCE_FEATURES)
        opts = inputs.options
        values = kid_values(inputs.features, ref, np.random.default_rng(opts.seed), opts.kid_subsets, opts.kid_subset_size)
        return Figures({
            "mean": float(values.mean()), "std": float(values.std()), "std_method": "subsets",
            "subsets": int(values.size), "subset_size": subset_size_for(inputs.features.shape[0], ref.shape[0], opts.kid_subset_size),
        })

    def describe(self, values: Mapping[str, Any], scored: str, reference: str | None) -> str:
        """KID 0.001234 +- 0.000100  (std over S subsets of M; what vs reference)."""
        return (f"KID {values['mean']:.6f} +- {values['std']:.6f}  "
                f"(std over {values['subsets']} subset(s) of {values['subset_size']:,}; {scored} vs {reference})")
