"""Network output <-> score: each parameterization's ideal output gives the exact conditional score."""

from __future__ import annotations

import pytest
import torch

from diffusers_cli.engine.losses import dsm_loss
from diffusers_cli.engine.score import PARAMETERIZATIONS, ScoreModel, edm_coefficients, output_to_score
from diffusers_cli.engine.sde import SubVPSDE, VESDE, VPSDE
from diffusers_cli.engine.utils import append_dims


def ideal_output(p: str, x0: torch.Tensor, eps: torch.Tensor, x: torch.Tensor, m: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    m4, s4 = append_dims(m, 4), append_dims(s, 4)
    if p == "eps":
        return eps
    if p == "score":
        return -eps
    if p == "x0":
        return x0
    if p == "v":  # Salimans & Ho's velocity, v = m eps - s x0 (diffusers' v_prediction)
        return m4 * eps - s4 * x0
    c_skip, c_out = edm_coefficients(s / m)
    return (x0 - append_dims(c_skip, 4) * x / m4) / append_dims(c_out, 4)


@pytest.mark.parametrize("p", PARAMETERIZATIONS)
@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE()], ids=["vp", "subvp", "ve"])
def test_ideal_output_is_the_conditional_score(p: str, sde: object) -> None:
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(5, 2, 3, 3, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.tensor([1e-3, 0.1, 0.5, 0.9, 1.0], dtype=torch.float64)
    m, s = sde.marginal(t)
    x = append_dims(m, 4) * x0 + append_dims(s, 4) * eps
    score = output_to_score(ideal_output(p, x0, eps, x, m, s), x, m, s, p)
    assert torch.allclose(score, -eps / append_dims(s, 4), rtol=1e-9, atol=1e-9)


def test_edm_coefficients_limits() -> None:
    c_skip, c_out = edm_coefficients(torch.tensor([1e-4, 0.5, 1e4], dtype=torch.float64))
    assert c_skip[0].item() == pytest.approx(1.0, abs=1e-6) and c_skip[2].item() == pytest.approx(0.0, abs=1e-8)
    assert c_out[1].item() == pytest.approx(0.5 * 0.5 / (0.5**0.5)) and c_out[2].item() == pytest.approx(0.5, rel=1e-6)


def test_edm_loss_is_unit_scaled_at_init() -> None:
    """A zero network under EDM preconditioning has loss E||F_target||^2 ~ 1 at every noise level (data std 0.5)."""

    class Zero(torch.nn.Module):
        def forward(self, x: torch.Tensor, c: torch.Tensor, y: object = None) -> torch.Tensor:
            return torch.zeros_like(x)

    model = ScoreModel(Zero(), VPSDE(), "edm")
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4000, 1, 2, 2, generator=g) * 0.5
    loss = dsm_loss(model, x0, g, "edm")
    assert loss.mean().item() == pytest.approx(1.0, abs=0.05)
