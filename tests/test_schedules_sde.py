"""Schedules against their formulas; SDE marginals against a simulated forward process."""

from __future__ import annotations

import math

import pytest
import torch

from diffusers_cli.engine.schedules import CosineSchedule, LinearSchedule
from diffusers_cli.engine.sde import DDPM, SDE, SubVPSDE, VESDE, VPSDE

T64 = torch.float64


def test_linear_schedule_matches_ddpm_betas() -> None:
    betas = LinearSchedule().discrete_betas(1000)
    assert betas[0].item() == pytest.approx(1e-4, rel=1e-12)
    assert betas[-1].item() == pytest.approx(0.02, rel=1e-12)
    ref = torch.linspace(1e-4, 0.02, 1000, dtype=T64)  # Ho et al. 2020
    assert torch.allclose(betas, ref, rtol=1e-12, atol=0)


def test_linear_integral_and_inverse() -> None:
    s = LinearSchedule(0.1, 20.0)
    t = torch.linspace(0, 1, 101, dtype=T64)
    assert torch.allclose(s.integral(t), 0.1 * t + 0.5 * 19.9 * t**2, atol=1e-12)
    assert torch.allclose(s.inverse_integral(s.integral(t)), t, atol=1e-12)
    # B' = beta, checked by a central difference.
    h = 1e-6
    mid = torch.tensor([0.3, 0.7], dtype=T64)
    assert torch.allclose((s.integral(mid + h) - s.integral(mid - h)) / (2 * h), s.beta(mid), rtol=1e-7)


def test_cosine_schedule_formula_and_clip() -> None:
    s = CosineSchedule()
    t = torch.tensor([0.0, 0.25, 0.5, 0.75], dtype=T64)
    f = lambda u: torch.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731  Nichol & Dhariwal eq. 17
    assert torch.allclose(s.alpha_bar(t), f(t) / f(torch.zeros(1, dtype=T64)), rtol=1e-10)
    betas = s.discrete_betas(1000)
    assert betas.max().item() == pytest.approx(0.999)
    assert (betas[:-10] < 0.999).all()
    ab = s.discrete_alpha_bars(1000)
    assert ab[499].item() == pytest.approx((f(torch.tensor(0.5, dtype=T64)) / f(torch.tensor(0.0, dtype=T64))).item(), rel=1e-9)
    # Continuous rate is capped, finite, and the inverse round-trips everywhere including past the cap.
    tt = torch.tensor([0.1, 0.6, 0.9999, 1.0], dtype=T64)
    assert torch.isfinite(s.integral(tt)).all()
    assert torch.allclose(s.inverse_integral(s.integral(tt)), tt, atol=1e-9)


SDES = {
    "ve": VESDE(),
    "vp": VPSDE(),
    "subvp": SubVPSDE(),
    "vp-cosine": VPSDE(CosineSchedule()),
    "ddpm": DDPM(),
}


@pytest.mark.parametrize("name", list(SDES))
def test_log_snr_inverse(name: str) -> None:
    sde = SDES[name]
    t = torch.linspace(sde.eps, 1.0, 50, dtype=T64)
    lam = sde.log_snr(t)
    assert (lam[1:] < lam[:-1]).all()
    assert torch.allclose(sde.t_from_log_snr(lam), t, atol=1e-7)


