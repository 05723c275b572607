"""Tests of the score U-Net, its building blocks and the time-dependent WideResNet classifier."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from diffusers_cli.engine.losses import dsm_loss
from diffusers_cli.engine.networks import (
    UNET_PRESETS,
    WRN_PRESETS,
    UNet,
    WideResNet,
    unet_from_preset,
    wrn_from_preset,
)
from diffusers_cli.engine.networks.layers import (
    GaussianFourierEmbedding,
    PositionalEmbedding,
    num_groups,
)
from diffusers_cli.engine.score import ScoreModel
from diffusers_cli.engine.sde import VPSDE

#: A cheap U-Net for most tests: 16 -> 8, attention at 8x8.
SMALL = {"base_channels": 8, "channel_mult": (1, 2), "num_res_blocks": 1, "attn_resolutions": (8,), "dropout": 0.0}


def perturb_(net: nn.Module, seed: int = 0, std: float = 0.05) -> nn.Module:
    """Add seeded noise to every parameter, so that zero-initialised layers pass signal and gradients."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(std * torch.randn(p.shape, generator=g))
    return net


def inputs(batch: int, channels: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded images and noise labels."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, size, size, generator=g), torch.rand(batch, generator=g) * 3 - 1.5


def count(net: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in net.parameters())


# ---- building blocks ---------------------------------------------------------------


@pytest.mark.parametrize(("channels", "groups"), [(3, 1), (8, 2), (12, 3), (24, 6), (64, 16), (96, 24), (256, 32), (320, 32)])
def test_num_groups_divides_width(channels: int, groups: int) -> None:
    assert num_groups(channels) == groups
    assert channels % num_groups(channels) == 0


def test_fourier_features_are_fixed_seeded_and_unit_norm() -> None:
    torch.manual_seed(1)
    a = GaussianFourierEmbedding(64, scale=16.0)
    torch.manual_seed(2)
    b = GaussianFourierEmbedding(64, scale=16.0)
    assert torch.equal(a.freqs, b.freqs)  # independent of the global RNG
    # Golden draws of the fixed seed: changing them would change what every checkpoint's features mean.
    unit = a.freqs[:3] / (2 * math.pi * 16)
    torch.testing.assert_close(unit, torch.tensor([-1.2667173, 1.1739115, 1.9324918]))
    # Frequencies are 2 pi * scale * N(0, 1): their RMS over 32 draws is near 2 pi 16 ~ 100.5.
    rms = a.freqs.pow(2).mean().sqrt().item()
    assert 0.6 * 2 * math.pi * 16 < rms < 1.4 * 2 * math.pi * 16
    feats = a(torch.tensor([-1.3, 0.0, 0.7]))
    assert feats.shape == (3, 64)
    # Each (cos, sin) pair has unit norm; at c = 0 all cosines are 1 and sines 0.
    torch.testing.assert_close(feats[:, :32] ** 2 + feats[:, 32:] ** 2, torch.ones(3, 32))
    torch.testing.assert_close(feats[1], torch.cat([torch.ones(32), torch.zeros(32)]))
    assert "freqs" in a.state_dict()  # saved with the weights


def test_positional_embedding_matches_ddpm_formula() -> None:
    emb = PositionalEmbedding(8)
    c = torch.tensor([0.0, 0.5])
    out = emb(c)
    # DDPM: sin/cos of (250 c) * 10000^(-k / (half - 1)), k = 0..3.
    k = torch.arange(4, dtype=torch.float32)
    arg = (250.0 * c)[:, None] * torch.exp(-math.log(10000.0) * k / 3)[None]
    torch.testing.assert_close(out, torch.cat([arg.sin(), arg.cos()], dim=1))
    assert out[1, 0].item() == pytest.approx(math.sin(125.0), abs=1e-5)


@pytest.mark.parametrize("dim", [0, 3])
def test_embedding_dims_validated(dim: int) -> None:
    with pytest.raises(ValueError, match=f"Fourier embedding dim must be even and >= 2, got {dim}"):
        GaussianFourierEmbedding(dim)


# ---- U-Net -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "channels", "overrides"),
    [
        (16, 3, {}),
        (16, 1, {"out_channels": 2, "embedding": "positional"}),
        (28, 1, {"channel_mult": (1, 2, 2), "attn_resolutions": (7,)}),  # MNIST: 28 -> 14 -> 7
        (32, 3, {"channel_mult": (1, 2, 2), "attn_resolutions": (16,), "num_res_blocks": 2}),
        (32, 3, {"channel_mult": (1, 2, 2), "resblock_updown": True, "skip_rescale": False}),
        (32, 3, {"channel_mult": (1, 2, 2), "resample_with_conv": False, "num_classes": 3}),
    ],
)
def test_unet_output_shape(size: int, channels: int, overrides: dict[str, object]) -> None:
    net = UNet(size, channels, **{**SMALL, **overrides})
    x, c = inputs(2, channels, size)
    out = net(x, c)
    assert out.shape == (2, overrides.get("out_channels", channels), size, size)
    assert out.dtype == torch.float32


