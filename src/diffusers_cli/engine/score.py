"""Network output <-> score: the eps, v, score and x0 parameterisations and the networks' input conventions, in one place."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from diffusers_cli.engine.choices import Parameterization, names
from diffusers_cli.engine.sde import SDE
from diffusers_cli.engine.utils import append_dims

#: (x [B, C, H, W], t [B]) -> grad_x log p_t(x): what every sampler, guidance and imputation takes.
ScoreFn = Callable[[Tensor, Tensor], Tensor]
PARAMETERIZATIONS: tuple[str, ...] = names(Parameterization)

#: Assumed data std for input scaling (EDM's sigma_data); images live in [-1, 1].
SIGMA_DATA = 0.5


def output_to_score(out: Tensor, x: Tensor, mean: Tensor, std: Tensor, parameterization: str) -> Tensor:
    """Turn a network output at x_t into the score, given the marginal's mean and std at t ([B] each)."""
    m, s = append_dims(mean, x.ndim), append_dims(std, x.ndim)
    if parameterization == "eps":  # out predicts the noise: score = -eps / std
        return -out / s
    if parameterization == "score":  # out is std * score (NCSN++'s scale-by-sigma), well scaled at all t
        return out / s
    if parameterization == "x0":  # out predicts the clean image: score = (m x0 - x) / std^2
        return (m * out - x) / (s * s)
    if parameterization == "v":  # Salimans & Ho 2022, v = m eps - s x0 with x = m x0 + s eps: eps = (s x + m v) / (m^2 + s^2)
        return -(s * x + m * out) / ((m * m + s * s) * s)
    if parameterization == "edm":  # Karras et al. 2022: x0 = c_skip x/m + c_out out, in sigma = std/m
        c_skip, c_out = edm_coefficients(s / m)
        return (m * (c_skip * x / m + c_out * out) - x) / (s * s)
    raise ValueError(f"unknown parameterization {parameterization!r}; use one of {PARAMETERIZATIONS}")


def precondition_input(x: Tensor, t: Tensor, sde: SDE) -> tuple[Tensor, Tensor]:
    """Network inputs at (x_t, t): x scaled to unit variance at every noise level, and the noise label."""
    mean, std = sde.marginal(t)
    # Unit-variance inputs whatever the SDE (VE reaches std 50); score models and classifiers share this.
    c_in = torch.rsqrt((mean * SIGMA_DATA) ** 2 + std**2)
    return x * append_dims(c_in, x.ndim).to(x.dtype), sde.noise_label(t).to(x.dtype)


def timestep_input(x: Tensor, t: Tensor, sde: SDE) -> tuple[Tensor, Tensor]:
    """Inputs of a net trained on a T-step chain's integer steps (diffusers' DDPM family): x as is, and t T - 1.

    The chain's step k (0-based, as diffusers counts) is our time t = (k + 1) / T, so a grid on the
    training steps feeds the net exactly the integers it was trained on; between them the net sees
    fractional steps, as DPM-Solver's discrete-time wrapper feeds it ((t - 1/N) 1000 for N = 1000).
    """
    num_steps = getattr(sde, "num_steps", None)
    if num_steps is None:
        raise ValueError(f"a net that takes timesteps needs a discrete chain (DDPM), not {sde!r}")
    k = t.double() * num_steps - 1.0
    # Float32 grids land a few 1e-5 off the integers; the net then sees exactly the step it was trained on.
    near = k.round()
    k = torch.where((k - near).abs() < 1e-3, near, k)
    return x, k.to(x.dtype)


def std_input(x: Tensor, t: Tensor, sde: SDE) -> tuple[Tensor, Tensor]:
    """Inputs of a net conditioned on the noise std itself (score_sde's NCSN++ in diffusers): x as is, and std(t)."""
    return x, sde.marginal(t)[1].to(x.dtype)


#: How a network takes (x_t, t), by the ``net_inputs`` it declares (ours: "edm", the default): -> (x_in, c_noise).
NET_INPUTS: dict[str, Callable[[Tensor, Tensor, SDE], tuple[Tensor, Tensor]]] = {
    "edm": precondition_input,
    "timestep": timestep_input,
    "std": std_input,
}


class ScoreModel(nn.Module):
    """Preconditioning wrapper: scales inputs, feeds the noise label, and reads the output as a score.

    A network that takes other inputs than ours says so with a ``net_inputs`` attribute (a key of
    NET_INPUTS): a diffusers UNet2DModel takes raw x and a timestep, or raw x and the noise std.
    """

    def __init__(
        self,
        net: nn.Module,  # maps (x_in, c_noise [B], class_labels | None) -> output shaped like x
        sde: SDE,  # the forward process the model was trained for
        parameterization: str = "edm",  # what the network output means
    ) -> None:
        super().__init__()
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"unknown parameterization {parameterization!r}; use one of {PARAMETERIZATIONS}")
        inputs = getattr(net, "net_inputs", "edm")
        if inputs not in NET_INPUTS:
            raise ValueError(f"unknown network inputs {inputs!r}; use one of {tuple(NET_INPUTS)}")
        self.net = net
        self.sde = sde
        self.parameterization = parameterization
        self.inputs = NET_INPUTS[inputs]

    def forward(self, x: Tensor, t: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """Raw network output at (x_t, t)."""
        x_in, c_noise = self.inputs(x, t, self.sde)
        return self.net(x_in, c_noise, class_labels)

    def score(self, x: Tensor, t: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """grad_x log p_t(x) at (x, t)."""
        mean, std = self.sde.marginal(t)
        out = self(x, t, class_labels)
        return output_to_score(out, x, mean.to(out.dtype), std.to(out.dtype), self.parameterization)


def make_score_fn(model: ScoreModel, class_labels: Tensor | None = None) -> ScoreFn:
    """A ScoreFn for a trained model (optionally for fixed class labels of a conditional net)."""

    def score_fn(x: Tensor, t: Tensor) -> Tensor:
        return model.score(x, t, class_labels)

    return score_fn


def edm_coefficients(sigma: Tensor) -> tuple[Tensor, Tensor]:
    """EDM's c_skip and c_out at noise level sigma = std / mean.

    The network predicts a unit-variance blend of signal and noise at every level, so its errors
    stay O(sigma_data) in x_0 even at the highest noise, where an eps-prediction's error is
    amplified by 1 / mean (about 150 at t = 1 of the VP SDE) and derails samplers.
    """
    d2 = SIGMA_DATA**2
    return d2 / (sigma**2 + d2), sigma * SIGMA_DATA / torch.sqrt(sigma**2 + d2)


def network_evaluations(score_fn: ScoreFn) -> int:
    """Network evaluations per image that one call of ``score_fn`` costs: 1, or what the function declares.

    Classifier-free guidance evaluates the net on a batch of twice the images (conditional and "no class"), so one
    call costs 2 per image; ``engine.guidance`` says so with a ``network_evaluations`` attribute on what it returns.
    """
    return int(getattr(score_fn, "network_evaluations", 1))


class NFECounter:
    """Wraps a ScoreFn and counts score-network evaluations per image (the cost measure of every sampler).

    A plain score costs 1 a call; a classifier-free guided one 2 (``network_evaluations``), so that NFE
    compares the cost of guided and unguided runs honestly, as the papers count it.
    """

    def __init__(self, score_fn: ScoreFn) -> None:
        self.score_fn = score_fn
        self.nfe = 0
        self._per_call = network_evaluations(score_fn)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.nfe += self._per_call
        return self.score_fn(x, t)