@pytest.mark.parametrize("name", list(SDES))
def test_marginal_matches_simulated_forward_sde(name: str) -> None:
    """Simulate dx = f dt + g dw from x0 = 1.5 with fine Euler-Maruyama steps; compare mean and std at t = 0.5."""
    sde: SDE = SDES[name]
    g = torch.Generator().manual_seed(0)
    n, steps, t_end, t_start = 20000, 400, 0.5, 0.0
    x0 = 1.5
    x = torch.full((n, 1, 1, 1), x0, dtype=T64)
    ts = torch.linspace(t_start, t_end, steps + 1, dtype=T64)
    for i in range(steps):
        t = ts[i].expand(n)
        dt = ts[i + 1] - ts[i]
        f, gg = sde.drift_diffusion(x, t)
        x = x + f * dt + gg.reshape(-1, 1, 1, 1) * dt.sqrt() * torch.randn(x.shape, generator=g, dtype=T64)
    m1, s1 = sde.marginal(torch.tensor([t_end], dtype=T64))
    m0, s0 = sde.marginal(torch.tensor([t_start], dtype=T64))
    # From a point mass at t_start: mean = (m1/m0) x0, var = s1^2 - (m1/m0)^2 s0^2 (the exact transition).
    a, b = sde.transition(torch.tensor([t_start], dtype=T64), torch.tensor([t_end], dtype=T64))
    assert a.item() == pytest.approx((m1 / m0).item(), rel=1e-12)
    se_mean = b.item() / math.sqrt(n)
    assert x.mean().item() == pytest.approx(a.item() * x0, abs=4 * se_mean + 2e-3)
    assert x.std().item() == pytest.approx(b.item(), rel=0.03)


def test_known_marginals() -> None:
    t = torch.tensor([0.5], dtype=T64)
    m, s = VESDE(0.01, 50.0).marginal(t)
    assert m.item() == 1.0 and s.item() == pytest.approx(0.01 * 5000**0.5)
    m, s = VPSDE().marginal(t)
    b = 0.1 * 0.5 + 0.5 * 19.9 * 0.25
    assert m.item() == pytest.approx(math.exp(-b / 2)) and s.item() == pytest.approx(math.sqrt(1 - math.exp(-b)))
    m, s = SubVPSDE().marginal(t)
    assert s.item() == pytest.approx(1 - math.exp(-b))


def test_ddpm_is_the_discrete_chain() -> None:
    sde = DDPM()
    ab = LinearSchedule().discrete_alpha_bars(1000)
    i = torch.tensor([1, 10, 500, 1000])
    m, s = sde.marginal(i.to(T64) / 1000)
    assert torch.allclose(m**2, ab[i - 1], rtol=1e-10)
    assert torch.allclose(s**2, 1 - ab[i - 1], rtol=1e-10)
    t = sde.train_times(1000, torch.Generator().manual_seed(0), "cpu")
    k = t * 1000
    assert torch.allclose(k, k.round()) and k.min() >= 1 and k.max() <= 1000


def test_prior_logp_is_the_gaussian_density() -> None:
    sde = VESDE()
    z = torch.randn(3, 2, 2, 2, generator=torch.Generator().manual_seed(1), dtype=T64)
    ref = torch.distributions.Normal(0.0, sde.prior_std()).log_prob(z).flatten(1).sum(1)
    assert torch.allclose(sde.prior_logp(z), ref, atol=1e-10)


def test_invalid_parameters() -> None:
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        VESDE(1.0, 0.5)
    with pytest.raises(ValueError, match="beta_min < beta_max"):
        LinearSchedule(2.0, 1.0)


@pytest.mark.parametrize("sde", [VESDE(), VPSDE(LinearSchedule()), VPSDE(CosineSchedule())], ids=["ve", "vp", "vp-cos"])
def test_lognormal_times_give_lognormal_sigma(sde: SDE) -> None:
    # ln(std/mean) of the drawn times must be N(p_mean, p_std^2), except for the draws clamped to [eps, T].
    t = sde.lognormal_times(200_000, torch.Generator().manual_seed(0), "cpu", p_mean=-0.4, p_std=0.8)
    assert float(t.min()) >= sde.eps and float(t.max()) <= sde.T
    log_sigma = -sde.log_snr(t.double())
    lo, hi = float(-sde.log_snr(torch.tensor(sde.eps, dtype=torch.float64))), float(-sde.log_snr(torch.tensor(sde.T, dtype=torch.float64)))
    inside = log_sigma[(log_sigma > lo + 1e-3) & (log_sigma < hi - 1e-3)]
    assert len(inside) > 0.99 * len(t)  # +-3.4 std of N(-0.4, 0.8) lies within every SDE's range
    assert float(inside.mean()) == pytest.approx(-0.4, abs=0.01)
    assert float(inside.std()) == pytest.approx(0.8, abs=0.01)
