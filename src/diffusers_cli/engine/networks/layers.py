"""Building blocks shared by the score U-Net and the classifier: noise embeddings, residual and attention blocks (DDPM++ / NCSN++, Song et al. 2021)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Residual sums are scaled by this when skip_rescale is on, so activations keep unit variance with depth.
SKIP_SCALE = 1.0 / math.sqrt(2.0)

#: Seed of the fixed random Fourier frequencies: two builds of one config hold the same features.
FOURIER_SEED = 0x5C0BE

#: Multiplies the noise label (about [-1.5, 1.5]) into DDPM's range of integer timesteps for sinusoids.
POSITIONAL_SCALE = 250.0

#: Which embedding of the noise label a network may use.
EMBEDDINGS: tuple[str, ...] = ("fourier", "positional")


def num_groups(channels: int, max_groups: int = 32, min_group_size: int = 4) -> int:
    """Number of GroupNorm groups for a width: at most 32, at least 4 channels a group, dividing the width."""
    g = max(1, min(max_groups, channels // min_group_size))
    while channels % g:
        g -= 1
    return g


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm sized for any width, so that tiny CPU networks work as well as wide ones."""
    return nn.GroupNorm(num_groups(channels), channels, eps=1e-6)


def conv3x3(in_ch: int, out_ch: int, stride: int = 1, zero: bool = False) -> nn.Conv2d:
    """3x3 convolution, 'same' padding, DDPM's fan-average init (or zeros, to start a branch at identity)."""
    conv = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1)
    init_(conv, zero)
    return conv


def conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution (channel mixing on shortcuts)."""
    conv = nn.Conv2d(in_ch, out_ch, 1, stride=stride)
    init_(conv)
    return conv


def linear(in_dim: int, out_dim: int, zero: bool = False) -> nn.Linear:
    """Dense layer with the same init as the convolutions."""
    layer = nn.Linear(in_dim, out_dim)
    init_(layer, zero)
    return layer


def init_(layer: nn.Conv2d | nn.Linear, zero: bool = False) -> None:
    """DDPM's init: uniform fan-average (Xavier) weights, zero biases; zero weights for a branch's last layer."""
    if zero:
        nn.init.zeros_(layer.weight)
    else:
        nn.init.xavier_uniform_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


class GaussianFourierEmbedding(nn.Module):
    """Gaussian random Fourier features [cos 2 pi w c, sin 2 pi w c], w ~ N(0, scale^2) fixed (Tancik et al. 2020; NCSN++)."""

    def __init__(
        self,
        dim: int,  # number of features (even): dim / 2 frequencies
        scale: float = 16.0,  # std of the frequencies; higher resolves finer changes of the noise level
        seed: int = FOURIER_SEED,  # frequencies are drawn from this seed, not the global RNG
    ) -> None:
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"Fourier embedding dim must be even and >= 2, got {dim}")
        g = torch.Generator().manual_seed(seed)
        # A buffer, not a parameter: fixed features, yet saved with the weights.
        # On the CPU whatever the default device: a seeded CPU generator draws there, and a network built on the meta
        # device (a card checked against its weights) would otherwise send randn through a slow reference path.
        self.register_buffer("freqs", torch.randn(dim // 2, generator=g, device="cpu") * (2.0 * math.pi * scale))

    def forward(self, c_noise: Tensor) -> Tensor:
        """[B] noise labels -> [B, dim] float32 features."""
        # Always float32: in bf16 the phase 2 pi w c would be off by up to a radian.
        arg = c_noise.float()[:, None] * self.freqs.float()[None, :]
        return torch.cat([arg.cos(), arg.sin()], dim=1)


class PositionalEmbedding(nn.Module):
    """DDPM's transformer sinusoidal embedding of ``POSITIONAL_SCALE * c_noise`` (Ho et al. 2020; Vaswani et al. 2017)."""

    def __init__(
        self,
        dim: int,  # number of features (even)
        max_period: float = 10000.0,  # longest wavelength, in scaled-label units
    ) -> None:
        super().__init__()
        if dim < 4 or dim % 2:
            raise ValueError(f"positional embedding dim must be even and >= 4, got {dim}")
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / (half - 1))
        self.register_buffer("freqs", freqs * POSITIONAL_SCALE, persistent=False)

    def forward(self, c_noise: Tensor) -> Tensor:
        """[B] noise labels -> [B, dim] float32 features."""
        arg = c_noise.float()[:, None] * self.freqs.float()[None, :]
        return torch.cat([arg.sin(), arg.cos()], dim=1)


