"""Would importance-sampled noise levels pay (issue 20)? The loss estimator's variance under the best such sampler.

    python benchmarks/time_importance.py                      # builtin:shapes, and a Quickstart run trained 500 steps
    python benchmarks/time_importance.py --models runs/mnist --no-train

Nichol & Dhariwal (2021) draw training times with p(t) proportional to sqrt(E[L_t^2]) and weight each loss
by 1 / p(t): the objective is unchanged and its one-sample variance falls. Before building that sampler,
this measures what it could give at best. Training draws ln(sigma) ~ N(P_mean, P_std^2), i.e. u = Phi(z)
uniform on [0, 1]; the script cuts u into K equal bins, estimates the mean and second moment of the
per-example loss in each (fresh data, noise and u within the bin), and compares
  Var_base = E[L^2] - E[L]^2                         (today: u uniform)
  Var_best = (sum_k sqrt(E[L^2 | k]) / K)^2 - E[L]^2  (the variance-optimal piecewise-constant sampler).
Var_best / Var_base bounds what any importance sampler over noise levels can do to the loss's noise: at
best it divides the steps needed in the noise-dominated regime by Var_base / Var_best.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from statistics import NormalDist

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model

#: Std multipliers of the log-normal importance samplers whose gradient variance is also estimated.
WIDER = (1.25, 1.5, 2.0)


def bin_moments(spec: str, k: int, per_bin: int, seed: int, weighting: str = "edm", p_mean: float = -1.2,
                p_std: float = 1.2, gamma: float = 5.0, grads: int = 16) -> dict[str, object]:
    """Per-bin mean and second moment of the training loss of a model at its recipe's noise levels, and the bound."""
    import diffusers_cli as dc
    from diffusers_cli.data import load_dataset
    from diffusers_cli.engine.losses import dsm_loss

    model = dc.load_model(spec)
    card, score = model.card, model.score
    assert score is not None, f"{spec} is not a score model"
    data, _ = load_dataset(card.dataset, card.image_shape[1:], split="train", seed=0, num_examples=per_bin * 4,
                           channels=card.image_shape[0])
    g = torch.Generator().manual_seed(seed)
    normal = NormalDist()
    params = [q for q in score.parameters() if q.requires_grad] or list(score.parameters())
    for q in params:
        q.requires_grad_(True)
    m1, m2, g2, gsum = [], [], [], None
    between = 0.0  # (1/K) sum_k ||E[g | bin k]||^2, each term unbiased for the bin's own sampling noise
    for b in range(k):
        idx = torch.randint(len(data), (per_bin,), generator=g)  # type: ignore[arg-type]
        x = torch.stack([data[int(i)][0] for i in idx])
        y = torch.tensor([int(data[int(i)][1]) for i in idx]) if card.num_classes else None
        u = (b + torch.rand(per_bin, generator=g, dtype=torch.float64)) / k
        z = torch.tensor([normal.inv_cdf(min(max(float(v), 1e-12), 1 - 1e-12)) for v in u], dtype=torch.float64)
        t = score.sde.t_from_log_snr(-(p_mean + p_std * z)).clamp(score.sde.eps, score.sde.T).float()
        eps = torch.randn(x.shape, generator=g)
        with torch.no_grad():
            loss = dsm_loss(score, x, None, weighting, y, t, eps, gamma).double()
        m1.append(float(loss.mean()))
        m2.append(float(loss.pow(2).mean()))
        # Per-example gradients of the first few examples: what the optimiser's noise is made of.
        sq, mine = 0.0, None
        for i in range(grads):
            one = dsm_loss(score, x[i:i + 1], None, weighting, None if y is None else y[i:i + 1], t[i:i + 1],
                           eps[i:i + 1], gamma).sum()
            flat = torch.cat([v.flatten() for v in torch.autograd.grad(one, params)]).double()
            sq += float(flat.pow(2).sum())
            mine = flat if mine is None else mine + flat
        assert mine is not None
        g2.append(sq / grads)
        between += (float((mine / grads).pow(2).sum()) * grads - sq / grads) / (grads - 1) / k
        gsum = mine if gsum is None else gsum + mine
    assert gsum is not None
    mean = sum(m1) / k

    def bound(second: list[float], first_sq: float) -> tuple[float, float]:
        """(Var today, Var of the best piecewise-constant importance sampler) from per-bin second moments."""
        return sum(second) / k - first_sq, (sum(v**0.5 for v in second) / k) ** 2 - first_sq

    lb, lbest = bound(m2, mean**2)
    mean_g2 = float((gsum / (k * grads)).pow(2).sum())
    gb, gbest = bound(g2, mean_g2)
    # Log-normal samplers of the same mean and a wider std, weighted by p / q: the simplest importance samplers.
    wider = {}
    for c in WIDER:
        edges = [normal.inv_cdf(i / k) if 0 < i < k else (-1e9 if i == 0 else 1e9) for i in range(k + 1)]
        q = [normal.cdf(edges[i + 1] / c) - normal.cdf(edges[i] / c) for i in range(k)]
        wider[str(c)] = round((sum(g2[i] / (k * k * q[i]) for i in range(k)) - mean_g2) / gb, 3)
    return {"model": spec, "weighting": weighting, "bins": k, "per_bin": per_bin, "grads_per_bin": grads,
            "mean_loss": round(mean, 5), "loss_ratio": round(lbest / lb, 3), "grad_ratio": round(gbest / gb, 3),
            "grad_ratio_wider_std": wider,
            # Stratified noise levels (one per stratum of u, as VDM's low-discrepancy sampler) remove the part of
            # the variance that comes from the mean gradient differing between noise levels.
            "grad_ratio_stratified": round((gb - (between - mean_g2)) / gb, 3),
            "bin_mean_loss": [round(v, 4) for v in m1], "bin_grad_sq": [round(v, 4) for v in g2]}


def main() -> None:
    """Print the bound for each model (and a Quickstart run trained --steps steps unless --no-train)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=["builtin:shapes"])
    ap.add_argument("--steps", type=int, default=500, help="train a Quickstart run this long and measure it too")
    ap.add_argument("--no-train", action="store_true")
    ap.add_argument("--bins", type=int, default=20)
    ap.add_argument("--per-bin", type=int, default=256)
    ap.add_argument("--grads", type=int, default=16, help="per-example gradients per bin")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weighting", default="edm", help="the loss weighting of the recipe (the models' own: edm)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        specs = list(args.models)
        if not args.no_train:
            from time_to_quality import quickstart

            from diffusers_cli.jobs.train import train

            specs.append(str(train(quickstart(Path(tmp), "importance", 0, args.steps, False, {})).run_dir))
        for spec in specs:
            row = bin_moments(spec, args.bins, args.per_bin, args.seed, args.weighting, grads=args.grads)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n# {cpu_model()}: the best importance sampler's loss variance relative to today's sampler")
    print("| model | weighting | mean loss | loss variance, best / today | gradient variance, best / today |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['weighting']} | {r['mean_loss']} | {r['loss_ratio']} | {r['grad_ratio']} |")
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_model(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
