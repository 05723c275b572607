"""Imputation against a Gaussian mixture whose posterior given a few observed pixels is exact."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import Tensor

from diffusers_cli.engine.analytic import GaussianMixture, imputation_problem
from diffusers_cli.engine.imputation import (
    METHODS,
    PARTICLE_METHODS,
    effective_sample_size,
    impute,
    method_options,
    repaint_schedule,
    resample_indices,
)
from diffusers_cli.engine.masks import (
    IMAGE_CONVENTION,
    MaskError,
    make_mask,
    mask_from_image,
    mask_to_image,
)
from diffusers_cli.engine.options import OptionError
from diffusers_cli.engine.samplers import SAMPLERS, sample
from diffusers_cli.engine.score import NFECounter, ScoreFn
from diffusers_cli.engine.sde import VESDE, VPSDE

# Pixel 0 is observed: its component means differ but overlap (var 0.25), so one observed
# pixel moves the weights from the prior (0.2, 0.3, 0.5) to (0.464, 0.431, 0.105). The three
# missing pixels separate the components (sign patterns, var 0.05), so each draw's component
# can be read off it without error.
MEANS = torch.tensor([[0.6, 1.0, 1.0, -1.0], [0.0, -1.0, 1.0, 1.0], [-0.6, -1.0, -1.0, 1.0]]).reshape(3, 1, 1, 4)
VARIANCES = torch.tensor([0.25, 0.05, 0.05, 0.05]).expand(3, 4).reshape(3, 1, 1, 4)
WEIGHTS = torch.tensor([0.2, 0.3, 0.5])
DRAWS = 2000
ADAPTIVE = {"ode"}  # samplers whose number of score evaluations is not fixed by the steps


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # Small tensors: on a shared 2-core machine intra-op threads cost more than they save.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def mixture() -> GaussianMixture:
    return GaussianMixture(MEANS, VARIANCES, WEIGHTS)


def observation() -> tuple[Tensor, Tensor]:
    """x_known [1, 1, 1, 4] (only pixel 0 matters) and its mask, 1 = known."""
    x = torch.tensor([0.5, 0.0, 0.0, 0.0]).reshape(1, 1, 1, 4)
    mask = torch.tensor([1.0, 0.0, 0.0, 0.0]).reshape(1, 1, 1, 4)
    return x, mask


def exact_weights() -> Tensor:
    x, mask = observation()
    return mixture().observed_posterior(x[0], mask[0])


def component_tv(draws: Tensor) -> float:
    """Total variation between the draws' component frequencies and the exact posterior weights."""
    labels = mixture().component_log_probs(draws).argmax(dim=1)
    freq = torch.bincount(labels, minlength=3).double() / draws.shape[0]
    return 0.5 * float((freq - exact_weights()).abs().sum())


def run(method: str, seed: int = 0, n: int = DRAWS, sde: VPSDE | VESDE | None = None, **options: object) -> Tensor:
    sde = sde or VPSDE()
    x, mask = observation()
    gen = torch.Generator().manual_seed(seed)
    return impute(sde, mixture().score_fn(sde), x, mask, method=method, n=n, generator=gen, **options)


@pytest.fixture(scope="module")
def smc_draws() -> Tensor:
    before = torch.get_num_threads()  # module-scoped: set up before the autouse fixture runs
    torch.set_num_threads(1)
    try:
        return run("smc", steps=100, particles=16, grid="logsnr")
    finally:
        torch.set_num_threads(before)


def test_exact_weights_are_informative() -> None:
    torch.testing.assert_close(
        exact_weights(), torch.tensor([0.4640, 0.4307, 0.1052], dtype=torch.float64), atol=1e-4, rtol=0
    )


def test_smc_follows_the_posterior_component_weights(smc_draws: Tensor) -> None:
    assert smc_draws.shape == (DRAWS, 1, 1, 4)
    assert bool((smc_draws[:, 0, 0, 0] == 0.5).all())
    assert component_tv(smc_draws) < 0.05


