"""Classifier guidance against Gaussian mixtures whose noise-aware classifier p_t(y | x) is exact."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import Tensor, nn

from diffusers_cli.engine.analytic import GaussianMixture
from diffusers_cli.engine.guidance import classifier_fn, classifier_log_prob_grad, guided
from diffusers_cli.engine.samplers import sample
from diffusers_cli.engine.score import SIGMA_DATA
from diffusers_cli.engine.sde import VESDE, VPSDE


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # Small tensors: on a shared 2-core machine intra-op threads cost more than they save.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def exact_classifier(gm: GaussianMixture, sde: VPSDE):
    """log w_k N(x; component k of p_t): logits whose softmax is the exact p_t(y | x)."""
    return lambda x, t: gm.component_log_probs(x, sde, t)


def overlapping() -> GaussianMixture:
    """1-d: 0.7 N(-1, 0.5) + 0.3 N(1, 0.5); the components overlap, so p(y | x) is far from 0/1."""
    return GaussianMixture(torch.tensor([-1.0, 1.0]).reshape(2, 1, 1, 1), torch.tensor(0.5), torch.tensor([0.7, 0.3]))


def tilted_theory(gm: GaussianMixture, y: int, scale: float) -> tuple[float, float]:
    """E[p(y | x)] and E[x] under p(x) p(y | x)^scale / Z at t = 0, by quadrature on a fine 1-d grid."""
    xs = torch.linspace(-10.0, 10.0, 40001, dtype=torch.float64).reshape(-1, 1, 1, 1)
    post = gm.class_posterior(xs)[:, y]
    w = torch.softmax(gm.log_prob(xs) + scale * torch.log(post), dim=0)
    return float((w * post).sum()), float((w * xs.flatten()).sum())


def guided_draws(gm: GaussianMixture, y: Tensor | int, scale: float, n: int, seed: int = 0) -> Tensor:
    sde = VPSDE()
    score = guided(gm.score_fn(sde), exact_classifier(gm, sde), y, scale)
    return sample(sde, score, (n, *gm.shape), "em", 100, torch.Generator().manual_seed(seed))


def test_scale_one_separated_components_samples_the_class_conditional() -> None:
    mu = torch.full((1, 2, 2), 1.5)
    gm = GaussianMixture(torch.stack([mu, -mu]), torch.tensor(0.1))
    x = guided_draws(gm, 1, 1.0, 2000)
    labels = gm.class_posterior(x).argmax(dim=1)
    assert float((labels == 1).double().mean()) > 0.995
    flat = x.flatten(1).double()
    assert torch.allclose(flat.mean(0), torch.full((4,), -1.5, dtype=torch.float64), atol=0.04)
    assert torch.allclose(flat.var(0), torch.full((4,), 0.1, dtype=torch.float64), rtol=0.15)


def test_scale_one_overlapping_components_matches_p_x_given_y() -> None:
    gm = overlapping()
    x = guided_draws(gm, 1, 1.0, 4000)
    rate = float(gm.class_posterior(x)[:, 1].mean())
    theory_rate, theory_mean = tilted_theory(gm, 1, 1.0)  # 0.8278, 1.0: p(x | y = 1) = N(1, 0.5)
    assert abs(theory_rate - 0.8278) < 1e-3
    assert abs(rate - theory_rate) < 0.01
    assert abs(float(x.mean()) - theory_mean) < 0.04
    assert abs(float(x.var()) - 0.5) < 0.05


def test_per_example_labels() -> None:
    gm = overlapping()
    y = torch.tensor([0, 1]).repeat_interleave(1500)
    x = guided_draws(gm, y, 1.0, 3000).flatten()
    assert abs(float(x[:1500].mean()) + 1.0) < 0.05  # p(x | y = 0) = N(-1, 0.5)
    assert abs(float(x[1500:].mean()) - 1.0) < 0.05


def test_other_scales_are_monotone_and_near_the_tilted_density() -> None:
    # Guidance at s != 1 is not the tilted density's perturbed score, so it is only near it:
    # measured |rate - theory| = 0.09, 0.04, 0.04 at s = 0.5, 2, 4 (benchmarks/controllable.py).
    gm = overlapping()
    rates = []
    for scale in (0.0, 0.5, 2.0, 4.0):
        x = guided_draws(gm, 1, scale, 3000, seed=1)
        rate = float(gm.class_posterior(x)[:, 1].mean())
        theory, _ = tilted_theory(gm, 1, scale)
        tolerance = 0.01 if scale == 0 else 0.12
        assert abs(rate - theory) < tolerance, (scale, rate, theory)
        rates.append(rate)
    assert rates == sorted(rates) and rates[-1] - rates[0] > 0.6


def test_guided_adds_the_exact_log_posterior_gradient_under_no_grad() -> None:
    gm, sde = overlapping(), VPSDE()
    x = torch.linspace(-2.0, 2.0, 5).reshape(5, 1, 1, 1)
    t = torch.full((5,), 0.3)
    with torch.no_grad():
        out = guided(gm.score_fn(sde), exact_classifier(gm, sde), 0, 2.0)(x, t)
    # d/dx log p_t(y=0 | x) for two equal-variance components: -(mu_0 - mu_1) m / var_t * p_t(1 | x).
    m, s = sde.marginal(t)
    var_t = m * m * 0.5 + s * s
    expected = 2.0 * (-2.0 * m / var_t * gm.class_posterior(x, sde, t)[:, 1]).float()
    assert not out.requires_grad
    torch.testing.assert_close(out.flatten() - gm.score(x, t, sde).flatten(), expected, atol=1e-5, rtol=1e-4)
    same = guided(gm.score_fn(sde), exact_classifier(gm, sde), 0, 0.0)(x, t)
    torch.testing.assert_close(same, gm.score(x, t, sde))


def test_label_errors() -> None:
    gm, sde = overlapping(), VPSDE()
    x, t = torch.zeros(4, 1, 1, 1), torch.full((4,), 0.5)
    with pytest.raises(ValueError, match="y has 3 labels for a batch of 4"):
        classifier_log_prob_grad(exact_classifier(gm, sde), x, t, torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        classifier_log_prob_grad(exact_classifier(gm, sde), x, t, 2)
    with pytest.raises(ValueError, match="guidance scale must be >= 0"):
        guided(gm.score_fn(sde), exact_classifier(gm, sde), 0, -1.0)


class _Recorder(nn.Module):
    """A classifier net (x_in, c_noise) -> logits that remembers its inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: tuple[Tensor, Tensor] | None = None

    def forward(self, x_in: Tensor, c_noise: Tensor) -> Tensor:
        self.seen = (x_in, c_noise)
        return torch.stack([x_in.flatten(1).sum(1), c_noise], dim=1)


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
def test_classifier_fn_preconditions_like_the_score_model(sde: VPSDE) -> None:
    net = _Recorder()
    x, t = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(0)), torch.tensor([0.1, 0.5, 0.9])
    logits = classifier_fn(net, sde)(x, t)
    m, s = sde.marginal(t)
    c_in = torch.rsqrt((m * SIGMA_DATA) ** 2 + s**2)
    assert net.seen is not None
    torch.testing.assert_close(net.seen[0], x * c_in.reshape(3, 1, 1, 1))
    torch.testing.assert_close(net.seen[1], sde.noise_label(t))
    assert logits.shape == (3, 2)
