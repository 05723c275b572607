"""Training losses: denoising score matching (Song et al. 2021) with optional likelihood weighting, and DDPM's eps loss."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from diffusers_cli.engine.score import ScoreModel, precondition_input
from diffusers_cli.engine.sde import SDE
from diffusers_cli.engine.utils import append_dims, randn_like
from diffusers_cli.engine.weightings import DEFAULT_WEIGHTING, WeightingInputs, check_weighting


def dsm_loss(
    model: ScoreModel,  # the preconditioned score model being trained
    x0: Tensor,  # a batch of clean data [B, C, H, W] in [-1, 1]
    generator: torch.Generator | None = None,  # source of t and noise; seeded runs reproduce
    weighting: str = DEFAULT_WEIGHTING,  # a name in engine.weightings.WEIGHTINGS
    class_labels: Tensor | None = None,  # for a class-conditional network
    t: Tensor | None = None,  # training times [B]; drawn from the SDE if None
    eps: Tensor | None = None,  # the noise; drawn if None (distributed training passes slices of a global draw)
    min_snr_gamma: float = 5.0,  # "min-snr": the SNR above which the weight stops growing (Hang et al. 2023: 5)
) -> Tensor:
    """Per-example loss lambda(t) ||s(x_t, t) - grad log p(x_t | x_0)||^2, averaged over pixels ([B])."""
    sde = model.sde
    t = sde.train_times(x0.shape[0], generator, x0.device) if t is None else t
    eps = randn_like(x0, generator) if eps is None else eps
    mean, std = sde.marginal(t)
    x_t = append_dims(mean, x0.ndim) * x0 + append_dims(std, x0.ndim) * eps
    score = model.score(x_t, t, class_labels)
    # std * (score - target) = std * score + eps: the eps-prediction error, well scaled at every t.
    err = (append_dims(std, x0.ndim) * score + eps).pow(2).flatten(1).mean(dim=1)
    return check_weighting(weighting).apply(err, WeightingInputs(sde, x0, t, mean, std, min_snr_gamma))


def classifier_loss(
    classifier: nn.Module,  # (x_in, c_noise) -> logits, e.g. the time-dependent WideResNet
    sde: SDE,  # the process whose perturbed data the classifier must recognise
    x0: Tensor,  # clean data [B, C, H, W]
    labels: Tensor,  # class indices [B]
    generator: torch.Generator | None = None,
    t: Tensor | None = None,
    eps: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Cross-entropy of a noise-aware classifier on x_t ~ p_t(x | x_0): (per-example loss, correct?, t)."""
    t = sde.train_times(x0.shape[0], generator, x0.device) if t is None else t
    eps = randn_like(x0, generator) if eps is None else eps
    mean, std = sde.marginal(t)
    x_t = append_dims(mean, x0.ndim) * x0 + append_dims(std, x0.ndim) * eps
    logits = classifier(*precondition_input(x_t, t, sde))
    loss = nn.functional.cross_entropy(logits, labels, reduction="none")
    return loss, (logits.argmax(dim=1) == labels), t


def eps_loss(model: ScoreModel, x0: Tensor, generator: torch.Generator | None = None, class_labels: Tensor | None = None) -> Tensor:
    """DDPM's simple loss ||eps_hat - eps||^2: DSM with lambda(t) = std(t)^2 on the SDE's training times."""
    return dsm_loss(model, x0, generator, "eps", class_labels)


def __getattr__(name: str) -> tuple[str, ...]:
    """``WEIGHTINGS``, the names that lived here before the weightings became a registry: read from it."""
    if name == "WEIGHTINGS":  # code written before the refold imports it from here
        from diffusers_cli.engine.weightings import WEIGHTINGS

        return tuple(WEIGHTINGS)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
