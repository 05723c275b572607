"""Probability-flow likelihood and bits/dim against closed-form densities and hand-computed offsets."""

from __future__ import annotations

from conftest import registered_sdes

import math
import re
from collections.abc import Iterator

import pytest
import torch
from torch import Tensor

from diffusers_cli.engine.analytic import GaussianMixture, gaussian
from diffusers_cli.engine.likelihood import (
    bits_per_dim,
    bpd_offset,
    log_likelihood,
    nats_to_bits_per_dim,
    uniform_dequantize,
)
from diffusers_cli.engine.ode import dopri5
from diffusers_cli.engine.samplers import probability_flow
from diffusers_cli.engine.score import ScoreFn
from diffusers_cli.engine.sde import SDE

SDES: dict[str, SDE] = registered_sdes()  # every registered kind (DDPM included) and VP with the cosine schedule
SHAPE = (1, 4, 4)
D = 16
MEAN = torch.linspace(-0.8, 0.8, D, dtype=torch.float64).reshape(SHAPE)
VAR = torch.logspace(-2.0, -0.5, D, dtype=torch.float64).reshape(SHAPE)
GAUSS = gaussian(MEAN, VAR)
MIXTURE = GaussianMixture(
    torch.stack([MEAN - 0.3, MEAN.flip(-1) + 0.3]),
    torch.stack([VAR, VAR.flip(-1)]),
    torch.tensor([0.3, 0.7]),
)
BPD = D * math.log(2.0)  # nats per bit/dim


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Small tensors: a second intra-op thread only adds contention on a shared 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _eps_vec(sde: SDE, n: int) -> Tensor:
    return torch.full((n,), sde.eps, dtype=torch.float64)


def _gaussian_flow_log_likelihood(sde: SDE, x: Tensor) -> Tensor:
    """What the ODE computes for GAUSS, exactly: log p_eps(x) - log p_T(x_T) + prior_logp(x_T).

    The Gaussian's flow map is linear, x_T = m_T mean + (x - m_eps mean) sqrt(v_T / v_eps) per
    pixel, so the prior's small mismatch with p_T can be accounted for and the check made tight.
    """
    m_e, s_e = sde.marginal(torch.tensor(sde.eps, dtype=torch.float64))
    m_T, s_T = sde.marginal(torch.tensor(sde.T, dtype=torch.float64))
    x_T = m_T * MEAN + (x - m_e * MEAN) * ((m_T**2 * VAR + s_T**2) / (m_e**2 * VAR + s_e**2)).sqrt()
    t_T = torch.full((len(x),), sde.T, dtype=torch.float64)
    return GAUSS.log_prob(x, sde, _eps_vec(sde, len(x))) - GAUSS.log_prob(x_T, sde, t_T) + sde.prior_logp(x_T)


#: DDPM's beta is piecewise constant in t (1000 steps), so the flow's drift has 1000 kinks that the adaptive
#: solver (rtol 1e-5) steps across: 3.3e-3 nats off on one of these points, against < 2e-3 on the smooth SDEs.
FLOW_ATOL = {"ddpm": 5e-3}


@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_exact_trace_is_the_change_of_variables_of_the_flow(sde_name: str) -> None:
    sde = SDES[sde_name]
    x = GAUSS.sample(4, torch.Generator().manual_seed(0))[0].double()
    got = log_likelihood(sde, GAUSS.score_fn(sde), x, probe="exact")
    torch.testing.assert_close(got, _gaussian_flow_log_likelihood(sde, x), rtol=0.0, atol=FLOW_ATOL.get(sde_name, 2e-3))


def _flow_endpoint(sde: SDE, score_fn: ScoreFn, x: Tensor) -> Tensor:
    """x(T) of the probability-flow ODE started at x(eps) = x, solved without the trace (and more tightly than the engine)."""

    def velocity(t: float, y: Tensor) -> Tensor:
        tv = torch.full((y.shape[0],), t, dtype=y.dtype)
        return probability_flow(sde, y, tv, score_fn(y, tv))

    return dopri5(velocity, x.clone(), sde.eps, sde.T, rtol=1e-6, atol=1e-6)[0]