def test_smc_conditional_moments_of_the_missing_pixels(smc_draws: Tensor) -> None:
    labels = mixture().component_log_probs(smc_draws).argmax(dim=1)
    for k in (0, 1):  # the two likely components; ~900 draws each
        missing = smc_draws[labels == k].flatten(1)[:, 1:].double()
        torch.testing.assert_close(missing.mean(0), MEANS[k].flatten()[1:].double(), atol=0.04, rtol=0)
        ratio = missing.var(0) / 0.05  # the ancestral chain is slightly under-dispersed at 100 steps
        assert bool(((ratio > 0.8) & (ratio < 1.15)).all()), ratio


def component_freq(draws: Tensor) -> Tensor:
    """How often each component generated the draws (read off the well-separated missing pixels)."""
    labels = mixture().component_log_probs(draws).argmax(dim=1)
    return torch.bincount(labels, minlength=3).double() / draws.shape[0]


def test_replacement_leans_only_a_little_from_the_prior_toward_the_posterior() -> None:
    draws = run("replacement", sampler="em", steps=100)
    assert bool((draws[:, 0, 0, 0] == 0.5).all())
    freq, prior, posterior = component_freq(draws), WEIGHTS.double(), exact_weights()
    # Re-imposing the noised observed pixel after every step informs the missing ones only through the joint score at
    # each level: each weight moves from the prior (0.2, 0.3, 0.5) part of the way toward the posterior (0.464, 0.431, 0.105),
    # and stays much nearer the prior (seed 0: (0.225, 0.369, 0.407), 0.09 from the prior, 0.30 from the posterior).
    low, high = torch.minimum(prior, posterior), torch.maximum(prior, posterior)
    assert bool(((freq >= low - 0.02) & (freq <= high + 0.02)).all()), freq
    to_prior, to_posterior = 0.5 * float((freq - prior).abs().sum()), component_tv(draws)
    assert 0.05 < to_prior < 0.15, to_prior  # not the prior itself (~0.015 of sampling noise): the pixel is re-imposed
    assert 0.25 < to_posterior < 0.35, to_posterior


def test_repaint_keeps_known_pixels_and_resampling_narrows_but_does_not_close_the_gap() -> None:
    draws = run("repaint", steps=20, jump_length=5, resample=10)
    assert bool((draws[:, 0, 0, 0] == 0.5).all())
    tv = component_tv(draws)
    # Ten passes over each jump let the missing pixels harmonise with the observed one: nearer the posterior than
    # replacement on the same seed (0.30), still biased (seed 0: 0.236; 16-particle SMC: < 0.05).
    assert 0.17 < tv < 0.28, tv
    assert tv < component_tv(run("replacement", sampler="em", steps=100)) - 0.03
    assert tv < component_tv(run("repaint", steps=20, jump_length=5, resample=1)) - 0.03  # resampling is what helps


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_replacement_rides_on_every_sampler(sampler: str) -> None:
    sde = VPSDE()
    counted = NFECounter(mixture().score_fn(sde))
    x, mask = observation()
    draws = impute(sde, counted, x, mask, method="replacement", n=8, sampler=sampler, steps=4, generator=torch.Generator().manual_seed(0))
    assert draws.shape == (8, 1, 1, 4) and bool(torch.isfinite(draws).all())
    assert bool((draws[:, 0, 0, 0] == 0.5).all())
    # The option is the sampler itself: the score is called as often as `sample` calls it with that sampler (an adaptive
    # solver's count follows the path, which replacement changes), and the fills are not another sampler's from the same seed.
    alone = NFECounter(mixture().score_fn(sde))
    sample(sde, alone, (8, 1, 1, 4), sampler, 4, torch.Generator().manual_seed(0))
    assert counted.nfe == alone.nfe or (sampler in ADAPTIVE and abs(counted.nfe - alone.nfe) <= 0.1 * alone.nfe), (counted.nfe, alone.nfe)
    other = run("replacement", n=8, sampler="ddpm" if sampler != "ddpm" else "em", steps=4)
    assert float((draws[..., 1:] - other[..., 1:]).abs().max()) > 1e-3


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("sde", [VPSDE(), VESDE(sigma_max=5.0)], ids=["vp", "ve"])
def test_every_method_keeps_each_images_known_pixels_with_per_example_masks(method: str, sde: VPSDE) -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 2, 3, 3, generator=gen)
    mask = (torch.rand(2, 1, 3, 3, generator=gen) < 0.5).float()
    mask[:, :, 0, 0], mask[:, :, 1, 1] = 1.0, 0.0
    options = {"steps": 3, "particles": 4} if method in PARTICLE_METHODS else {"steps": 3}
    out = impute(sde, mixture_for(x, sde), x, mask, method=method, n=3, generator=gen, **options)
    assert out.shape == (6, 2, 3, 3) and bool(torch.isfinite(out).all())
    for b in range(2):
        known = mask[b].expand(2, 3, 3).bool()
        for j in range(3):
            assert torch.equal(out[b * 3 + j][known], x[b][known])  # draw j of image b at row b * n + j