def test_unet_output_is_zero_at_init_then_nonzero() -> None:
    net = UNet(16, 3, **SMALL)
    x, c = inputs(3, 3, 16)
    assert torch.count_nonzero(net(x, c)) == 0
    assert torch.count_nonzero(perturb_(net)(x, c)) == 3 * 3 * 16 * 16


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"image_size": 30, "channel_mult": (1, 2, 2)}, r"image side 30 is not divisible by 2\*\*\(len\(channel_mult\)-1\) = 4"),
        ({"image_size": (16, 30), "channel_mult": (1, 2, 2)}, r"image side 30 is not divisible by 2\*\*\(len\(channel_mult\)-1\) = 4"),
        ({"image_size": (8, 8, 8)}, r"image_size must be a side or \(height, width\), got \[8, 8, 8\]"),
        ({"image_size": 32, "attn_resolutions": (12,)}, r"attention resolution 12 is never reached; the U-Net's resolutions are \[32, 16\]"),
        ({"image_size": 16, "channel_mult": ()}, r"channel_mult must be a non-empty sequence of positive ints, got \[\]"),
        ({"image_size": 16, "channel_mult": (1, 0)}, r"channel_mult must be a non-empty sequence of positive ints, got \[1, 0\]"),
        ({"image_size": 16, "num_res_blocks": 0}, r"num_res_blocks must be >= 1, got 0"),
        ({"image_size": 16, "base_channels": 0}, r"base_channels must be >= 1, got 0"),
        ({"image_size": 16, "dropout": 1.0}, r"dropout must be in \[0, 1\), got 1.0"),
        ({"image_size": 16, "embedding": "learned"}, r"unknown embedding 'learned'; use one of \('fourier', 'positional'\)"),
        ({"image_size": 16, "num_classes": 0}, r"num_classes must be >= 1 or None, got 0"),
    ],
)
def test_unet_rejects_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    args = {**SMALL, "attn_resolutions": (), **kwargs}
    with pytest.raises(ValueError, match=message):
        UNet(**args)  # type: ignore[arg-type]


def test_unet_build_is_deterministic_given_seed() -> None:
    torch.manual_seed(0)
    a = perturb_(UNet(16, 3, **SMALL))
    torch.manual_seed(0)
    b = perturb_(UNet(16, 3, **SMALL))
    torch.manual_seed(1)
    c = perturb_(UNet(16, 3, **SMALL))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["conv_in.weight"], sc["conv_in.weight"])
    x, t = inputs(2, 3, 16)
    assert torch.equal(a(x, t), b(x, t))


def test_unet_gradients_reach_every_parameter() -> None:
    net = perturb_(UNet(16, 3, **{**SMALL, "num_classes": 4, "resblock_updown": True}))
    x, c = inputs(4, 3, 16)
    net(x, c, torch.tensor([0, 1, 2, -1])).pow(2).mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


def test_zero_init_layers_learn_in_one_step() -> None:
    # At init the output layer is zero, so only it gets a gradient; one Adam step makes the output move.
    net = UNet(16, 3, **SMALL)
    x, c = inputs(4, 3, 16)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    (net(x, c) - x).pow(2).mean().backward()
    assert net.conv_out.weight.grad.abs().sum() > 0
    opt.step()
    assert net(x, c).abs().mean() > 1e-4


def test_unet_time_conditioning_changes_output() -> None:
    for embedding in ("fourier", "positional"):
        net = perturb_(UNet(16, 3, **{**SMALL, "embedding": embedding}))
        x, _ = inputs(1, 3, 16)
        lo, hi = net(x, torch.tensor([-1.0])), net(x, torch.tensor([1.0]))
        assert (lo - hi).abs().mean() > 1e-3 * lo.abs().mean(), embedding


def test_unet_class_conditioning() -> None:
    net = perturb_(UNet(16, 3, **{**SMALL, "num_classes": 5}))
    x, c = inputs(1, 3, 16)
    x, c = x.expand(3, -1, -1, -1), c.expand(3)
    out = net(x, c, torch.tensor([0, 4, -1]))
    assert out.shape == (3, 3, 16, 16)
    assert (out[0] - out[1]).abs().mean() > 1e-4  # different classes, different outputs
    # -1 and None both mean "no class" (the reserved label 5, for classifier-free guidance).
    torch.testing.assert_close(out[2:], net(x[:1], c[:1]))
    torch.testing.assert_close(out[2:], net(x[:1], c[:1], torch.tensor([5])))
    with pytest.raises(ValueError, match="class_labels given to an unconditional UNet; build it with num_classes"):
        UNet(16, 3, **SMALL)(x, c, torch.tensor([0, 1, 2]))


