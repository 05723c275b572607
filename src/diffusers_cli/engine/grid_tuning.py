"""Time grids tuned to one model: the grid that minimises a sampler's error against an accurate solve of the same noise.

The approach follows the optimised-time-step papers (Xue et al. 2024; GITS, Chen et al. 2024)
rather than Align Your Steps' KL bound: the error is measured directly. A small batch of prior
draws x_T is carried to t = eps by an adaptive RK45 solve of the probability-flow ODE at a tight
tolerance (the reference), and a grid scores one of ``engine.grid_objectives.OBJECTIVES`` between
the sampler's batch and the reference (the default is the one that ranks grids as a judge of the
pictures does; see that module). The sampler's own noise is the same stream at every evaluation
(common random numbers), so the objective is a smooth function of the grid and the search is
deterministic.

Both samplers and reference end with the same final denoising step, so only where the steps
fall is measured. A grid is a point of the simplex in normalised log-SNR, u = (lambda(t) -
lambda(T)) / (lambda(eps) - lambda(T)) in [0, 1] (the ends stay where the sampler's default grid
puts them), and the search is a coarse lattice of the simplex, then coordinate-wise: each interior
point in turn by golden-section search between its neighbours, a few rounds, keeping a move only
if it lowers the objective. Derivative-free because the samplers' coefficients are Python floats,
and it needs few evaluations at the step counts that matter (3-10). It starts from the best of the
named grids, the sampler's default among them.

A search can overfit its small batch. So the winner must also beat the default grid on *held-out*
noise (another batch, its own reference solve) by more than the standard error of the difference;
otherwise ``tune`` returns the default grid and says so (``TunedGrid.kept``): a tuned grid never
loses to the default under the objective it was chosen by.

That is not enough for the pictures. The objective measures closeness to the accurate solve, and a few-step
sampler's bias can land nearer the data than the solve itself does (benchmarks/README.md, "grid_seeds": on
``builtin:mnist`` the default 3-step grid is nearer the real digits, by a judge's FD, than 20 steps are), so a grid
nearer the solve can be further from what a judge of the pictures wants. Where such a judge exists, ``judge``
is a third gate: given the winner's times and the default's, it draws both on noise of its own and says whether
the winner may be kept (``parts.judging.grid_check`` judges the pictures against real images); its figures are
returned in ``TunedGrid.judged``.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from diffusers_cli.engine.grid_objectives import DEFAULT_OBJECTIVE, OBJECTIVES, Context, HeldOut, check_objective, held_out
from diffusers_cli.engine.grids import GRIDS, time_grid
from diffusers_cli.engine.options import OptionError
from diffusers_cli.engine.samplers import check_sampler, sample, split_options
from diffusers_cli.engine.score import NFECounter, ScoreFn
from diffusers_cli.engine.sde import SDE

#: Golden-section ratio: each evaluation shrinks the bracket by this factor.
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
#: Interior points never come closer than this (in normalised log-SNR) to a neighbour.
_GAP = 1e-3


@dataclass(frozen=True)
class TunedGrid:
    """A tuned grid and what it cost."""

    times: Tensor  # steps + 1 times, float64, descending, ends as the sampler's default grid
    objective: str  # the name in ``grid_objectives.OBJECTIVES``
    error: float  # the objective at the best grid the search found (on the tuning batch)
    default_error: float  # the objective at the sampler's default grid
    start: str  # the named grid the search started from
    evaluations: int  # objective evaluations (each one sampler run on the batch)
    nfe: int  # score evaluations on the batch, the reference solve included
    reference_nfe: int  # of which the reference solve
    seconds: float
    errors_of_named: dict[str, float] = field(default_factory=dict)  # the objective at each named grid
    held_out: HeldOut | None = None  # the search's winner against the default on other noise (None: no check made)
    kept: bool = False  # whether ``times`` is the tuned grid (True) or the default, unbeaten or not beaten on held-out noise
    judged: dict[str, Any] | None = None  # the ``judge``'s figures (None: no check made)


#: A last test of the search's winner against the default grid: (winner's times, default's times) -> (keep it?,
#: the figures that decided). Called only for a winner that passed the held-out check.
GridCheck = Callable[[Tensor, Tensor], tuple[bool, dict[str, Any]]]

__all__ = ["OBJECTIVES", "GridCheck", "TunedGrid", "evaluation_budget", "lattice_size", "tune", "tune_grid"]


def lattice_size(steps: int, budget: int) -> int:
    """The finest lattice 1/n whose interior grids (C(n - 1, steps - 1) of them) fit in ``budget``; 0 when there is none to search."""
    if steps < 2:
        return 0
    n = 0
    while math.comb(n, steps - 1) <= budget and n < 64:
        n += 1
    # n - 1 is the last size that fitted, as the number of interior lattice points, so the lattice is 1 / n.
    return n if n > steps else 0


def evaluation_budget(steps: int, lattice: int = 80, rounds: int = 3, evaluations_per_point: int = 6) -> int:
    """The most sampler runs ``tune`` makes with these settings (it stops early when a round changes nothing)."""
    points = lattice_size(steps, lattice)
    return 1 + len(GRIDS) + (math.comb(points - 1, steps - 1) if points else 0) + rounds * max(steps - 1, 0) * evaluations_per_point


def tune(
    sde: SDE,
    score_fn: ScoreFn,
    shape: tuple[int, ...],
    sampler: str,
    steps: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    eps: float | None = None,
    final_denoise: bool = True,
    rounds: int = 3,
    evaluations_per_point: int = 6,
    reference_tol: float = 1e-4,
    lattice: int = 80,
    objective: str | None = None,
    holdout: int = 64,
    holdout_score_fn: ScoreFn | None = None,
    judge: GridCheck | None = None,
    progress: Callable[[int, float], None] | None = None,
    **options: Any,
) -> TunedGrid:
    """Search the grid of ``steps`` intervals that minimises ``sampler``'s error on a batch of ``shape`` (see module).

    ``options`` are the sampler's options (not a grid's). The cost is bounded: at most
    ``len(GRIDS) + 1 + lattice + rounds * (steps - 1) * evaluations_per_point`` sampler runs on the
    batch (``lattice``: the budget of the coarse global stage, 0 to skip it), plus the reference solve.
    ``holdout`` images of other noise (scored by ``holdout_score_fn``, default ``score_fn``; a guided
    score is per image) check the winner against the default grid: two more sampler runs and a
    reference solve; 0 skips the check and keeps whatever the search found. ``judge`` (see module) has the last
    word on a winner the held-out check kept.
    ``progress(evaluations, best_error)`` is called after each evaluation.
    """
    spec = check_sampler(sampler)
    if steps < 1:
        raise OptionError(f"steps must be at least 1, got {steps}")
    if sampler == "ode":
        raise OptionError("the ode sampler chooses its own steps (only the grid's ends matter): there is no grid to tune")
    if rounds < 0 or evaluations_per_point < 1 or holdout < 0:
        raise OptionError("rounds and holdout must be >= 0 and evaluations_per_point >= 1")
    _, sampler_opts, grid_opts = split_options(sampler, None, options)
    if grid_opts:
        raise OptionError(f"a tuned grid takes no grid options ({', '.join(grid_opts)})")
    start_time = time.perf_counter()
    end = sde.eps if eps is None else float(eps)
    with torch.no_grad():
        x_T = sde.prior_sample(tuple(shape), generator, device)
    noise_seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    counter = NFECounter(score_fn)

    def run(ts: Tensor | None, name: str = "ode", x_init: Tensor = x_T, fn: ScoreFn = counter, **opts: Any) -> Tensor:
        # The sampler's own noise is the same stream every time (common random numbers).
        gen = torch.Generator(device=x_init.device).manual_seed(noise_seed)
        return sample(sde, fn, x_init.shape, name, steps if ts is not None else 1, gen, device=x_init.device,
                      dtype=x_init.dtype, grid=ts, eps=end, final_denoise=final_denoise, x_init=x_init, **opts)

    reference = run(None, rtol=reference_tol, atol=reference_tol)
    reference_nfe = counter.nfe
    default = time_grid(sde, steps, spec.grid, end)
    first = run(default, sampler, **sampler_opts)
    # A sampler is stochastic when the same x_T with another noise stream ends elsewhere.
    other = sample(sde, counter, x_T.shape, sampler, steps, torch.Generator(device=x_T.device).manual_seed(noise_seed + 1),
                   device=x_T.device, dtype=x_T.dtype, grid=default, final_denoise=final_denoise, x_init=x_T, **sampler_opts)
    stochastic = not torch.equal(first, other)
    if objective is None:
        objective = DEFAULT_OBJECTIVE if not (stochastic and OBJECTIVES[DEFAULT_OBJECTIVE].per_sample) else "moments"
    try:
        chosen = check_objective(objective, stochastic)
    except ValueError as err:
        raise OptionError(str(err)) from None
    ctx = Context(sde, score_fn)

    def measure(x: Tensor, ref: Tensor) -> float:
        return chosen(x, ref, ctx)

    evaluations = 2

    lam_T, lam_end = (float(v) for v in sde.log_snr(torch.tensor([sde.T, end], dtype=torch.float64)))

    def to_times(u: list[float]) -> Tensor:
        lam = torch.tensor([lam_T + v * (lam_end - lam_T) for v in u], dtype=torch.float64)
        ts = sde.t_from_log_snr(lam)
        ts[0], ts[-1] = float(default[0]), float(default[-1])
        return ts

    def to_u(ts: Tensor) -> list[float]:
        u = ((sde.log_snr(ts) - lam_T) / (lam_end - lam_T)).tolist()
        u[0], u[-1] = 0.0, 1.0
        return u

    def score(u: list[float]) -> float:
        nonlocal evaluations
        evaluations += 1
        err = measure(run(to_times(u), sampler, **sampler_opts), reference)
        if progress is not None:
            progress(evaluations, min(err, best_err))
        return err if math.isfinite(err) else math.inf

    default_err = measure(first, reference)
    # The best grid's own times are kept (not its round trip through u), so an unbeaten default comes back exactly.
    best_err, best_u, best_ts, start = default_err, to_u(default), default, spec.grid
    named: dict[str, float] = {spec.grid: default_err}
    for kind in GRIDS:
        if kind == spec.grid:
            continue
        ts = time_grid(sde, steps, kind, end)
        u = to_u(ts)
        if not all(b - a > 0 for a, b in zip(u, u[1:])):
            continue  # a grid that collapses at this step count (not monotone in log-SNR) cannot start a search
        err = score(u)
        named[kind] = err
        if err < best_err:
            best_err, best_u, best_ts, start = err, u, ts, kind

    # A coarse lattice of the whole simplex first: the objective has several basins (a step placed
    # where the modes separate, or not), and the local search below only finds the nearest one.
    points = lattice_size(steps, lattice)
    if points:
        for inner in itertools.combinations(range(1, points), steps - 1):
            u = [0.0, *(k / points for k in inner), 1.0]
            err = score(u)
            if err < best_err:
                best_err, best_u, start = err, u, f"lattice 1/{points}"
                best_ts = to_times(best_u)

    for _ in range(rounds):
        improved = False
        for i in range(1, steps):
            lo, hi = best_u[i - 1] + _GAP, best_u[i + 1] - _GAP
            if hi <= lo:
                continue
            a, b = lo, hi
            c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
            fc, fd = score(best_u[:i] + [c] + best_u[i + 1:]), score(best_u[:i] + [d] + best_u[i + 1:])
            for _ in range(evaluations_per_point - 2):
                if fc < fd:
                    b, d, fd = d, c, fc
                    c = b - _GOLDEN * (b - a)
                    fc = score(best_u[:i] + [c] + best_u[i + 1:])
                else:
                    a, c, fc = c, d, fd
                    d = a + _GOLDEN * (b - a)
                    fd = score(best_u[:i] + [d] + best_u[i + 1:])
            v, fv = (c, fc) if fc < fd else (d, fd)
            if fv < best_err:
                best_err, best_u, improved = fv, best_u[:i] + [v] + best_u[i + 1:], True
                best_ts = to_times(best_u)
        if not improved:
            break

    held: HeldOut | None = None
    kept = best_ts is not default
    if kept and holdout:
        # Other noise, its own accurate solve: the winner must beat the default there by more than the noise in that gap.
        other_fn = NFECounter(holdout_score_fn or score_fn)
        with torch.no_grad():
            x_H = sde.prior_sample((holdout, *tuple(shape)[1:]), generator, device)
        ref_H = run(None, x_init=x_H, fn=other_fn, rtol=reference_tol, atol=reference_tol)
        tuned_H = run(best_ts, sampler, x_init=x_H, fn=other_fn, **sampler_opts)
        default_H = run(default, sampler, x_init=x_H, fn=other_fn, **sampler_opts)
        held = held_out(chosen, tuned_H, default_H, ref_H, Context(sde, other_fn))
        counter.nfe += other_fn.nfe
        kept = held.kept
    judged: dict[str, Any] | None = None
    if kept and judge is not None:
        kept, judged = judge(best_ts, default)
    return TunedGrid(best_ts if kept else default, objective, best_err, default_err, start, evaluations,
                     counter.nfe, reference_nfe, time.perf_counter() - start_time, named, held, kept, judged)


def tune_grid(sde: SDE, score_fn: Callable[[Tensor, Tensor], Tensor], shape: tuple[int, ...], sampler: str, steps: int,
              *, generator: torch.Generator | None = None, **options: Any) -> Tensor:
    """The ``steps + 1`` times that minimise ``sampler``'s error on this score (``tune``, which also reports its cost)."""
    return tune(sde, score_fn, shape, sampler, steps, generator=generator, **options).times