def mixture_for(x: Tensor, sde: VPSDE) -> ScoreFn:
    """A standard Gaussian score on x's image shape."""
    return GaussianMixture(torch.zeros(1, *x.shape[1:]), torch.tensor(1.0)).score_fn(sde)


def test_same_seed_same_fill() -> None:
    a = run("smc", seed=5, n=4, steps=5, particles=4)
    b = run("smc", seed=5, n=4, steps=5, particles=4)
    c = run("smc", seed=6, n=4, steps=5, particles=4)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_smc_callback_sees_every_particle_each_step() -> None:
    seen: list[tuple[int, tuple[int, ...]]] = []
    run("smc", n=2, steps=4, particles=3, callback=lambda info: seen.append((info["i"], tuple(info["x"].shape))))
    assert seen == [(i, (6, 1, 1, 4)) for i in range(4)]


def test_repaint_schedule() -> None:
    # Down 0..4, jump back to 2, down to 6, jump back to 4, down to 6: 10 reverse steps for 6.
    assert repaint_schedule(6, 2, 2) == [0, 1, 2, 3, 4, 3, 2, 3, 4, 5, 6, 5, 4, 5, 6]
    assert repaint_schedule(5, 10, 4) == [0, 1, 2, 3, 4, 5]
    assert repaint_schedule(4, 1, 1) == [0, 1, 2, 3, 4]


def test_resampling() -> None:
    gen = torch.Generator().manual_seed(0)
    one_hot = torch.tensor([[-1e9, 0.0, -1e9], [0.0, -1e9, -1e9]])
    for method in ("systematic", "multinomial"):
        assert resample_indices(one_hot, method, gen).tolist() == [[1, 1, 1], [0, 0, 0]]
    # Systematic resampling of equal weights keeps every particle once.
    assert resample_indices(torch.zeros(2, 4), "systematic", gen).tolist() == [[0, 1, 2, 3]] * 2
    log_w = torch.log(torch.tensor([[0.1, 0.6, 0.3]])).expand(4000, 3)
    for method in ("systematic", "multinomial"):
        freq = torch.bincount(resample_indices(log_w, method, gen).flatten(), minlength=3) / 12000
        torch.testing.assert_close(freq, torch.tensor([0.1, 0.6, 0.3]), atol=0.015, rtol=0)
    torch.testing.assert_close(effective_sample_size(torch.zeros(1, 8)), torch.tensor([8.0], dtype=torch.float64))
    torch.testing.assert_close(effective_sample_size(one_hot), torch.ones(2, dtype=torch.float64))


def test_bad_input_errors() -> None:
    sde = VPSDE()
    score = mixture().score_fn(sde)
    x, mask = observation()
    with pytest.raises(OptionError, match="unknown imputation method 'magic'; use auto or one of smc, replacement, repaint, twisted"):
        impute(sde, score, x, mask, method="magic")
    with pytest.raises(OptionError, match="imputation method 'smc' has no option 'sampler'; its options are: steps .default 1000., particles"):
        impute(sde, score, x, mask, method="smc", sampler="pc")
    with pytest.raises(ValueError, match=r"mask must be \[1 or 1, 1 or 1, 1, 4\]"):
        impute(sde, score, x, torch.ones(1, 1, 2, 2))
    with pytest.raises(ValueError, match="mask must hold only 0"):
        impute(sde, score, x, mask * 0.5)
    with pytest.raises(ValueError, match="n must be at least 1"):
        impute(sde, score, x, mask, n=0)
    with pytest.raises(OptionError, match="option resampling must be one of systematic, multinomial, got stratified"):
        impute(sde, score, x, mask, resampling="stratified")
    assert method_options("smc")["particles"] == 16 and method_options("repaint")["predictor"] == "ancestral"


# Masks: generated kinds, the PNG convention (white = fill) and its errors.