def make_embedding(kind: str, dim: int, fourier_scale: float) -> nn.Module:
    """The noise-label embedding named ``kind`` ("fourier" or "positional")."""
    if kind == "fourier":
        return GaussianFourierEmbedding(dim, fourier_scale)
    if kind == "positional":
        return PositionalEmbedding(dim)
    raise ValueError(f"unknown embedding {kind!r}; use one of {EMBEDDINGS}")


def resample(x: Tensor, mode: str | None) -> Tensor:
    """Parameter-free 2x resampling: nearest-neighbour up, average-pool down, or nothing."""
    if mode == "up":
        return F.interpolate(x, scale_factor=2.0, mode="nearest")
    if mode == "down":
        return F.avg_pool2d(x, 2)
    return x


class ResBlock(nn.Module):
    """Pre-activation residual block with a noise-embedding bias (DDPM++); optionally BigGAN-style up/down."""

    def __init__(
        self,
        in_ch: int,  # input channels
        out_ch: int,  # output channels
        emb_dim: int,  # width of the (already activated) noise embedding
        dropout: float = 0.0,  # dropout before the second convolution
        skip_rescale: bool = True,  # scale the residual sum by 1/sqrt(2)
        resample_mode: str | None = None,  # "up", "down" or None: resample inside the block (BigGAN)
    ) -> None:
        super().__init__()
        self.norm0 = group_norm(in_ch)
        self.conv0 = conv3x3(in_ch, out_ch)
        self.emb = linear(emb_dim, out_ch)
        self.norm1 = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # Zero init: every block starts as (a scaled) identity, which trains deep stacks stably.
        self.conv1 = conv3x3(out_ch, out_ch, zero=True)
        self.skip = conv1x1(in_ch, out_ch) if in_ch != out_ch else None
        self.scale = SKIP_SCALE if skip_rescale else 1.0
        self.resample_mode = resample_mode

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """x [B, in_ch, H, W], emb [B, emb_dim] -> [B, out_ch, H', W']."""
        h = F.silu(self.norm0(x))
        if self.resample_mode is not None:
            h, x = resample(h, self.resample_mode), resample(x, self.resample_mode)
        h = self.conv0(h)
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv1(self.dropout(F.silu(self.norm1(h))))
        if self.skip is not None:
            x = self.skip(x)
        out = x + h
        return out.mul_(self.scale) if self.scale != 1.0 else out


class AttnBlock(nn.Module):
    """Multi-head self-attention over pixels, residual (DDPM's AttnBlock, with fused SDPA)."""

    def __init__(
        self,
        channels: int,  # feature width
        head_dim: int = 64,  # channels per head; narrow layers get a single head
        skip_rescale: bool = True,  # scale the residual sum by 1/sqrt(2)
    ) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.heads = max(1, channels // head_dim)
        if channels % self.heads:
            self.heads = 1
        self.qkv = linear(channels, 3 * channels)
        self.proj = linear(channels, channels, zero=True)
        self.scale = SKIP_SCALE if skip_rescale else 1.0

    def forward(self, x: Tensor) -> Tensor:
        """x [B, C, H, W] -> [B, C, H, W]."""
        b, c, hgt, wid = x.shape
        # Pixels as tokens [B, HW, C]: a free view when x is channels_last.
        tokens = self.norm(x).permute(0, 2, 3, 1).reshape(b, hgt * wid, c)
        qkv = self.qkv(tokens).reshape(b, hgt * wid, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        a = self.proj(a.transpose(1, 2).reshape(b, hgt * wid, c))
        out = x + a.reshape(b, hgt, wid, c).permute(0, 3, 1, 2)
        return out.mul_(self.scale) if self.scale != 1.0 else out


class Downsample(nn.Module):
    """Halve the resolution: a stride-2 3x3 convolution, or 2x2 average pooling (cheaper, no parameters)."""

    def __init__(self, channels: int, with_conv: bool = True) -> None:
        super().__init__()
        self.conv = conv3x3(channels, channels, stride=2) if with_conv else None

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        """x [B, C, H, W] -> [B, C, H/2, W/2] (emb unused: same call as a resampling ResBlock)."""
        return self.conv(x) if self.conv is not None else F.avg_pool2d(x, 2)


class Upsample(nn.Module):
    """Double the resolution: nearest neighbour, then (optionally) a 3x3 convolution."""

    def __init__(self, channels: int, with_conv: bool = True) -> None:
        super().__init__()
        # The convolution runs at the high resolution on the lower level's width: on small
        # CPU networks it is the costliest single layer, hence the option to skip it.
        self.conv = conv3x3(channels, channels) if with_conv else None

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        """x [B, C, H, W] -> [B, C, 2H, 2W] (emb unused: same call as a resampling ResBlock)."""
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.conv is not None else x
