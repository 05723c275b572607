"""The METRICS entries diffuse ships: FID, Inception Score and bits/dim, over the maths in fid.py, iscore.py and the job's table (KID is in kid.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from diffusers_cli.engine.metrics.metric import IMAGES, LIKELIHOOD, REFERENCE, Figures, Inputs, MetricOptions

# Like every entry, these import numpy and scipy inside their methods: METRICS must load without them.


class FID:
    """``fid``: the scored images' features against the reference's statistics (Heusel et al. 2017)."""

    name = "fid"
    description = "Frechet Inception Distance to the reference (Heusel et al. 2017), equal to pytorch-fid's; std by bootstrap"
    needs = frozenset({IMAGES, REFERENCE})
    headline = "fid"
    higher_is_better = False

    def check(self, what: str, n: int, options: MetricOptions) -> str | None:
        """Both sides need more images than the 2048 feature dimensions, unless --allow-few."""
        from diffusers_cli.engine.metrics.fid import check_fid_count

        return check_fid_count(n, what, options.allow_few)

    def compute(self, inputs: Inputs) -> Figures:
        """{"fid", "std", "std_method", "bootstrap"}: std over --fid-bootstrap resamples of the scored images (None for 0)."""
        import numpy as np

        from diffusers_cli.engine.metrics.fid import bootstrap_fids, fid_against

        assert inputs.features is not None and inputs.reference is not None
        ref, resamples = inputs.reference, inputs.options.fid_bootstrap
        fid, lines = fid_against(inputs.features, ref.mu, ref.sigma, ref.features)
        std: float | None = None
        if resamples:
            # The reference stays fixed: the std says how much the figure moves with the scored images alone.
            fids = bootstrap_fids(inputs.features, ref.mu, ref.sigma, resamples, np.random.default_rng(inputs.options.seed))
            std = float(np.std(fids, ddof=1))
        return Figures({"fid": fid, "std": std, "std_method": "bootstrap" if resamples else None, "bootstrap": resamples},
                       tuple(lines))

    def describe(self, values: Mapping[str, Any], scored: str, reference: str | None) -> str:
        """FID 12.3456 +- 0.4000  (bootstrap over 20 resamples; what vs reference), or FID 12.3456  (what vs reference)."""
        if values.get("std") is None:
            return f"FID {values['fid']:.4f}  ({scored} vs {reference})"
        return f"FID {values['fid']:.4f} +- {values['std']:.4f}  (bootstrap over {values['bootstrap']} resamples; {scored} vs {reference})"


class InceptionScore:
    """``is``: the scored images' logits in --is-splits consecutive parts (Salimans et al. 2016)."""

    name = "is"
    description = "Inception Score (Salimans et al. 2016): mean and std over splits, as openai/improved-gan"
    needs = frozenset({IMAGES})
    headline = "mean"
    higher_is_better = True

    def check(self, what: str, n: int, options: MetricOptions) -> str | None:
        """Each split needs an image; with --allow-few, too few images are scored in one split."""
        from diffusers_cli.engine.metrics.iscore import splits_for

        return splits_for(n, options.is_splits, options.allow_few)[1]

    def compute(self, inputs: Inputs) -> Figures:
        """{"mean", "std" (over splits, ddof 0), "std_method": "splits", "splits"}."""
        from diffusers_cli.engine.metrics.iscore import inception_score, splits_for

        assert inputs.logits is not None
        splits, _ = splits_for(inputs.logits.shape[0], inputs.options.is_splits, inputs.options.allow_few)
        mean, std = inception_score(inputs.logits, splits)
        return Figures({"mean": mean, "std": std, "std_method": "splits", "splits": splits})

    def describe(self, values: Mapping[str, Any], scored: str, reference: str | None) -> str:
        """IS 3.1416 +- 0.0100  (what, N split(s))."""
        return f"IS {values['mean']:.4f} +- {values['std']:.4f}  ({scored}, {values['splits']} split(s))"


class BitsPerDim:
    """``bpd``: per-example bits/dim of a data split under the model (Song et al. 2021), averaged per estimator run."""

    name = "bpd"
    description = "bits/dim of a data split by the probability-flow ODE; std over runs of the trace estimator"
    needs = frozenset({LIKELIHOOD})
    headline = "mean"
    higher_is_better = False

    def check(self, what: str, n: int, options: MetricOptions) -> str | None:
        """Nothing to check: bits/dim is defined for any number of examples (and counts no images)."""
        return None

    def compute(self, inputs: Inputs) -> Figures:
        """{"mean", "std", "se", "per_run", "runs", "examples", "data"}: std is that of the runs' means (ddof 0).

        ``se`` is the standard error of the mean over examples (each example's runs averaged first; ddof 1): the
        spread that decides whether two models' bits/dim on this many examples differ at all. 0 for one example.
        """
        assert inputs.likelihood is not None
        table = inputs.likelihood.bits
        per_run = table.mean(axis=1)
        per_example = table.mean(axis=0)
        n = int(table.shape[1])
        se = float(per_example.std(ddof=1) / n**0.5) if n > 1 else 0.0
        return Figures({
            "mean": float(per_run.mean()), "std": float(per_run.std()), "se": se, "per_run": [float(v) for v in per_run],
            "runs": int(table.shape[0]), "examples": n, "data": inputs.likelihood.data,
        })

    def describe(self, values: Mapping[str, Any], scored: str, reference: str | None) -> str:
        """bits/dim 3.1416 +- 0.0100  (std over R run(s); N examples of the split)."""
        return (f"bits/dim {values['mean']:.4f} +- {values['std']:.4f}  "
                f"(std over {values['runs']} run(s); {values['examples']:,} examples of {values['data']})")