def test_mask_kinds() -> None:
    box = make_mask("box", (1, 3, 4, 4))
    assert box.shape == (1, 1, 4, 4)
    assert box[0, 0].tolist() == [[1, 1, 1, 1], [1, 0, 0, 1], [1, 0, 0, 1], [1, 1, 1, 1]]
    assert torch.equal(make_mask("outpaint", (4, 4)), 1 - box)
    assert make_mask("half", (2, 6))[0, 0].tolist() == [[1, 1, 1, 0, 0, 0]] * 2  # fills the right half by default
    assert make_mask("half", (4, 2), side="top")[0, 0, :, 0].tolist() == [0, 0, 1, 1]
    assert make_mask("box", (10, 10), fraction=0.36)[0, 0].sum() == 100 - 36
    rand = make_mask("random-pixels", (3, 1, 4, 4), torch.Generator().manual_seed(0), fraction=0.25)
    assert rand.shape == (3, 1, 4, 4) and rand.flatten(1).sum(1).tolist() == [4.0, 4.0, 4.0]
    assert not torch.equal(rand[0], rand[1])  # drawn per example
    assert torch.equal(rand, make_mask("random-pixels", (3, 1, 4, 4), torch.Generator().manual_seed(0), fraction=0.25))


def test_mask_kind_errors() -> None:
    assert issubclass(MaskError, ValueError)
    with pytest.raises(MaskError, match="unknown mask kind 'circle'; use one of box, outpaint, half, random-pixels"):
        make_mask("circle", (4, 4))
    with pytest.raises(MaskError, match="mask kind 'half' takes no option 'fraction'; it takes side"):
        make_mask("half", (4, 4), fraction=0.5)
    with pytest.raises(MaskError, match="fraction must lie strictly between 0 and 1, got 1.0"):
        make_mask("box", (4, 4), fraction=1.0)
    with pytest.raises(MaskError, match="unknown side 'up'"):
        make_mask("half", (4, 4), side="up")
    with pytest.raises(MaskError, match="fills every pixel"):
        make_mask("box", (2, 2), fraction=0.9)  # the box rounds up to the whole image


def test_mask_images_are_white_to_fill() -> None:
    assert IMAGE_CONVENTION == "white = fill, black = keep"
    img = torch.zeros(3, 4, 5)
    img[:, 1:3, 2:4] = 1.0  # a white square: the region to fill
    known = mask_from_image(img, like=torch.zeros(2, 3, 4, 5))
    assert known.shape == (1, 1, 4, 5)
    assert known[0, 0].sum() == 20 - 4 and known[0, 0, 1:3, 2:4].sum() == 0
    as_uint8 = (img[0] * 255).to(torch.uint8)
    assert torch.equal(mask_from_image(as_uint8), known)
    rgba = torch.cat([img, torch.zeros(1, 4, 5)])  # a transparent alpha channel does not matter
    assert torch.equal(mask_from_image(rgba), known)
    assert torch.equal(mask_from_image(mask_to_image(known)[0]), known)
    assert mask_to_image(known)[0, 0, 1, 2] == 1.0  # written back as white


def test_mask_image_errors() -> None:
    with pytest.raises(MaskError, match="mask is 4x5 pixels but the image is 8x8: make the mask the same size"):
        mask_from_image(torch.zeros(4, 5), like=torch.zeros(3, 8, 8))
    with pytest.raises(MaskError, match=r"mask fills no pixel \(white = fill, black = keep\)"):
        mask_from_image(torch.zeros(4, 4))
    with pytest.raises(MaskError, match=r"mask fills every pixel \(white = fill, black = keep\), so nothing is known: keep some black"):
        mask_from_image(torch.ones(1, 4, 4))
    with pytest.raises(MaskError, match=r"a mask image must be \[H, W\] or \[C, H, W\]"):
        mask_from_image(torch.zeros(5, 4, 4))


