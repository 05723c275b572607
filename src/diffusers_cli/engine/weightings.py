"""WEIGHTINGS, the one registry of loss weightings lambda(t) of denoising score matching (EDM's loss style).

Each entry is a small callable on the eps-space error ||std * s(x_t, t) + eps||^2 (averaged over pixels), which is
the same quantity whatever the network predicts, so a weighting means the same for every parameterisation. The
config's choices, `diffuse train --loss-weighting`'s help and the tests read this dict; no torch at import, so the
command line lists the names without loading it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from diffusers_cli.engine.options import registry_entry  # torch-free, as this module must stay

if TYPE_CHECKING:
    from torch import Tensor

    from diffusers_cli.engine.sde import SDE


@dataclass(frozen=True)
class WeightingInputs:
    """What a weighting may look at besides the error: the process and the noise level of each example."""

    sde: "SDE"               # the process being trained
    x0: "Tensor"             # the clean batch [B, ...] (its shape and device; the likelihood weighting's g(t))
    t: "Tensor"              # the training times [B]
    mean: "Tensor"           # the marginal's mean scale at t [B]
    std: "Tensor"            # the marginal's std at t [B]
    min_snr_gamma: float     # the min-snr weighting's cap on the signal-to-noise ratio


@dataclass(frozen=True)
class Weighting:
    """One loss weighting: ``apply(err, inputs)`` is the per-example loss; ``description`` is its line of help."""

    apply: Callable[["Tensor", WeightingInputs], "Tensor"]
    description: str


def _eps(err: Tensor, w: WeightingInputs) -> Tensor:
    return err


def _edm(err: Tensor, w: WeightingInputs) -> Tensor:
    from diffusers_cli.engine.score import SIGMA_DATA

    # lambda = std^2 (1 + sigma^2 / sigma_data^2): the squared error of EDM's F-target, O(1) at every level.
    return err * (1.0 + (w.std / w.mean) ** 2 / SIGMA_DATA**2)


def _likelihood(err: Tensor, w: WeightingInputs) -> Tensor:
    # lambda(t) = g(t)^2 makes the loss an upper bound on the negative log-likelihood (Song et al. 2021b).
    _, g = w.sde.drift_diffusion(w.x0[:1], w.t)
    return err * g**2 / w.std**2


def _min_snr(err: Tensor, w: WeightingInputs) -> Tensor:
    # Min-SNR-gamma (Hang et al. 2023): the x0 error weighted by min(SNR, gamma), i.e. the eps error by
    # min(SNR, gamma) / SNR.
    snr = (w.mean / w.std) ** 2
    return err * snr.clamp(max=w.min_snr_gamma) / snr


DEFAULT_WEIGHTING = "edm"
#: Every loss weighting by name. A new weighting is one function and one line here.
WEIGHTINGS: dict[str, Weighting] = {
    "edm": Weighting(_edm, "unit weight on EDM's network target, O(1) at every noise level (the default)"),
    "eps": Weighting(_eps, "DDPM's simple loss: the eps-prediction error, lambda = std^2"),
    "likelihood": Weighting(_likelihood, "lambda = g^2, a bound on the negative log-likelihood (Song et al. 2021b)"),
    "min-snr": Weighting(_min_snr, "the x0 error capped at SNR gamma (Hang et al. 2023; --set min_snr_gamma=5)"),
}


def check_weighting(name: str) -> Weighting:
    """The weighting called ``name``; ValueError naming the known ones otherwise."""
    return registry_entry(WEIGHTINGS, name, "loss weighting", error=ValueError)