#: The engine's own solve (rtol 1e-5) over DDPM's 1000 kinks: 1.1e-2 nats off on the mixture, 3.4e-3 on the Gaussian.
DENSITY_ATOL = {"ddpm": 1.5e-2}


@pytest.mark.parametrize("sde_name", sorted(SDES))
@pytest.mark.parametrize("dist", ["gaussian", "mixture"])
def test_exact_trace_matches_closed_form_density(dist: str, sde_name: str) -> None:
    # Against log p_eps(x) itself, corrected for the one thing that separates them: the flow ends in the prior, not in
    # p_T, so the ODE gives log p_eps(x) - log p_T(x_T) + prior_logp(x_T). That mismatch is 2e-2 to 1e-1 nats here (VE:
    # 9e-3 bits/dim); what is left is the solver's error, < 2e-3 nats (2e-4 bits/dim) on the smooth SDEs.
    sde, target = SDES[sde_name], GAUSS if dist == "gaussian" else MIXTURE
    x = target.sample(4, torch.Generator().manual_seed(1))[0].double()
    got = log_likelihood(sde, target.score_fn(sde), x, probe="exact")
    x_T = _flow_endpoint(sde, target.score_fn(sde), x)
    t_T = torch.full((4,), sde.T, dtype=torch.float64)
    want = target.log_prob(x, sde, _eps_vec(sde, 4)) - target.log_prob(x_T, sde, t_T) + sde.prior_logp(x_T)
    torch.testing.assert_close(got, want, rtol=0.0, atol=DENSITY_ATOL.get(sde_name, 2e-3))


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(probe: str) -> None:
    # The same point 256 times, each row with its own probe held for the whole solve: the mean of
    # the estimates must match the exact trace within 4 standard errors.
    sde = SDES["vp"]
    x = MIXTURE.sample(1, torch.Generator().manual_seed(2))[0].double()
    exact = float(log_likelihood(sde, MIXTURE.score_fn(sde), x, probe="exact"))
    rows = x.expand(256, *SHAPE).clone()
    est = log_likelihood(sde, MIXTURE.score_fn(sde), rows, probe=probe, generator=torch.Generator().manual_seed(3))
    se = float(est.std()) / math.sqrt(len(est))
    assert se > 1e-3  # the mixture's Jacobian is not diagonal: the estimator really is random
    assert abs(float(est.mean()) - exact) < 4.0 * se


