"""Samplers against analytic densities: moments, mode weights, convergence orders, golden values, callbacks.

Every test that loops over samplers is parametrised over SAMPLERS itself, so a new sampler is
picked up (and must be given a golden value) automatically.
"""

from __future__ import annotations

from conftest import registered_sdes

import math
import re
from collections.abc import Iterator
from typing import Annotated, Any

import pytest
import torch
from scipy.integrate import quad
from torch import Tensor

from diffusers_cli.engine.analytic import GaussianMixture, gaussian
from diffusers_cli.engine.grids import time_grid
from diffusers_cli.engine.options import Opt, OptionError, coerce
from diffusers_cli.engine.rng import ImageGenerators
from diffusers_cli.engine.samplers import (
    SAMPLERS,
    SamplerSpec,
    _ei_step,
    sample,
    sampler_options,
    split_options,
)
from diffusers_cli.engine.score import NFECounter
from diffusers_cli.engine.sde import SDE

SDES: dict[str, SDE] = registered_sdes()  # every registered kind (DDPM included) and VP with the cosine schedule
SHAPE = (1, 4, 4)
N = 2000  # samples per moment test: 4 standard errors of a variance are 4 sqrt(2 / N) = 12.6 %
MEAN = torch.linspace(-1.0, 1.0, 16, dtype=torch.float64).reshape(SHAPE)
VAR = torch.logspace(-2.0, 0.0, 16, dtype=torch.float64).reshape(SHAPE)  # 1e-2 .. 1: very different scales
GAUSS = gaussian(MEAN, VAR)
MIX_WEIGHT = 0.3  # of the first component
MIXTURE = GaussianMixture(
    torch.stack([torch.full(SHAPE, -1.0), torch.full(SHAPE, 1.0)]).double(),
    torch.tensor(0.05),
    torch.tensor([MIX_WEIGHT, 1.0 - MIX_WEIGHT]),
)

# Steps per sampler for the moment tests (a generous NFE, sized to keep the file fast); a new
# sampler gets DEFAULT_STEPS. DDPM runs on the log-SNR grid: its beta-tilde reverse variance
# under-disperses by O(h) (Bao et al. 2022), -24 % in variance at 200 uniform steps for v = 1e-2.
STEPS: dict[str, int] = {"em": 200, "pc": 100, "ddpm": 200, "ddim": 100, "euler": 200, "heun": 50, "ei": 30, "ipndm": 30}
GRIDS: dict[str, str] = {"ddpm": "logsnr"}
DEFAULT_STEPS = 100
# Euler in t on VE contracts x by (1 - c dt) per step, c = log(sigma_max / sigma_min) = 8.5:
# its relative error c^2 / (2 steps) needs ~10x more steps than elsewhere.
STEPS_FOR: dict[tuple[str, str], int] = {("euler", "ve"): 800}
# Allowed relative variance error beyond 4 standard errors: the discretisation at these steps,
# and for PC the known O(snr^2) bias of one unadjusted Langevin step per level, which inflates
# the variance of the narrowest pixels by about eps / (2 v) ~ 12 % at snr = 0.16 (score_sde).
VAR_ALLOWANCE: dict[str, float] = {"pc": 0.15}
DEFAULT_VAR_ALLOWANCE = 0.05
# The variance ratio pooled over the 16 pixels has a standard error of sqrt(2 / (16 N)) = 0.8 %, so it sees what the
# per-pixel check cannot: a sampler off by the same few per cent on every pixel. Its range per sampler is the
# discretisation bias at these steps, signed (measured with seed 0 on every SDE, plus a margin): DDIM and DDPM
# under-disperse (3-7 %), PC over-disperses (3-7 %), Euler on VE under- (6 %), Heun on cosine VP over- (6 %).
# Anything else must land within 4 standard errors of 1 (measured: within 2.7 %).
POOLED_VAR_RANGE: dict[str, tuple[float, float]] = {"ddim": (0.92, 0.99), "ddpm": (0.90, 0.985), "pc": (1.005, 1.10),
                                                     "euler": (0.915, 1.035), "heun": (0.975, 1.09)}
