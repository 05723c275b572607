"""Time grids: exact ends, strictly decreasing, and each grid's defining spacing, on every SDE."""

from __future__ import annotations

from conftest import registered_sdes

import pytest
import torch

from diffusers_cli.engine.grids import GRIDS, time_grid
from diffusers_cli.engine.options import OptionError
from diffusers_cli.engine.sde import SDE, VESDE, VPSDE

SDES: dict[str, SDE] = registered_sdes()  # every registered kind (DDPM included) and VP with the cosine schedule
STEPS = 12


def _lam(sde: SDE, ts: torch.Tensor) -> torch.Tensor:
    return sde.log_snr(ts.to(torch.float64))


@pytest.mark.parametrize("sde_name", sorted(SDES))
@pytest.mark.parametrize("kind", sorted(GRIDS))
def test_ends_exact_and_strictly_decreasing(kind: str, sde_name: str) -> None:
    sde = SDES[sde_name]
    ts = time_grid(sde, STEPS, kind)
    assert ts.dtype == torch.float64 and ts.shape == (STEPS + 1,)
    assert float(ts[0]) == sde.T and float(ts[-1]) == sde.eps
    assert bool((ts[1:] < ts[:-1]).all())
    custom = time_grid(sde, 3, kind, eps=0.05)
    assert float(custom[0]) == sde.T and float(custom[-1]) == 0.05


@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_uniform_and_quadratic_spacing(sde_name: str) -> None:
    sde = SDES[sde_name]
    steps = torch.diff(time_grid(sde, STEPS, "uniform"))
    torch.testing.assert_close(steps, torch.full_like(steps, (sde.eps - sde.T) / STEPS))
    roots = torch.diff(time_grid(sde, STEPS, "quadratic").sqrt())
    torch.testing.assert_close(roots, torch.full_like(roots, (sde.eps**0.5 - sde.T**0.5) / STEPS))


@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_logsnr_equal_spacing_in_lambda(sde_name: str) -> None:
    sde = SDES[sde_name]
    lam = _lam(sde, time_grid(sde, STEPS, "logsnr"))
    h = torch.diff(lam)
    assert bool((h > 0).all())
    torch.testing.assert_close(h, torch.full_like(h, float(lam[-1] - lam[0]) / STEPS), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_karras_spacing_formula(sde_name: str) -> None:
    # sigma_i = (s_max^(1/rho) + i / N (s_min^(1/rho) - s_max^(1/rho)))^rho with sigma = exp(-lambda), rho = 7.
    sde, rho = SDES[sde_name], 7.0
    sigma = torch.exp(-_lam(sde, time_grid(sde, STEPS, "karras")))
    s_max, s_min = float(sigma[0]), float(sigma[-1])
    i = torch.arange(STEPS + 1, dtype=torch.float64)
    want = (s_max ** (1 / rho) + i / STEPS * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    torch.testing.assert_close(sigma, want, rtol=1e-6, atol=0.0)
    # The 1/rho-th root of sigma is what is evenly spaced.
    roots = torch.diff(sigma ** (1 / rho))
    torch.testing.assert_close(roots, torch.full_like(roots, float(roots.mean())), rtol=1e-6, atol=0.0)


def test_karras_matches_edm_on_ve_by_hand() -> None:
    # VE has mean 1, so sigma is the std itself: 0.01 * 5000^t; EDM's formula at N = 2 by hand.
    sde = VESDE(sigma_min=0.01, sigma_max=50.0)
    ts = time_grid(sde, 2, "karras", eps=1e-5)
    s_min = 0.01 * 5000.0**1e-5
    mid = ((50.0 ** (1 / 7) + s_min ** (1 / 7)) / 2) ** 7
    std = sde.marginal(ts)[1]
    torch.testing.assert_close(std, torch.tensor([50.0, mid, s_min], dtype=torch.float64), rtol=1e-9, atol=0.0)


def test_bad_arguments_have_clear_messages() -> None:
    sde = VPSDE()
    with pytest.raises(OptionError, match=r"unknown time grid 'cubic'; use one of uniform, quadratic, logsnr, karras"):
        time_grid(sde, 10, "cubic")
    with pytest.raises(OptionError, match="steps must be at least 1, got 0"):
        time_grid(sde, 0)
    with pytest.raises(OptionError, match=r"eps must lie in \(0, 1.0\), got 1.5"):
        time_grid(sde, 10, eps=1.5)
