"""Neural networks of the engine: the score U-Net and the time-dependent WideResNet classifier."""

from diffusers_cli.engine.networks.classifier import (
    WRN_PRESETS,
    WideResNet,
    wrn_from_preset,
)
from diffusers_cli.engine.networks.unet import UNET_PRESETS, UNet, unet_from_preset

__all__ = ["UNET_PRESETS", "WRN_PRESETS", "UNet", "WideResNet", "unet_from_preset", "wrn_from_preset"]
