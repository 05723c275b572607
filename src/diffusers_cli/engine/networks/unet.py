"""The score network: an NCSN++ / DDPM++-style U-Net (Song et al. 2021; Ho et al. 2020) conditioned on the noise label."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from diffusers_cli.engine.networks.presets import UNET_PRESETS
from diffusers_cli.engine.networks.layers import (
    EMBEDDINGS,
    AttnBlock,
    Downsample,
    ResBlock,
    Upsample,
    conv3x3,
    group_norm,
    linear,
    make_embedding,
)



def unet_from_preset(
    name: str,  # a key of UNET_PRESETS
    image_size: int,  # side of the square images
    in_channels: int = 3,  # image channels
    **overrides: object,  # any other constructor argument, replacing the preset's
) -> UNet:
    """Build a UNet from a named preset, with optional overrides."""
    if name not in UNET_PRESETS:
        raise ValueError(f"unknown U-Net preset {name!r}; use one of {sorted(UNET_PRESETS)}")
    kwargs = {**UNET_PRESETS[name], **overrides}
    return UNet(image_size, in_channels, **kwargs)  # type: ignore[arg-type]


class _Level(nn.Module):
    """One U-Net stage: a residual block, then self-attention at the resolutions that have it."""

    def __init__(self, res: ResBlock, attn: AttnBlock | None) -> None:
        super().__init__()
        self.res = res
        self.attn = attn

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """x [B, C, H, W], emb [B, E] -> [B, C', H, W]."""
        x = self.res(x, emb)
        return self.attn(x) if self.attn is not None else x


class UNet(nn.Module):
    """NCSN++ / DDPM++-style U-Net: maps (x, c_noise [B], class_labels) to an output shaped like x.

    The noise label c_noise is the SDE's ``noise_label(t)`` (-log-SNR / 4, about [-1.5, 1.5]).
    It is embedded with Gaussian random Fourier features (NCSN++) or with DDPM's sinusoids of
    ``250 * c_noise`` ("positional"), then mapped by a 2-layer MLP to 4 x base_channels and fed
    to every residual block. A class-conditional net (num_classes set) reserves one extra label,
    ``num_classes``, for "no class": class_labels None (or -1 entries) use it, which is what
    classifier-free guidance needs. The last convolution starts at zero, so the output does too.
    Keep the weights in float32 and use autocast for bf16/fp16. Works in channels_last.
    """

    def __init__(
        self,
        image_size: int | Sequence[int],  # side of a square input, or (H, W); each divisible by 2 ** (len(channel_mult) - 1)
        in_channels: int = 3,  # image channels
        out_channels: int | None = None,  # output channels (default: in_channels)
        base_channels: int = 64,  # width of the first level
        channel_mult: Sequence[int] = (1, 2, 2, 2),  # width of each level / base_channels; halve H, W between
        num_res_blocks: int = 2,  # residual blocks per level on the way down (one more on the way up)
        attn_resolutions: Sequence[int] = (16,),  # resolutions with self-attention (the lowest always has it)
        dropout: float = 0.1,  # dropout inside residual blocks
        embedding: str = "fourier",  # noise-label embedding: "fourier" or "positional"
        fourier_scale: float = 16.0,  # std of the Fourier frequencies
        num_classes: int | None = None,  # number of classes for a class-conditional net
        skip_rescale: bool = True,  # scale residual sums by 1/sqrt(2)
        resblock_updown: bool = False,  # resample with residual blocks (BigGAN) instead of plain layers
        resample_with_conv: bool = True,  # plain resampling with a 3x3 conv (else avg-pool / nearest only)
    ) -> None:
        super().__init__()
        channel_mult, attn_resolutions = tuple(channel_mult), tuple(attn_resolutions)
        out_channels = in_channels if out_channels is None else out_channels
        resolutions = _check_args(
            image_size, in_channels, out_channels, base_channels, channel_mult, num_res_blocks,
            attn_resolutions, dropout, embedding, num_classes,
        )  # fmt: skip
        self.config: dict[str, object] = {
            "image_size": image_size if isinstance(image_size, int) else list(image_size),
            "in_channels": in_channels,
            "out_channels": out_channels,
            "base_channels": base_channels,
            "channel_mult": list(channel_mult),
            "num_res_blocks": num_res_blocks,
            "attn_resolutions": list(attn_resolutions),
            "dropout": dropout,
            "embedding": embedding,
            "fourier_scale": fourier_scale,
            "num_classes": num_classes,
            "skip_rescale": skip_rescale,
            "resblock_updown": resblock_updown,
            "resample_with_conv": resample_with_conv,
        }
        self.image_size, self.in_channels, self.out_channels = image_size, in_channels, out_channels
        self.num_classes = num_classes
        emb_dim = 4 * base_channels

        # Noise-label embedding -> MLP; class embedding added before the last activation.
        feat_dim = max(16, base_channels + base_channels % 2)
        self.embed = make_embedding(embedding, feat_dim, fourier_scale)
        self.map0 = linear(feat_dim, emb_dim)
        self.map1 = linear(emb_dim, emb_dim)
        self.label_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes is not None else None

        def res(cin: int, cout: int, mode: str | None = None) -> ResBlock:
            return ResBlock(cin, cout, emb_dim, dropout, skip_rescale, mode)

        def level(cin: int, cout: int, r: int) -> _Level:
            return _Level(res(cin, cout), AttnBlock(cout, skip_rescale=skip_rescale) if r in attn_resolutions else None)

        # Encoder: every module's output is kept as a skip for the decoder.
        self.conv_in = conv3x3(in_channels, base_channels)
        self.down = nn.ModuleList()
        skips, ch = [base_channels], base_channels
        for i, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                self.down.append(level(ch, base_channels * mult, resolutions[i]))
                ch = base_channels * mult
                skips.append(ch)
            if i < len(channel_mult) - 1:
                self.down.append(res(ch, ch, "down") if resblock_updown else Downsample(ch, resample_with_conv))
                skips.append(ch)

        self.mid_res0 = res(ch, ch)
        self.mid_attn = AttnBlock(ch, skip_rescale=skip_rescale)
        self.mid_res1 = res(ch, ch)

        # Decoder: each level block concatenates one skip; resamplers take none.
        self.up = nn.ModuleList()
        self._takes_skip: list[bool] = []
        for i in reversed(range(len(channel_mult))):
            for _ in range(num_res_blocks + 1):
                self.up.append(level(ch + skips.pop(), base_channels * channel_mult[i], resolutions[i]))
                self._takes_skip.append(True)
                ch = base_channels * channel_mult[i]
            if i > 0:
                self.up.append(res(ch, ch, "up") if resblock_updown else Upsample(ch, resample_with_conv))
                self._takes_skip.append(False)

        self.norm_out = group_norm(ch)
        self.conv_out = conv3x3(ch, out_channels, zero=True)
        # Activation checkpointing: in training, each block's activations are recomputed in the backward pass
        # instead of kept. A switch of how to run, not of what the net is: not in ``config``, not in the card.
        self.checkpointing = False

    def embedding(self, c_noise: Tensor, class_labels: Tensor | None) -> Tensor:
        """The activated conditioning vector [B, 4 * base_channels] every residual block reads."""
        dtype = self.map0.weight.dtype
        emb = self.map1(F.silu(self.map0(self.embed(c_noise).to(dtype))))
        if self.label_emb is not None:
            emb = emb + self.label_emb(self._labels(class_labels, c_noise.shape[0], c_noise.device))
        elif class_labels is not None:
            raise ValueError("class_labels given to an unconditional UNet; build it with num_classes")
        return F.silu(emb)

    def _labels(self, class_labels: Tensor | None, batch: int, device: torch.device) -> Tensor:
        """Class indices with -1 (or None: all) mapped to the reserved "no class" index."""
        null = self.num_classes
        if class_labels is None:
            return torch.full((batch,), null, dtype=torch.long, device=device)
        labels = class_labels.long()
        return torch.where(labels < 0, torch.full_like(labels, null), labels)

    def forward(self, x: Tensor, c_noise: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """x [B, C, H, W], c_noise [B], class_labels [B] or None -> [B, out_channels, H, W]."""
        emb = self.embedding(c_noise, class_labels)
        run = self._checkpointed if self.checkpointing and self.training and torch.is_grad_enabled() else _call
        h = self.conv_in(x)
        hs = [h]
        for block in self.down:
            h = run(block, h, emb)
            hs.append(h)
        h = run(self.mid_res1, run(self.mid_attn, run(self.mid_res0, h, emb)), emb)
        for block, takes_skip in zip(self.up, self._takes_skip):
            h = run(block, torch.cat([h, hs.pop()], dim=1) if takes_skip else h, emb)
        return self.conv_out(F.silu(self.norm_out(h)))

    @staticmethod
    def _checkpointed(block: nn.Module, *args: Tensor) -> Tensor:
        """``block(*args)`` keeping only its inputs; the backward pass runs it again, with the dropout draws of the first run."""
        return checkpoint(block, *args, use_reentrant=False, preserve_rng_state=True)  # type: ignore[no-any-return]


def _call(block: nn.Module, *args: Tensor) -> Tensor:
    """``block(*args)``, as ``UNet._checkpointed`` is called."""
    return block(*args)  # type: ignore[no-any-return]


def image_hw(image_size: int | Sequence[int]) -> tuple[int, int]:
    """(H, W) from a side or a pair; ValueError for anything else."""
    if isinstance(image_size, int):
        return image_size, image_size
    hw = tuple(int(v) for v in image_size)
    if len(hw) != 2:
        raise ValueError(f"image_size must be a side or (height, width), got {list(image_size)}")
    return hw[0], hw[1]


def _check_args(
    image_size: int | Sequence[int],
    in_channels: int,
    out_channels: int,
    base_channels: int,
    channel_mult: tuple[int, ...],
    num_res_blocks: int,
    attn_resolutions: tuple[int, ...],
    dropout: float,
    embedding: str,
    num_classes: int | None,
) -> list[int]:
    """Validate the UNet's arguments (ValueError naming the fix); return each level's resolution (its shorter side)."""
    h, w = image_hw(image_size)
    for name, value in (("image height", h), ("image width", w), ("in_channels", in_channels), ("out_channels", out_channels),
                        ("base_channels", base_channels), ("num_res_blocks", num_res_blocks)):  # fmt: skip
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if not channel_mult or any(m < 1 for m in channel_mult):
        raise ValueError(f"channel_mult must be a non-empty sequence of positive ints, got {list(channel_mult)}")
    factor = 2 ** (len(channel_mult) - 1)
    for side in (h, w):
        if side % factor:
            raise ValueError(
                f"image side {side} is not divisible by 2**(len(channel_mult)-1) = {factor}; "
                f"use a multiple of {factor} or fewer levels in channel_mult"
            )
    # For non-square images a level's "resolution" (what attn_resolutions names) is its shorter side.
    resolutions = [min(h, w) // 2**i for i in range(len(channel_mult))]
    for r in attn_resolutions:
        if r not in resolutions:
            raise ValueError(f"attention resolution {r} is never reached; the U-Net's resolutions are {resolutions}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if embedding not in EMBEDDINGS:
        raise ValueError(f"unknown embedding {embedding!r}; use one of {EMBEDDINGS}")
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"num_classes must be >= 1 or None, got {num_classes}")
    return resolutions
