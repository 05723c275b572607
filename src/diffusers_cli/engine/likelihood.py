"""Log-likelihood through the probability-flow ODE (Song et al. 2021, app. D; FFJORD, Grathwohl et al. 2019) and bits/dim.

log p_eps(x) = log p_T(x(T)) + int_eps^T div v(x(t), t) dt along the ODE dx/dt = v(x, t) =
f(x, t) - g(t)^2 / 2 score(x, t) started at x(eps) = x. The divergence is the exact trace of
dv/dx (one backward pass per dimension, for small images and tests) or the Skilling-Hutchinson
estimate probe^T (dv/dx) probe with one probe per example held fixed for the whole solve, which
keeps the ODE smooth, so the adaptive RK45 solver does not waste steps, and the estimate unbiased.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from diffusers_cli.engine.choices import Probe, names
from diffusers_cli.engine.ode import dopri5
from diffusers_cli.engine.samplers import probability_flow
from diffusers_cli.engine.score import ScoreFn
from diffusers_cli.engine.sde import SDE

PROBES: tuple[str, ...] = names(Probe)
DataRange = Literal["[-1,1]", "[0,1]"]
#: Width of the data interval of each range: the Jacobian of [0, 1] -> range is width^D.
DATA_RANGES: dict[str, float] = {"[-1,1]": 2.0, "[0,1]": 1.0}
#: Rows of one exact-trace batch (examples x probed dimensions): bounds the memory of probe="exact".
EXACT_TRACE_ROWS = 4096


def _velocity(sde: SDE, score_fn: ScoreFn, x: Tensor, t: float) -> Tensor:
    tv = torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)
    return probability_flow(sde, x, tv, score_fn(x, tv))


def _hutchinson(sde: SDE, score_fn: ScoreFn, x: Tensor, t: float, probe: Tensor) -> tuple[Tensor, Tensor]:
    """Velocity and the estimate probe^T (dv/dx) probe, per example, from one vector-Jacobian product."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        v = _velocity(sde, score_fn, xg, t)
        (vjp,) = torch.autograd.grad(v, xg, probe)
    return v.detach(), (vjp * probe).reshape(x.shape[0], -1).sum(dim=1)


