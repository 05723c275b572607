"""Named network sizes: UNET_PRESETS and WRN_PRESETS, plain dicts of constructor arguments (no torch at import,
so `diffuse train --help` lists them)."""

from __future__ import annotations

#: Named U-Net configs (constructor arguments other than image_size / in_channels), smallest first.
#: Parameter counts are for 3 input channels; "ncsnpp-cifar10" is DDPM++ (cont.)'s CIFAR-10 size,
#: so a laptop CPU model and a GPU model differ only in the preset's name.
UNET_PRESETS: dict[str, dict[str, object]] = {
    # ~1.1M params, 32x32 (or 28x28, 16x16): the CPU default; 32 -> 16 -> 8, attention in the 8x8 middle only.
    # About 1.35 training steps/s at 32x32, 4.3-5 at 16x16, batch 64 on 2 CPU threads (fp32; benchmarks/README.md).
    "tiny": {
        "base_channels": 32,
        "channel_mult": (1, 2, 2),
        "num_res_blocks": 1,
        "attn_resolutions": (),
        "dropout": 0.0,
    },
    # ~3.5M params, 32x32 or 28x28 (MNIST): a longer CPU run or a quick GPU one.
    "small": {
        "base_channels": 48,
        "channel_mult": (1, 2, 2),
        "num_res_blocks": 2,
        "attn_resolutions": (),
        "dropout": 0.0,
    },
    # ~15M params, 32x32: DDPM++'s layout at half the width and half the depth.
    "base": {
        "base_channels": 64,
        "channel_mult": (1, 2, 2, 2),
        "num_res_blocks": 2,
        "attn_resolutions": (16,),
        "dropout": 0.1,
    },
    # ~62.5M params, 32x32: DDPM++ (cont.) on CIFAR-10 (base 128, 4 res blocks, attention at 16x16, BigGAN resampling).
    "ncsnpp-cifar10": {
        "base_channels": 128,
        "channel_mult": (1, 2, 2, 2),
        "num_res_blocks": 4,
        "attn_resolutions": (16,),
        "dropout": 0.1,
        "resblock_updown": True,
    },
    # ~35M params, 64x64 (Stanford Cars): 64 -> 32 -> 16 -> 8 -> 4, attention at 16x16.
    "cars64": {
        "base_channels": 96,
        "channel_mult": (1, 1, 2, 2, 3),
        "num_res_blocks": 2,
        "attn_resolutions": (16,),
        "dropout": 0.1,
        "resblock_updown": True,
    },
}

#: Named classifier configs (constructor arguments other than image_size / in_channels / num_classes).
WRN_PRESETS: dict[str, dict[str, object]] = {
    # ~36.5M params: the paper's WRN-28-10 (CIFAR-10).
    "wrn-28-10": {"depth": 28, "widen": 10, "dropout": 0.0},
    # ~0.3M params: trains in a few CPU minutes at 32x32 (shapes, MNIST).
    "wrn-10-2": {"depth": 10, "widen": 2, "dropout": 0.0},
}