def test_channels_last_matches_contiguous() -> None:
    net = perturb_(UNet(16, 3, **{**SMALL, "num_res_blocks": 2, "attn_resolutions": (16, 8)}))
    x, c = inputs(2, 3, 16)
    ref = net(x, c)
    net_cl = net.to(memory_format=torch.channels_last)
    out = net_cl(x.contiguous(memory_format=torch.channels_last), c)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_unet_trains_through_score_model_and_dsm_loss() -> None:
    torch.manual_seed(0)
    model = ScoreModel(UNet(16, 3, **SMALL), VPSDE(), parameterization="eps")
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(8, 3, 16, 16, generator=g) * 2 - 1
    loss = dsm_loss(model, x0, g, weighting="eps")
    assert loss.shape == (8,)
    # A zero network predicts eps_hat = 0, so the eps loss is E[eps^2] = 1 per pixel.
    assert loss.mean().item() == pytest.approx(1.0, abs=0.05)
    loss.mean().backward()
    assert model.net.conv_out.weight.grad.abs().sum() > 0


# Exact counts (3 input channels); the ranges are the ones the presets' comments promise.
PRESET_PARAMS = {
    "tiny": (1_063_651, 0.8e6, 1.3e6),
    "small": (3_458_115, 2e6, 4e6),
    "base": (8_952_067, 7e6, 20e6),
    "ncsnpp-cifar10": (62_513_667, 55e6, 70e6),
    "cars64": (32_358_147, 25e6, 45e6),
}


@pytest.mark.parametrize("name", sorted(UNET_PRESETS))
def test_unet_preset_parameter_counts(name: str) -> None:
    exact, lo, hi = PRESET_PARAMS[name]
    size = 64 if name == "cars64" else 32
    with torch.device("meta"):  # shapes only: no memory, no init
        net = unet_from_preset(name, size)
    assert count(net) == exact
    assert lo < exact < hi


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_small_presets_work_at_mnist_size(name: str) -> None:
    net = perturb_(unet_from_preset(name, 28, in_channels=1, base_channels=8))
    x, c = inputs(2, 1, 28)
    assert net(x, c).shape == (2, 1, 28, 28)


def test_unknown_preset_named() -> None:
    with pytest.raises(ValueError, match="unknown U-Net preset 'huge'"):
        unet_from_preset("huge", 32)
    with pytest.raises(ValueError, match="unknown classifier preset 'wrn-1'"):
        wrn_from_preset("wrn-1", 32)


# ---- classifier --------------------------------------------------------------------


@pytest.mark.parametrize(("size", "channels"), [(16, 3), (28, 1), (32, 3)])
def test_classifier_logits_shape(size: int, channels: int) -> None:
    net = WideResNet(size, channels, num_classes=7, depth=10, widen=1)
    x, c = inputs(3, channels, size)
    assert net(x, c).shape == (3, 7)


def test_classifier_time_conditioning_and_gradients() -> None:
    torch.manual_seed(0)
    net = WideResNet(16, 3, num_classes=5, depth=10, widen=1)
    x, _ = inputs(1, 3, 16)
    lo, hi = net(x, torch.tensor([-1.0])), net(x, torch.tensor([1.0]))
    assert (lo - hi).abs().max() > 1e-4
    # Guidance needs grad_x log p(y | x_t): it must exist and be non-zero.
    x.requires_grad_(True)
    torch.log_softmax(net(x, torch.tensor([0.3])), dim=1)[0, 2].backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    missing = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"depth": 12}, r"depth must be 6 n \+ 4 with n >= 1 \(10, 16, 22, 28, ...\), got 12"),
        ({"depth": 4}, r"depth must be 6 n \+ 4 with n >= 1 \(10, 16, 22, 28, ...\), got 4"),
        ({"num_classes": 1}, r"num_classes must be >= 2, got 1"),
        ({"widen": 0}, r"widen must be >= 1, got 0"),
        ({"image_size": 2}, r"image sides must be >= 4, got 2"),
        ({"image_size": (8, 3)}, r"image sides must be >= 4, got \(8, 3\)"),
    ],
)
def test_classifier_rejects_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    args = {"image_size": 16, "depth": 10, "widen": 1, **kwargs}
    with pytest.raises(ValueError, match=message):
        WideResNet(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "exact", "lo", "hi"), [("wrn-28-10", 37_739_466, 35e6, 40e6), ("wrn-10-2", 460_778, 0.2e6, 0.6e6)])
def test_classifier_preset_parameter_counts(name: str, exact: int, lo: float, hi: float) -> None:
    assert set(WRN_PRESETS) == {"wrn-28-10", "wrn-10-2"}
    with torch.device("meta"):
        net = wrn_from_preset(name, 32)
    assert count(net) == exact
    assert lo < exact < hi
