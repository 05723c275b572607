"""Neural networks of the engine: the score U-Net, the time-dependent WideResNet classifier, the clean-image judge, and
their named sizes.

The classes load on first use (PEP 562), so that the presets (``networks.presets``) are readable without torch.
"""

from __future__ import annotations

from typing import Any

from diffusers_cli.engine.networks.presets import UNET_PRESETS, WRN_PRESETS

__all__ = ["UNET_PRESETS", "WRN_PRESETS", "Judge", "UNet", "WideResNet", "unet_from_preset", "wrn_from_preset"]


def __getattr__(name: str) -> Any:
    if name in ("UNet", "unet_from_preset"):
        from diffusers_cli.engine.networks import unet

        return getattr(unet, name)
    if name in ("WideResNet", "wrn_from_preset"):
        from diffusers_cli.engine.networks import classifier

        return getattr(classifier, name)
    if name == "Judge":
        from diffusers_cli.engine.networks import judge

        return judge.Judge
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
