"""KID against its peers (clean-fid's kernel_distance, torch-fidelity's kid) on the same random features, and what KID and FID's bootstrap cost.

Features: two sets of ``--n`` rows of 2048 non-negative, correlated values (pool3 features are
averages of ReLUs), from one distribution ("same") or from two ("shifted", KID ~ 2e-3, the
size of a fair model's). Two comparisons:

- exact: one subset holding every row, where every implementation computes the same number
  (the unbiased MMD^2 of the whole sets), so they must agree to rounding;
- defaults: 100 subsets of at most 1000, where each draws its own subsets (ours a seeded
  numpy Generator, torch-fidelity RandomState(2020), clean-fid the global numpy RNG), so
  they agree within the spread of the subset mean.

``--timing`` adds the seconds of our KID and of FID's bootstrap (20 resamples) at several sizes;
``--calibration`` compares that bootstrap std with the spread of FID over independent draws.
clean-fid and torch-fidelity are installed only for this script; they are not dependencies.

    OMP_NUM_THREADS=1 python benchmarks/kid_peer.py             # the peer table in benchmarks/README.md
    OMP_NUM_THREADS=1 python benchmarks/kid_peer.py --no-peers --timing --sizes 1000,5000,20000,50000    # the cost table
    OMP_NUM_THREADS=1 python benchmarks/kid_peer.py --no-peers --calibration    # the bootstrap's calibration
"""

from __future__ import annotations

import argparse
import importlib.metadata
import time
from collections.abc import Callable

import numpy as np

from diffusers_cli.engine.metrics import bootstrap_fids, compute_statistics, fid_against, kid_values

DIM = 2048


def features(n: int, shift: float, seed: int) -> np.ndarray:
    """n rows of DIM non-negative, correlated features: |z M + shift| / 4 with a fixed mixing M."""
    mix = np.random.default_rng(1234).normal(size=(DIM, DIM)) / np.sqrt(DIM)
    return np.abs(np.random.default_rng(seed).normal(size=(n, DIM)) @ mix + shift) / 4


def version(package: str) -> str:
    """The installed version of a package, or "not installed"."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    """fn's result and its wall-clock seconds."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def ours(a: np.ndarray, b: np.ndarray, subsets: int, size: int) -> tuple[float, float]:
    """Our KID: (mean, std over subsets), seed 0."""
    values = kid_values(a, b, np.random.default_rng(0), subsets, size)
    return float(values.mean()), float(values.std())


def clean_fid(a: np.ndarray, b: np.ndarray, subsets: int, size: int) -> tuple[float, float] | None:
    """clean-fid's kernel_distance (a mean only), on the global numpy RNG seeded 0; None if not installed."""
    try:
        from cleanfid.fid import kernel_distance
    except ImportError:
        return None
    np.random.seed(0)
    return kernel_distance(a, b, num_subsets=subsets, max_subset_size=size), float("nan")


def torch_fidelity(a: np.ndarray, b: np.ndarray, subsets: int, size: int) -> tuple[float, float] | None:
    """torch-fidelity's kid_features_to_metric (mean, std), float64 tensors, its rng_seed 2020; None if not installed."""
    try:
        import torch
        from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric
    except ImportError:
        return None
    out = kid_features_to_metric(torch.from_numpy(a), torch.from_numpy(b), kid_subsets=subsets, kid_subset_size=size,
                                 verbose=False)
    return out[KEY_METRIC_KID_MEAN], out[KEY_METRIC_KID_STD]