def test_auto_method_picks_twisted_for_few_known_pixels_and_repaint_for_many() -> None:
    from diffusers_cli.engine.imputation import SMC_MAX_KNOWN_PIXELS, choose_method

    mask = torch.zeros(2, 3, 16, 16)
    flat = mask.view(2, 3, 256)
    flat[0, :, :SMC_MAX_KNOWN_PIXELS] = 1  # exactly the limit, in every channel
    assert choose_method(mask)[0] == "twisted"
    flat[1, 0, 100 : 101 + SMC_MAX_KNOWN_PIXELS] = 1  # one image over the limit (one channel is enough)
    assert choose_method(mask)[0] == "repaint"
    assert choose_method(torch.ones(1, 1, 16, 16))[0] == "repaint"
    assert choose_method(torch.zeros(1, 1, 16, 16))[0] == "twisted"


@pytest.mark.parametrize("method, options", [("repaint", {"jump_length": 3, "resample": 4}), ("repaint", {}),
                                             ("smc", {"particles": 2}), ("twisted", {"particles": 2}),
                                             ("replacement", {"sampler": "ddpm"})])
def test_reverse_steps_counts_the_callbacks(method: str, options: dict) -> None:
    from diffusers_cli.engine.imputation import impute, reverse_steps

    calls: list[int] = []
    x = torch.zeros(1, 1, 4, 4)
    known = torch.zeros(1, 1, 4, 4)
    known[..., :2] = 1
    impute(VPSDE(), lambda x, t: -x, x, known, method=method, steps=12, generator=torch.Generator().manual_seed(0),
           callback=lambda info: calls.append(info["i"]), **options)
    assert len(calls) == reverse_steps(method, steps=12, **options) > 0


def test_auto_follows_a_method_specific_option_in_the_library_too() -> None:
    from diffusers_cli.engine.imputation import choose_method, impute

    known = torch.ones(1, 1, 8, 8)
    known[..., 0, 0] = 0  # 63 known pixels: repaint by the mask alone
    assert choose_method(known) == ("repaint", "63 of 64 pixels known at 8x8")
    assert choose_method(known, particles=4) == ("twisted", "particles is set")
    assert choose_method(known, twist_scale=0.3) == ("twisted", "twist_scale is set")
    assert choose_method(torch.zeros(1, 1, 8, 8), resample=2)[0] == "repaint"
    # Before, "auto" resolved by the mask alone and then refused smc's option.
    out = impute(VPSDE(), lambda x, t: -x, torch.zeros(1, 1, 8, 8), known, method="auto", steps=3, particles=2,
                 generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 1, 8, 8)


# Twisted SMC on a mixture whose observation favours the rarest component: 4 of 64 pixels known.


def mixture_tv(gm: GaussianMixture, out: Tensor, x: Tensor, mask: Tensor) -> float:
    """TV between the fills' component frequencies and the exact posterior weights."""
    freq = torch.bincount(gm.component_log_probs(out).argmax(1), minlength=gm.means.shape[0]).double() / out.shape[0]
    return 0.5 * float((freq - gm.observed_posterior(x[0], mask[0])).abs().sum())


def twisted_run(particles: int | None, draws: int, **problem: object) -> tuple[float, Tensor, Tensor, Tensor]:
    gm, x, mask = imputation_problem(**problem)  # type: ignore[arg-type]
    sde = VPSDE()
    options = {} if particles is None else {"particles": particles}
    # The defaults of `diffuse impute`: auto (twisted here, 4 known pixels), 200 steps.
    out = impute(sde, gm.score_fn(sde), x, mask, method="auto", n=draws, steps=200,
                 generator=torch.Generator().manual_seed(0), **options)
    return mixture_tv(gm, out, x, mask), out, x, mask


def test_twisted_at_its_defaults_follows_the_exact_posterior_with_several_known_pixels() -> None:
    # Posterior (0.171, 0.581, 0.041, 0.207) against the prior (0.1, 0.2, 0.3, 0.4); 16-particle SMC at the
    # same steps and a little more compute is 0.09 away (benchmarks/README.md), exact draws ~0.03.
    tv, out, x, mask = twisted_run(None, 600, seed=2, sep=0.7)
    known = mask.expand_as(out).bool()
    assert torch.equal(out[known], x.expand_as(out)[known])  # the known pixels are the input's, exactly
    assert tv < 0.05, tv


def test_twisted_gets_closer_with_particles() -> None:
    # One particle is guided diffusion with no weights: the twist alone leaves it far off.
    tvs = [twisted_run(p, 300, seed=1, sep=1.5)[0] for p in (1, 5)]
    assert tvs[0] > 0.2 and tvs[1] < 0.06, tvs