def test_rademacher_probe_is_exact_for_a_diagonal_jacobian() -> None:
    # z^T A z = tr A for z in {-1, 1}^D when A is diagonal, as for a diagonal Gaussian's flow.
    sde = SDES["ve"]
    x = GAUSS.sample(3, torch.Generator().manual_seed(4))[0].double()
    exact = log_likelihood(sde, GAUSS.score_fn(sde), x, probe="exact")
    rad = log_likelihood(sde, GAUSS.score_fn(sde), x, probe="rademacher", generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(rad, exact, rtol=0.0, atol=1e-6)


def test_offsets_by_hand() -> None:
    # [0, 1] has bins of width 1/256: 8 bits; [-1, 1] has bins twice as wide: one bit less.
    assert bpd_offset("[0,1]", 8) == 8.0
    assert bpd_offset("[-1,1]", 8) == 7.0
    assert bpd_offset("[-1,1]", 5) == 4.0
    # The uniform density on [-1, 1]^D, p = 2^-D, gives every 8-bit image probability 256^-D: 8 bits/dim.
    log_p = torch.tensor([-D * math.log(2.0)])
    torch.testing.assert_close(nats_to_bits_per_dim(log_p, D, "[-1,1]", 8), torch.tensor([8.0]))
    # ... and the uniform density on [0, 1]^D, p = 1, too.
    torch.testing.assert_close(nats_to_bits_per_dim(torch.zeros(1), D, "[0,1]", 8), torch.tensor([8.0]))


def test_bits_per_dim_at_the_mean_by_hand() -> None:
    # At the mean of p_eps, x = m mean, log p_eps(x) = -1/2 sum_i log(2 pi v_i(eps)), v_i(eps) = m^2 v_i + s^2.
    sde = SDES["vp"]
    m, s = sde.marginal(torch.tensor(sde.eps, dtype=torch.float64))
    x = (m * MEAN)[None]
    by_hand = -0.5 * torch.log(2 * math.pi * (m * m * VAR + s * s)).sum()
    flow = _gaussian_flow_log_likelihood(sde, x)
    assert float(GAUSS.log_prob(x, sde, _eps_vec(sde, 1))) == pytest.approx(float(by_hand), rel=1e-12)
    # ... plus the prior's mismatch with p_T, which the flow carries (a few 1e-3 nats here).
    want = float(-(by_hand + flow - GAUSS.log_prob(x, sde, _eps_vec(sde, 1))) / BPD + 7.0)
    got = bits_per_dim(sde, GAUSS.score_fn(sde), x, dequantize=False, probe="exact")
    assert float(got) == pytest.approx(want, abs=2e-4)


def test_dequantized_bits_per_dim_uses_the_dequantized_points() -> None:
    # bits_per_dim draws the dequantisation noise first from the generator: the same seed gives the same points.
    sde = SDES["vp"]
    pixels = torch.round((GAUSS.sample(3, torch.Generator().manual_seed(6))[0].double() + 1.0) / 2.0 * 255.0)
    x = pixels.clamp(0, 255) / 255.0 * 2.0 - 1.0  # 8-bit images near the density's mass, stored as k / 255
    z = uniform_dequantize(x, "[-1,1]", 8, torch.Generator().manual_seed(7))
    assert not torch.equal(z, x)
    want = -_gaussian_flow_log_likelihood(sde, z) / BPD + 7.0
    got = bits_per_dim(sde, GAUSS.score_fn(sde), x, probe="exact", generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(got, want, rtol=0.0, atol=2e-4)


@pytest.mark.parametrize("data_range", ["[-1,1]", "[0,1]"])
def test_dequantization_fills_each_pixels_own_bin(data_range: str) -> None:
    k = torch.arange(256, dtype=torch.float64).reshape(1, 1, 16, 16).expand(64, 1, 16, 16)
    low, width = (-1.0, 2.0) if data_range == "[-1,1]" else (0.0, 1.0)
    x = low + width * k / 255.0  # how images are stored: k / 255, scaled to the range
    z = uniform_dequantize(x, data_range, 8, torch.Generator().manual_seed(8))
    u = (z - low) / width * 256.0 - k  # the offset inside bin [k, k + 1) / 256
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    assert abs(float(u.mean()) - 0.5) < 4.0 * math.sqrt(1 / 12 / u.numel())


def test_bad_arguments_have_clear_messages() -> None:
    sde, x = SDES["vp"], torch.zeros(1, *SHAPE)
    with pytest.raises(ValueError, match=re.escape("unknown probe 'hutch'; use one of ['rademacher', 'gaussian', 'exact']")):
        log_likelihood(sde, GAUSS.score_fn(sde), x, probe="hutch")
    with pytest.raises(ValueError, match=re.escape("unknown data range '[0,255]'; use one of ['[-1,1]', '[0,1]']")):
        bits_per_dim(sde, GAUSS.score_fn(sde), x, data_range="[0,255]")
    with pytest.raises(ValueError, match=re.escape("eps must lie in (0, 1.0), got 0.0")):
        log_likelihood(sde, GAUSS.score_fn(sde), x, eps=0.0)