def _exact_trace(sde: SDE, score_fn: ScoreFn, x: Tensor, t: float) -> tuple[Tensor, Tensor]:
    """Velocity and the exact trace of dv/dx: every example repeated once per basis vector it is probed with."""
    b, d = x.shape[0], x[0].numel()
    trace = torch.zeros(b, dtype=x.dtype, device=x.device)
    chunk = max(1, min(d, EXACT_TRACE_ROWS // b))
    v0: Tensor | None = None
    for start in range(0, d, chunk):
        k = min(chunk, d - start)
        # Row (i, j) holds example i probed with basis vector start + j.
        basis = torch.zeros(k, d, dtype=x.dtype, device=x.device)
        basis[torch.arange(k), start + torch.arange(k)] = 1.0
        basis = basis.repeat(b, 1).reshape(b * k, *x.shape[1:])
        with torch.enable_grad():
            xr = x.detach().repeat_interleave(k, dim=0).requires_grad_(True)
            v = _velocity(sde, score_fn, xr, t)
            (vjp,) = torch.autograd.grad(v, xr, basis)
        trace += (vjp * basis).reshape(b, -1).sum(dim=1)
        if v0 is None:
            v0 = v.detach()[::k]
    assert v0 is not None
    return v0, trace


def _probe(kind: str, x: Tensor, generator: torch.Generator | None) -> Tensor | None:
    if kind == "exact":
        return None
    if kind == "gaussian":
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    signs = torch.randint(0, 2, x.shape, generator=generator, device=x.device)
    return (2 * signs - 1).to(x.dtype)


def log_likelihood(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    *,
    generator: torch.Generator | None = None,  # draws the Hutchinson probes
    probe: str = "rademacher",  # "rademacher" or "gaussian" (unbiased estimates) or "exact" (D backward passes)
    rtol: float = 1e-5,  # tolerances of the adaptive RK45 solve (score_sde: 1e-5)
    atol: float = 1e-5,
    eps: float | None = None,  # time the data is taken to live at; None: the SDE's default
) -> Tensor:
    """log p_eps(x) per example [B] in nats, by integrating the probability-flow ODE from eps to T."""
    if probe not in PROBES:
        raise ValueError(f"unknown probe {probe!r}; use one of {list(PROBES)}")
    t0 = sde.eps if eps is None else float(eps)
    if not 0 < t0 < sde.T:
        raise ValueError(f"eps must lie in (0, {sde.T}), got {t0}")
    b, shape = x.shape[0], x.shape
    noise = _probe(probe, x, generator)

    def dynamics(t: float, y: Tensor) -> Tensor:
        xt = y[:, :-1].reshape(shape)
        if noise is None:
            v, div = _exact_trace(sde, score_fn, xt, t)
        else:
            v, div = _hutchinson(sde, score_fn, xt, t, noise)
        return torch.cat([v.reshape(b, -1), div[:, None]], dim=1)

    # The state carries the running integral of the divergence as one extra coordinate.
    y0 = torch.cat([x.detach().reshape(b, -1), torch.zeros(b, 1, dtype=x.dtype, device=x.device)], dim=1)
    y1, _ = dopri5(dynamics, y0, t0, sde.T, rtol=rtol, atol=atol)
    z, delta = y1[:, :-1].reshape(shape), y1[:, -1]
    return sde.prior_logp(z) + delta


# Bits per dimension of 8-bit images (Theis et al. 2016; Ho et al. 2020; Song et al. 2021).
#
# A pixel k in {0, ..., 2^bits - 1} owns the bin [k, k + 1) / 2^bits of [0, 1); the data are
# shown to the model in `range` = [0, 1] or [-1, 1], i.e. z = a y + c with a = width of the range
# (1 or 2), so a bin there has volume (a / 2^bits)^D. A continuous density p on that range
# defines the discrete model P(k) = int_bin(k) p(z) dz = (a / 2^bits)^D E_u[p(z(k, u))] with
# z(k, u) = a (k + u) / 2^bits + c, u ~ U[0, 1)^D, and by Jensen
#     log P(k) >= E_u[log p(z(k, u))] + D log(a / 2^bits).
# So one draw of u (uniform dequantisation) gives an unbiased estimate of an upper bound on
#     bits/dim = -log2 P(k) / D  <=  -log p(z) / (D ln 2) + bits - log2(a),
# the offset being 8 for [0, 1] and 7 for [-1, 1] at 8 bits (score_sde's "7 - inverse_scaler(-1)").


def bpd_offset(data_range: str = "[-1,1]", bits: int = 8) -> float:
    """bits - log2(width of the range): what -log p(z) / (D ln 2) is shifted by to give discrete bits/dim."""
    if data_range not in DATA_RANGES:
        raise ValueError(f"unknown data range {data_range!r}; use one of {list(DATA_RANGES)}")
    if bits < 1:
        raise ValueError(f"bits must be at least 1, got {bits}")
    return bits - math.log2(DATA_RANGES[data_range])


def nats_to_bits_per_dim(log_p: Tensor, dims: int, data_range: str = "[-1,1]", bits: int = 8) -> Tensor:
    """Discrete bits/dim of 2^bits-level data from a continuous log-density (nats) in ``data_range``."""
    return -log_p / (dims * math.log(2.0)) + bpd_offset(data_range, bits)


def uniform_dequantize(
    x: Tensor,
    data_range: str = "[-1,1]",
    bits: int = 8,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Uniform dequantisation: a pixel k / (2^bits - 1) in the range becomes (k + u) / 2^bits, u ~ U[0, 1), in the range."""
    width = DATA_RANGES.get(data_range)
    if width is None:
        raise ValueError(f"unknown data range {data_range!r}; use one of {list(DATA_RANGES)}")
    levels = 2**bits
    low = -1.0 if data_range == "[-1,1]" else 0.0
    # Images are stored as k / (levels - 1) (ToTensor's k / 255), not as bin centres.
    k = torch.round((x - low) / width * (levels - 1)).clamp(0, levels - 1)
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return low + width * (k + u) / levels


def bits_per_dim(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    *,
    data_range: str = "[-1,1]",  # the range the model sees the data in
    dequantize: bool = True,  # add U[0, 1) / 2^bits noise (one draw); False: x is used as is
    bits: int = 8,  # bit depth of the data
    generator: torch.Generator | None = None,  # draws the dequantisation noise, then the probes
    probe: str = "rademacher",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    eps: float | None = None,
) -> Tensor:
    """Bits per dimension of 2^bits-level images x [B, C, H, W] given in ``data_range``, per example [B]."""
    bpd_offset(data_range, bits)  # validate before the expensive solve
    z = uniform_dequantize(x, data_range, bits, generator) if dequantize else x
    log_p = log_likelihood(sde, score_fn, z, generator=generator, probe=probe, rtol=rtol, atol=atol, eps=eps)
    return nats_to_bits_per_dim(log_p, x[0].numel(), data_range, bits)
