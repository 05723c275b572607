"""Adaptive Dormand-Prince RK5(4) with FSAL and a PI step-size controller (Hairer, Norsett & Wanner, DOPRI5), in torch.

The state is one tensor whose first dimension is the batch. All examples share the step,
but the error is controlled per example (the largest per-example RMS error must be <= 1),
so no example is integrated less accurately because the others are easy. Everything stays
on the state's device and dtype: no numpy or scipy round trip per step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

#: dy/dt = fn(t, y): t a Python float, y [B, ...]; returns a tensor shaped like y.
OdeFn = Callable[[float, Tensor], Tensor]
#: Called after each accepted step as on_step(i, t, y, dydt, stats); may return a replacement y.
StepHook = Callable[[int, float, Tensor, Tensor, "OdeStats"], "Tensor | None"]

# Dormand & Prince (1980) RK5(4)7M tableau: nodes, stage weights, 5th-order weights and
# the difference between the 5th- and 4th-order weights (the error estimate).
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
)
_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)
_E = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)

# Step-size control constants of Hairer's dopri5.f.
_SAFETY = 0.9
_MIN_FACTOR = 0.2  # a step shrinks at most 5x
_MAX_FACTOR = 10.0  # and grows at most 10x
_BETA = 0.04  # PI (Lund) stabilisation; 0 gives the classical controller
_EXPO = 0.2 - 0.75 * _BETA


@dataclass
class OdeStats:
    """What an adaptive solve cost: score evaluations, accepted and rejected steps."""

    nfe: int = 0
    accepted: int = 0
    rejected: int = 0


def _error_norm(err: Tensor, y0: Tensor, y1: Tensor, rtol: float, atol: float) -> float:
    """Largest per-example RMS of the error scaled by atol + rtol max(|y0|, |y1|)."""
    scale = atol + rtol * torch.maximum(y0.abs(), y1.abs())
    ratio = (err / scale).reshape(err.shape[0], -1)
    return float(ratio.pow(2).mean(dim=1).sqrt().max())


def _rms(v: Tensor) -> float:
    return float(v.reshape(v.shape[0], -1).pow(2).mean(dim=1).sqrt().max())


def _initial_step(fn: OdeFn, t0: float, y0: Tensor, f0: Tensor, direction: float, span: float, rtol: float, atol: float) -> float:
    """Hairer's starting step: a 5th-order guess from the first two derivatives (costs 1 evaluation)."""
    scale = atol + rtol * y0.abs()
    d0, d1 = _rms(y0 / scale), _rms(f0 / scale)
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    h0 = min(h0, span)
    f1 = fn(t0 + direction * h0, y0 + direction * h0 * f0)
    d2 = _rms((f1 - f0) / scale) / h0
    h1 = max(1e-6, h0 * 1e-3) if max(d1, d2) <= 1e-15 else (0.01 / max(d1, d2)) ** 0.2
    return min(100.0 * h0, h1, span)


def dopri5(
    fn: OdeFn,
    y0: Tensor,
    t0: float,
    t1: float,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    first_step: float | None = None,
    max_steps: int = 100_000,
    on_step: StepHook | None = None,
) -> tuple[Tensor, OdeStats]:
    """Integrate dy/dt = fn(t, y) from t0 to t1 (either direction); returns y(t1) and the cost."""
    if rtol <= 0 or atol <= 0:
        raise ValueError(f"need rtol > 0 and atol > 0, got {rtol}, {atol}")
    stats = OdeStats()

    def f(t: float, y: Tensor) -> Tensor:
        stats.nfe += 1
        return fn(t, y)

    span = abs(t1 - t0)
    direction = math.copysign(1.0, t1 - t0)
    t, y = float(t0), y0
    if span == 0.0:
        return y, stats
    k1 = f(t, y)
    h = abs(first_step) if first_step is not None else _initial_step(f, t, y, k1, direction, span, rtol, atol)
    fac_old, last_rejected = 1e-4, False
    while True:
        if stats.accepted + stats.rejected >= max_steps:
            raise RuntimeError(f"ODE solve did not reach t={t1} in {max_steps} steps (stopped at t={t})")
        last = abs(t1 - t) <= h * (1.0 + 1e-12)
        if last:
            h = abs(t1 - t)
        if h <= 1e-14 * max(1.0, abs(t)):
            raise RuntimeError(f"ODE step size underflow at t={t}; the vector field is not smooth there")
        dt = direction * h
        ks = [k1]
        for i in range(1, 6):
            yi = y + dt * sum(a * k for a, k in zip(_A[i], ks) if a != 0.0)
            ks.append(f(t + _C[i] * dt, yi))
        y_new = y + dt * sum(b * k for b, k in zip(_B, ks) if b != 0.0)
        t_new = t1 if last else t + dt
        k7 = f(t_new, y_new)  # first stage of the next step (FSAL)
        ks.append(k7)
        err = dt * sum(e * k for e, k in zip(_E, ks) if e != 0.0)
        err_norm = _error_norm(err, y, y_new, rtol, atol)
        if not math.isfinite(err_norm):
            raise RuntimeError(f"ODE solve produced non-finite values at t={t}")
        fac11 = err_norm**_EXPO
        if err_norm <= 1.0:
            # PI controller: the new factor also remembers the previous accepted error.
            fac = fac11 / fac_old**_BETA
            factor = min(1 / _MIN_FACTOR, max(1 / _MAX_FACTOR, fac / _SAFETY))
            h_new = h / factor
            if last_rejected:  # do not grow right after a rejection
                h_new = min(h_new, h)
            fac_old = max(err_norm, 1e-4)
            stats.accepted += 1
            t, y, k1 = t_new, y_new, k7
            last_rejected = False
            if on_step is not None:
                replaced = on_step(stats.accepted - 1, t, y, k1, stats)
                if replaced is not None and replaced is not y:
                    y, k1 = replaced, f(t, replaced)
            if last:
                return y, stats
            h = h_new
        else:
            stats.rejected += 1
            h = h / min(1 / _MIN_FACTOR, fac11 / _SAFETY)
            last_rejected = True
