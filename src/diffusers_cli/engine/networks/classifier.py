"""Time-dependent classifier for classifier guidance: a Wide ResNet conditioned on the noise label (Song et al. 2021, appendix I; Zagoruyko & Komodakis 2016)."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from diffusers_cli.engine.networks.unet import image_hw
from diffusers_cli.engine.networks.presets import WRN_PRESETS
from diffusers_cli.engine.networks.layers import (
    GaussianFourierEmbedding,
    conv1x1,
    conv3x3,
    group_norm,
    linear,
)


#: Width of the Fourier features of the noise label, and of the embedding every block reads.
_FEATURES, _EMB_DIM = 128, 256


def wrn_from_preset(
    name: str,  # a key of WRN_PRESETS
    image_size: int,  # side of the square images
    in_channels: int = 3,  # image channels
    num_classes: int = 10,  # number of classes
    **overrides: object,  # any other constructor argument, replacing the preset's
) -> WideResNet:
    """Build a WideResNet from a named preset, with optional overrides."""
    if name not in WRN_PRESETS:
        raise ValueError(f"unknown classifier preset {name!r}; use one of {sorted(WRN_PRESETS)}")
    kwargs = {**WRN_PRESETS[name], **overrides}
    return WideResNet(image_size, in_channels, num_classes, **kwargs)  # type: ignore[arg-type]


class _WideBlock(nn.Module):
    """Pre-activation wide residual block with the noise embedding added after the first convolution."""

    def __init__(
        self,
        in_ch: int,  # input channels
        out_ch: int,  # output channels
        stride: int,  # 1, or 2 to halve the resolution
        emb_dim: int,  # width of the noise embedding
        dropout: float,  # dropout between the convolutions
    ) -> None:
        super().__init__()
        self.norm0 = group_norm(in_ch)
        self.conv0 = conv3x3(in_ch, out_ch, stride=stride)
        self.emb = linear(emb_dim, out_ch)
        self.norm1 = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv1 = conv3x3(out_ch, out_ch)
        self.skip = conv1x1(in_ch, out_ch, stride) if (in_ch != out_ch or stride != 1) else None

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """x [B, in_ch, H, W], emb [B, E] -> [B, out_ch, H / stride, W / stride]."""
        h = F.silu(self.norm0(x))
        # The shortcut reads the normalised input, as in the original WRN's pre-activation blocks.
        skip = self.skip(h) if self.skip is not None else x
        h = self.conv0(h) + self.emb(emb)[:, :, None, None]
        h = self.conv1(self.dropout(F.silu(self.norm1(h))))
        return skip + h


class WideResNet(nn.Module):
    """WRN-depth-widen classifier of noisy images: (x, c_noise [B]) -> logits [B, num_classes].

    c_noise is the SDE's noise label, embedded with Gaussian random Fourier features and a
    dense layer, and added to every residual block. GroupNorm rather than BatchNorm, since a
    batch mixes all noise levels; SiLU rather than ReLU, so that the input gradients guidance
    uses are smooth. Inputs are already scaled by the preconditioning wrapper.
    """

    def __init__(
        self,
        image_size: int | Sequence[int],  # side of a square input, or (H, W) (each >= 4; global pooling at the end)
        in_channels: int = 3,  # image channels
        num_classes: int = 10,  # number of classes
        depth: int = 28,  # total depth; (depth - 4) must be divisible by 6
        widen: int = 10,  # width multiplier of the three groups (16, 32, 64) * widen
        dropout: float = 0.0,  # dropout inside residual blocks
        fourier_scale: float = 16.0,  # std of the Fourier frequencies of the noise label
    ) -> None:
        super().__init__()
        _check_args(image_size, in_channels, num_classes, depth, widen, dropout)
        self.config: dict[str, object] = {
            "image_size": image_size if isinstance(image_size, int) else list(image_size),
            "in_channels": in_channels,
            "num_classes": num_classes,
            "depth": depth,
            "widen": widen,
            "dropout": dropout,
            "fourier_scale": fourier_scale,
        }
        self.image_size, self.in_channels, self.num_classes = image_size, in_channels, num_classes
        n = (depth - 4) // 6
        widths = [16 * widen, 32 * widen, 64 * widen]
        emb_dim = _EMB_DIM

        self.embed = GaussianFourierEmbedding(_FEATURES, fourier_scale)
        self.map0 = linear(_FEATURES, emb_dim)
        self.map1 = linear(emb_dim, emb_dim)
        self.conv_in = conv3x3(in_channels, 16)
        blocks, ch = [], 16
        for i, width in enumerate(widths):
            for j in range(n):
                blocks.append(_WideBlock(ch, width, 2 if (i > 0 and j == 0) else 1, emb_dim, dropout))
                ch = width
        self.blocks = nn.ModuleList(blocks)
        self.norm_out = group_norm(ch)
        self.head = linear(ch, num_classes)

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        """x [B, C, H, W] (scaled), c_noise [B] -> logits [B, num_classes]."""
        emb = F.silu(self.map1(F.silu(self.map0(self.embed(c_noise).to(self.map0.weight.dtype)))))
        h = self.conv_in(x)
        for block in self.blocks:
            h = block(h, emb)
        h = F.silu(self.norm_out(h)).mean(dim=(2, 3))
        return self.head(h)


def _check_args(image_size: int | Sequence[int], in_channels: int, num_classes: int, depth: int, widen: int, dropout: float) -> None:
    """Validate the WideResNet's arguments (ValueError naming the fix)."""
    if min(image_hw(image_size)) < 4:
        raise ValueError(f"image sides must be >= 4, got {image_size}")
    for name, value in (("in_channels", in_channels), ("widen", widen)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"depth must be 6 n + 4 with n >= 1 (10, 16, 22, 28, ...), got {depth}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