DEFAULT_POOLED_VAR_RANGE = (0.968, 1.032)


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """These tensors are small: a second intra-op thread only adds contention on a shared 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _budget(name: str, sde_name: str) -> tuple[int, str | None]:
    return STEPS_FOR.get((name, sde_name), STEPS.get(name, DEFAULT_STEPS)), GRIDS.get(name)


def _exact_flow(sde: SDE, x_T: Tensor, t: float) -> Tensor:
    """The probability-flow ODE map of GAUSS from T to t: linear, per pixel."""
    m_T, s_T = sde.marginal(torch.tensor(sde.T, dtype=torch.float64))
    m, s = sde.marginal(torch.tensor(t, dtype=torch.float64))
    ratio = ((m * m * VAR + s * s) / (m_T * m_T * VAR + s_T * s_T)).sqrt()
    return m * MEAN + (x_T - m_T * MEAN) * ratio



@pytest.mark.parametrize("sde_name", sorted(SDES))
@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_gaussian_moments_per_pixel(name: str, sde_name: str) -> None:
    sde = SDES[sde_name]
    steps, grid = _budget(name, sde_name)
    x = sample(sde, GAUSS.score_fn(sde), (N, *SHAPE), name, steps, torch.Generator().manual_seed(0), grid=grid).double()
    # 4 standard errors of the sample mean and of the sample variance, pixel by pixel.
    mean_tol = 4.0 * (VAR / N).sqrt()
    var_tol = 4.0 * math.sqrt(2.0 / N) + VAR_ALLOWANCE.get(name, DEFAULT_VAR_ALLOWANCE)
    mean_err = (x.mean(0) - MEAN).abs()
    var_err = (x.var(0) / VAR - 1.0).abs()
    assert bool((mean_err <= mean_tol).all()), f"mean off by {float((mean_err / mean_tol).max()):.2f} x tolerance"
    assert float(var_err.max()) <= var_tol, f"variance off by {float(var_err.max()):.3f} > {var_tol:.3f}"
    low, high = POOLED_VAR_RANGE.get(name, DEFAULT_POOLED_VAR_RANGE)
    pooled = float((x.var(0) / VAR).mean())
    assert low <= pooled <= high, f"variance ratio pooled over pixels {pooled:.4f} outside [{low}, {high}]"


@pytest.mark.parametrize("sde_name", sorted(SDES))
@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_mixture_mode_weights(name: str, sde_name: str) -> None:
    sde = SDES[sde_name]
    steps, grid = _budget(name, sde_name)
    x = sample(sde, MIXTURE.score_fn(sde), (N, *SHAPE), name, steps, torch.Generator().manual_seed(1), grid=grid)
    share = float((MIXTURE.class_posterior(x.double()).argmax(1) == 0).double().mean())
    assert abs(share - MIX_WEIGHT) <= 4.0 * math.sqrt(MIX_WEIGHT * (1 - MIX_WEIGHT) / N), share


# First numbers of a fixed-seed 2x1x4x4 draw on VP with 6 steps of each sampler's default grid,
# float64: they catch silent changes. A new sampler must pin its own (the failure prints them).
GOLDEN: dict[str, list[float]] = {
    "ddim": [-1.141163, -0.894016, -0.82824, -0.491703],
    "ddpm": [-0.99761, -0.901209, -0.725101, -0.600825],
    "ei": [-1.209659, -0.906067, -0.866942, -0.449943],
    "em": [-2.528911, 1.065531, -2.89545, -0.124745],  # 6 Euler-Maruyama steps on VP are far from converged
    "euler": [-1.359699, -0.931865, -0.947272, -0.361054],
    "heun": [-1.425315, -0.94606, -1.00148, -0.300611],
    "ipndm": [-1.22694, -0.908974, -0.8756, -0.441546],
    "ode": [-1.22907, -0.909341, -0.876448, -0.441311],
    "pc": [-0.796236, -0.527958, -0.558987, 0.350155],
}


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_golden_values(name: str) -> None:
    sde = SDES["vp"]
    x = sample(sde, GAUSS.score_fn(sde), (2, *SHAPE), name, 6, torch.Generator().manual_seed(0), dtype=torch.float64)
    got = [round(v, 6) for v in x.flatten()[:4].tolist()]
    assert name in GOLDEN, f"no golden value for sampler {name!r}: pin {got}"
    torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), torch.tensor(GOLDEN[name], dtype=torch.float64), rtol=0, atol=2e-6)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_same_seed_same_output(name: str) -> None:
    sde = SDES["vp"]

    def draw(seed: int) -> Tensor:
        return sample(sde, MIXTURE.score_fn(sde), (4, *SHAPE), name, 5, torch.Generator().manual_seed(seed))

    first, again, other = draw(3), draw(3), draw(4)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_callback_sees_every_step_and_can_replace_x(name: str) -> None:
    sde = SDES["vp"]
    ts = time_grid(sde, 5, SAMPLERS[name].grid)
    seen: list[dict[str, Any]] = []
    fixed = torch.full((3, *SHAPE), 0.25)

    def callback(info: dict[str, Any]) -> Tensor:
        seen.append(info)
        assert {"x", "i", "t", "denoised"} <= set(info) and info["denoised"].shape == fixed.shape
        return fixed.clone()

    out = sample(sde, GAUSS.score_fn(sde), (3, *SHAPE), name, 5, torch.Generator().manual_seed(0), final_denoise=False, callback=callback)
    # Whatever the callback returns is the state the sampler carries on from, to the very end.
    torch.testing.assert_close(out, fixed)
    assert [s["i"] for s in seen] == list(range(len(seen)))
    assert seen[-1]["t"] == pytest.approx(float(ts[-1]))
    if name != "ode":  # the adaptive solver picks its own steps; the fixed-step ones report the grid's
        assert [s["t"] for s in seen] == pytest.approx(ts[1:].tolist())


def test_ddim_eta_one_is_ddpm_on_the_same_grid() -> None:
    sde = SDES["vp"]
    score_fn = GAUSS.score_fn(sde)
    for grid in ("uniform", "logsnr"):
        kw: dict[str, Any] = {"grid": grid, "dtype": torch.float64}
        ddpm = sample(sde, score_fn, (64, *SHAPE), "ddpm", 20, torch.Generator().manual_seed(5), **kw)
        ddim = sample(sde, score_fn, (64, *SHAPE), "ddim", 20, torch.Generator().manual_seed(5), eta=1.0, **kw)
        torch.testing.assert_close(ddim, ddpm, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("mode", ["data", "noise"])
def test_first_order_ei_is_deterministic_ddim(mode: str) -> None:
    sde = SDES["ve"]
    kw: dict[str, Any] = {"grid": "logsnr", "dtype": torch.float64}
    ddim = sample(sde, GAUSS.score_fn(sde), (16, *SHAPE), "ddim", 12, torch.Generator().manual_seed(2), **kw)
    ei = sample(sde, GAUSS.score_fn(sde), (16, *SHAPE), "ei", 12, torch.Generator().manual_seed(2), order=1, mode=mode, **kw)
    torch.testing.assert_close(ei, ddim, rtol=1e-9, atol=1e-9)


def _alpha(lam: float) -> float:
    return 1.0 / math.sqrt(1.0 + math.exp(-2.0 * lam))


def _ei_local_error(order: int, data: bool, degree: int, scale: float = 1.0) -> float:
    """|one _ei_step - the exact integral| for a model output (lambda + 0.4)^degree, on uneven nodes scaled by ``scale``."""
    lam = [scale * v for v in (-1.0, -0.6, -0.3, 0.1)][3 - order :]
    lt, l0 = lam[-1], lam[-2]
    sig = lambda v: _alpha(v) * math.exp(-v)
    poly = lambda v: (v + 0.4) ** degree
    outs = [torch.tensor(poly(v), dtype=torch.float64) for v in lam[:-1]]
    zero = torch.tensor(0.0, dtype=torch.float64)
    if data:  # x_t = sigma_t / sigma_s x_s + sigma_t int e^lam x0(lam) dlam
        exact = sig(lt) * quad(lambda v: math.exp(v) * poly(v), l0, lt, epsabs=1e-14)[0]
        got = float(_ei_step(zero, outs, lam, sig(lt) / sig(l0), -_alpha(lt), True))
    else:  # x_t = alpha_t / alpha_s x_s - alpha_t int e^-lam eps(lam) dlam
        exact = -_alpha(lt) * quad(lambda v: math.exp(-v) * poly(v), l0, lt, epsabs=1e-14)[0]
        got = float(_ei_step(zero, outs, lam, _alpha(lt) / _alpha(l0), -sig(lt), False))
    return abs(got - exact)


@pytest.mark.parametrize("data", [True, False])
@pytest.mark.parametrize("order", [1, 3])
def test_ei_step_is_exact_for_polynomial_outputs(order: int, data: bool) -> None:
    # Orders 1 and 3 integrate exactly when the model output is a polynomial of degree < order in
    # lambda, on uneven nodes (the 3M weight of the second difference is 2 psi_3, see _ei_step).
    for degree in range(order):
        assert _ei_local_error(order, data, degree) < 1e-12
    assert _ei_local_error(order, data, order) > 1e-6


@pytest.mark.parametrize("data", [True, False])
def test_ei_2m_step_has_third_order_local_error(data: bool) -> None:
    # The papers' 2M step weights the difference by psi_1 / 2, not the exact psi_2: exact for
    # constants, and for a linear output its local error falls as h^3.
    assert _ei_local_error(2, data, 0) < 1e-12
    ratio = _ei_local_error(2, data, 1, 0.5) / _ei_local_error(2, data, 1, 0.25)
    assert 7.0 < ratio < 9.0, ratio


# Observed global order of accuracy on the Gaussian's exact flow map: halving the step divides
# the error by 2^order. ei order 3 shows 4 here (its leading error term nearly vanishes on a
# Gaussian); iPNDM's equal-step weights on the log-SNR grid are exact only to second order.
ORDERS: list[tuple[str, dict[str, Any], float]] = [
    ("ddim", {}, 1.0),
    ("euler", {}, 1.0),
    ("heun", {}, 2.0),
    ("ei", {"order": 1}, 1.0),
    ("ei", {"order": 2}, 2.0),
    ("ei", {"order": 2, "mode": "noise"}, 2.0),
    ("ei", {"order": 2, "corrector": True}, 3.0),
    ("ei", {"order": 3}, 3.0),
    ("ei", {"order": 3, "mode": "noise"}, 3.0),
    ("ipndm", {}, 2.0),
]


@pytest.mark.parametrize(("name", "options", "order"), ORDERS, ids=[f"{n}-{o}" for n, o, _ in ORDERS])
def test_convergence_order(name: str, options: dict[str, Any], order: float) -> None:
    sde = SDES["vp"]
    x_T = sde.prior_sample((8, *SHAPE), torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = _exact_flow(sde, x_T, sde.eps)
    grid = "logsnr" if name != "euler" else "quadratic"

    def err(steps: int) -> float:
        x = sample(sde, GAUSS.score_fn(sde), x_T.shape, name, steps, None, x_init=x_T, grid=grid, final_denoise=False, **options)
        return float((x - exact).pow(2).mean().sqrt())

    rate = math.log2(err(40) / err(80))
    assert rate > order - 0.3, f"observed order {rate:.2f}, expected {order}"


def test_ode_reports_its_cost_and_tightens_with_tolerance() -> None:
    sde = SDES["vp"]
    x_T = sde.prior_sample((32, *SHAPE), torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = _exact_flow(sde, x_T, sde.eps)
    results = []
    for tol in (1e-3, 1e-6):
        counter = NFECounter(GAUSS.score_fn(sde))
        info: list[dict[str, Any]] = []
        x = sample(sde, counter, x_T.shape, "ode", 1, None, x_init=x_T, final_denoise=False, callback=info.append, rtol=tol, atol=tol)
        last = info[-1]
        # Dormand-Prince: 6 evaluations per step tried (FSAL), 1 to start and 1 for the initial step size.
        assert counter.nfe == last["nfe"] == 6 * (last["accepted"] + last["rejected"]) + 2
        assert last["accepted"] == len(info)
        results.append((counter.nfe, float((x - exact).abs().max())))
    (nfe_loose, err_loose), (nfe_tight, err_tight) = results
    assert nfe_tight > nfe_loose and err_tight < err_loose
    assert err_tight < 1e-4


def test_ode_uses_only_the_ends_of_the_grid() -> None:
    sde = SDES["ve"]
    runs = [sample(sde, GAUSS.score_fn(sde), (4, *SHAPE), "ode", steps, torch.Generator().manual_seed(0), grid=grid) for steps, grid in ((1, "uniform"), (50, "karras"))]
    assert torch.equal(runs[0], runs[1])


def test_options_are_listed_and_validated() -> None:
    assert sampler_options("ei") == {"order": 2, "mode": "data", "lower_order_final": True, "corrector": False}
    assert sampler_options("ddim") == {"eta": 0.0}
    assert sampler_options("ode") == {"rtol": 1e-5, "atol": 1e-5}
    assert sampler_options("ipndm") == {"order": 3}
    churn = {"s_churn": 0.0, "s_tmin": 0.0, "s_tmax": math.inf, "s_noise": 1.0}
    assert sampler_options("heun") == churn and sampler_options("euler") == churn
    assert sampler_options("em") == {} and sampler_options("ddpm") == {}
    sde, fn = SDES["vp"], GAUSS.score_fn(SDES["vp"])
    cases = [
        ("ei", {"order": 4}, "sampler 'ei' option order must be one of 1, 2, 3, got 4"),
        ("ei", {"mode": "x0"}, "sampler 'ei' option mode must be one of data, noise, got x0"),
        ("ei", {"corrector": "maybe"}, "sampler 'ei' option corrector is true or false, got 'maybe'"),
        ("ddim", {"eta": 1.5}, "sampler 'ddim' option eta must be >= 0, <= 1, got 1.5"),
        ("ipndm", {"order": 5}, "sampler 'ipndm' option order must be one of 1, 2, 3, 4, got 5"),
        ("ipndm", {"order": 2.5}, "sampler 'ipndm' option order is an integer, got 2.5"),
        ("ode", {"rtol": 0.0}, "sampler 'ode' option rtol must be > 0, got 0.0"),
        ("pc", {"predictor": "leapfrog"}, "option predictor must be one of reverse-diffusion, euler-maruyama, ancestral"),
        ("heun", {"eta": 0.5}, "sampler 'heun' (grid 'karras') has no option 'eta'; its options are: s_churn (default 0.0), "
                               "s_tmin (default 0.0), s_tmax (default inf), s_noise (default 1.0), rho (default 7.0)"),
        ("ei", {"rho": 3.0}, "sampler 'ei' (grid 'logsnr') has no option 'rho'"),
        ("nosuch", {}, "unknown sampler 'nosuch'; use one of em, pc, ddpm, ddim, euler, heun, ei, ipndm, ode"),
    ]
    for name, options, message in cases:
        with pytest.raises(OptionError, match=re.escape(message)):
            sample(sde, fn, (1, *SHAPE), name, 3, None, **options)
    # Values from a command line arrive as strings or YAML scalars and are converted to the declared type.
    assert split_options("ei", None, {"order": "3", "corrector": "true"}) == ("logsnr", {"order": 3, "corrector": True}, {})
    assert split_options("heun", None, {"rho": 5, "s_churn": "10"}) == ("karras", {"s_churn": 10.0}, {"rho": 5.0})


def test_every_sampler_declares_typed_options() -> None:
    """Each option of each registered sampler has a bool/int/float/str type and a default inside its own limits."""
    for name, spec in SAMPLERS.items():
        for opt in spec.options().values():
            assert opt.type in (bool, int, float, str), (name, opt)
            assert coerce(opt, opt.default, name) == opt.default


def test_a_registered_toy_sampler_gets_its_options_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """One function plus one SAMPLERS line: sample() validates and passes the new option, nothing else to touch."""

    def sample_shrink(sde: SDE, score_fn: Any, x: Tensor, ts: Tensor, *, generator: Any = None, callback: Any = None,
                      factor: Annotated[float, Opt("shrink x by this", gt=0, le=1)] = 1.0) -> Tensor:
        return x * factor

    monkeypatch.setitem(SAMPLERS, "shrink", SamplerSpec(sample_shrink, "uniform", "toy"))
    sde = SDES["ve"]
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    full = sample(sde, GAUSS.score_fn(sde), (2, *SHAPE), "shrink", 3, gen(), final_denoise=False)
    half = sample(sde, GAUSS.score_fn(sde), (2, *SHAPE), "shrink", 3, gen(), final_denoise=False, factor="0.5")
    torch.testing.assert_close(half, 0.5 * full)
    with pytest.raises(OptionError, match=re.escape("option factor must be > 0, <= 1, got 2")):
        sample(sde, GAUSS.score_fn(sde), (2, *SHAPE), "shrink", 3, gen(), factor=2)


@pytest.mark.parametrize("name", ["euler", "heun"])
def test_edm_churn_keeps_the_density_and_is_stochastic(name: str) -> None:
    """EDM's churn (Alg. 2) adds noise and removes it again: with the exact score the moments stay right."""
    sde = SDES["vp"]
    steps = {"euler": 200, "heun": 50}[name]
    churn = {"s_churn": 20.0, "s_tmin": 0.05, "s_tmax": 50.0}
    x = sample(sde, GAUSS.score_fn(sde), (N, *SHAPE), name, steps, torch.Generator().manual_seed(0), **churn).double()
    mean_tol = 4.0 * (VAR / N).sqrt()
    assert bool(((x.mean(0) - MEAN).abs() <= mean_tol).all())
    assert float((x.var(0) / VAR - 1.0).abs().max()) <= 4.0 * math.sqrt(2.0 / N) + DEFAULT_VAR_ALLOWANCE
    # The noise really is there: two seeds differ from the same x_T, and s_churn = 0 is the deterministic sampler.
    x_T = torch.randn((4, *SHAPE), generator=torch.Generator().manual_seed(5))
    runs = [sample(sde, GAUSS.score_fn(sde), (4, *SHAPE), name, 10, torch.Generator().manual_seed(s), x_init=x_T, **churn)
            for s in (1, 2)]
    plain = [sample(sde, GAUSS.score_fn(sde), (4, *SHAPE), name, 10, torch.Generator().manual_seed(s), x_init=x_T) for s in (1, 2)]
    assert not torch.equal(runs[0], runs[1]) and torch.equal(plain[0], plain[1])
    off = sample(sde, GAUSS.score_fn(sde), (4, *SHAPE), name, 10, torch.Generator().manual_seed(1), x_init=x_T, s_churn=0.0)
    assert torch.equal(off, plain[0])