def peers(n: int) -> None:
    """The exact and the default comparisons, as a Markdown table."""
    print(f"numpy {version('numpy')}, clean-fid {version('clean-fid')}, torch-fidelity {version('torch-fidelity')}; "
          f"{n} x {DIM} features a side\n")
    print("| pair | subsets | ours mean +- std | clean-fid mean | torch-fidelity mean +- std | largest difference | s (ours / clean-fid / torch-fidelity) |")
    print("|---|---|---:|---:|---:|---:|---|")
    ref = features(n, 0.0, seed=1)
    for pair, shift in (("same", 0.0), ("shifted", 0.5)):
        gen = features(n, shift, seed=2)
        for label, subsets, size in (("1 of all", 1, n), ("100 of 1000", 100, 1000)):
            results = [timed(lambda f=f: f(gen, ref, subsets, size)) for f in (ours, clean_fid, torch_fidelity)]
            (o, t_o), (c, t_c), (t, t_t) = results
            means = [r[0] for r, _ in results if r is not None]
            spread = max(means) - min(means)
            fmt = lambda r: "n/a" if r is None else f"{r[0]:.6e}"  # noqa: E731
            tf = "n/a" if t is None else f"{t[0]:.6e} +- {t[1]:.2e}"
            print(f"| {pair} | {label} | {o[0]:.6e} +- {o[1]:.2e} | {fmt(c)} | {tf} | {spread:.1e} | "
                  f"{t_o:.1f} / {t_c:.1f} / {t_t:.1f} |")


def timing(sizes: list[int]) -> None:
    """Seconds of our KID (defaults) and of FID and its bootstrap (20 resamples) against fixed statistics."""
    ref = features(max(sizes), 0.0, seed=1)
    mu, sigma = compute_statistics(ref, allow_few=True)
    print("\n| scored images | KID (100 x 1000) s | FID s | FID bootstrap (20) s | bootstrap std / FID |")
    print("|---:|---:|---:|---:|---:|")
    for n in sizes:
        gen = features(n, 0.5, seed=2)
        _, t_kid = timed(lambda: kid_values(gen, ref, np.random.default_rng(0)))
        (fid, _), t_fid = timed(lambda: fid_against(gen, mu, sigma, None))
        fids, t_boot = timed(lambda: bootstrap_fids(gen, mu, sigma, 20, np.random.default_rng(0)))
        print(f"| {n:,} | {t_kid:.1f} | {t_fid:.1f} | {t_boot:.1f} | {np.std(fids, ddof=1):.3f} / {fid:.3f} |")


def calibration(d: int = 64, sets: int = 40, checks: int = 8) -> None:
    """FID's bootstrap std (20 resamples) of one set against the std of FID over independent sets of a fixed Gaussian."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(d, d)) / np.sqrt(d)
    factor = np.linalg.cholesky(a @ a.T + 0.1 * np.eye(d))
    mu, sigma = compute_statistics(rng.normal(size=(5000, d)) @ factor.T)
    print(f"\n| shift | n (d = {d}) | mean FID | std over {sets} sets | bootstrap std / that, {checks} sets: median (min - max) |")
    print("|---:|---:|---:|---:|---|")
    for shift in (0.0, 0.3):
        for n in (500, 2000):
            def draw(seed: int) -> np.ndarray:
                return np.random.default_rng(seed).normal(size=(n, d)) @ factor.T + shift

            fids = [fid_against(draw(100 + s), mu, sigma)[0] for s in range(sets)]
            spread = float(np.std(fids, ddof=1))
            ratios = [np.std(bootstrap_fids(draw(1000 + s), mu, sigma, 20, np.random.default_rng(s)), ddof=1) / spread
                      for s in range(checks)]
            print(f"| {shift} | {n} | {np.mean(fids):.3f} | {spread:.4f} | "
                  f"{np.median(ratios):.2f} ({min(ratios):.2f} - {max(ratios):.2f}) |")


def main() -> None:
    """Parse the flags and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="features a side for the peer comparison")
    parser.add_argument("--peers", action=argparse.BooleanOptionalAction, default=True, help="the peer comparison")
    parser.add_argument("--timing", action="store_true", help="also time our KID and FID's bootstrap")
    parser.add_argument("--calibration", action="store_true", help="also check FID's bootstrap std against repeated draws")
    parser.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")], default=[1000, 5000, 20000],
                        help="scored images for --timing (the reference has the largest count)")
    args = parser.parse_args()
    if args.peers:
        peers(args.n)
    if args.timing:
        timing(args.sizes)
    if args.calibration:
        calibration()


if __name__ == "__main__":
    main()