def test_karras_rho_reaches_the_grid() -> None:
    sde = SDES["ve"]
    sigma = lambda ts: torch.exp(-sde.log_snr(ts))  # noqa: E731
    for rho in (1.0, 3.0, 7.0):
        s = sigma(time_grid(sde, 8, "karras", rho=rho))
        ramp = s ** (1 / rho)
        # Equal steps in sigma^(1 / rho): the defining property of Karras' grid.
        torch.testing.assert_close(ramp[1:] - ramp[:-1], torch.full((8,), float(ramp[1] - ramp[0]), dtype=torch.float64), rtol=1e-6, atol=1e-9)
    fn = GAUSS.score_fn(sde)
    a = sample(sde, fn, (2, *SHAPE), "heun", 6, torch.Generator().manual_seed(0))
    b = sample(sde, fn, (2, *SHAPE), "heun", 6, torch.Generator().manual_seed(0), rho=3.0)
    assert not torch.equal(a, b)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_per_image_streams_make_images_independent_of_the_batch(name: str) -> None:
    """With ImageGenerators, image i depends on (seed, i) only: any split into batches gives the same images.

    pc's Langevin step size averages norms over the batch (score_sde's rule) and ode's adaptive
    steps are shared by the batch, so for those two only the noise, not the result, is per image.
    """
    sde, fn = SDES["vp"], MIXTURE.score_fn(SDES["vp"])
    opts = {"corrector_steps": 0} if name == "pc" else {}
    whole = sample(sde, fn, (7, *SHAPE), name, 5, ImageGenerators.for_images(3, 0, 7), dtype=torch.float64, **opts)
    parts = torch.cat([sample(sde, fn, (hi - lo, *SHAPE), name, 5, ImageGenerators.for_images(3, lo, hi - lo), dtype=torch.float64, **opts)
                       for lo, hi in ((0, 1), (1, 4), (4, 7))])
    if name == "ode":
        torch.testing.assert_close(parts, whole, rtol=0, atol=1e-3)  # the same ODE, solved on other step sequences
    else:
        torch.testing.assert_close(parts, whole, rtol=0, atol=1e-12)
    other = sample(sde, fn, (7, *SHAPE), name, 5, ImageGenerators.for_images(4, 0, 7), dtype=torch.float64, **opts)
    assert not torch.allclose(other, whole)
