"""diffusers folders as our score models: a pipeline (model_index.json, unet/, scheduler/) or a bare UNet2DModel.

The scheduler's config fixes the forward process the net was trained for, and so its score:
- the DDPM family (DDPM, DDIM, PNDM, DPM-Solver, ... schedulers) is our discrete DDPM chain with exactly
  the scheduler's betas; the net takes raw x and the chain's step (``engine.score.timestep_input``), and
  its ``prediction_type`` (epsilon, v_prediction, sample) is our eps, v or x0 parameterisation;
- ``ScoreSdeVeScheduler`` is our VE SDE. Its nets (score_sde's NCSN++) see images in [0, 1] and return the
  score (ScoreSdeVePipeline steps with ``unet(x, sigma).sample`` as grad log p); our images live in
  [-1, 1], twice as wide, so our sigmas are twice the scheduler's and the adapter maps x and the output.
Anything else (text-conditional or latent pipelines, class embeddings, other schedulers) is refused in one line.
The card is read from the JSON files alone; diffusers is imported only to build the network.
"""

from __future__ import annotations

import json
import logging
from pickle import UnpicklingError  # the error class only: nothing here unpickles (torch.load(weights_only=True) does)
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from diffusers_cli import __version__
from diffusers_cli.checkpoints.card import CheckpointError, ModelCard
from diffusers_cli.checkpoints.weights import load_into
from diffusers_cli.config.sde import DDPMConfig, VEConfig
from diffusers_cli.models import hub
from diffusers_cli.models.extra import require

log = logging.getLogger("diffusers_cli")

INDEX = "model_index.json"
CONFIG = "config.json"
SCHEDULER_CONFIG = "scheduler_config.json"
WEIGHTS = "diffusion_pytorch_model"
#: Pipeline components that make a pipeline one diffuse cannot run, and what each means.
UNSUPPORTED_COMPONENTS = {
    "vae": "latent (a VAE)", "vqvae": "latent (a VQ-VAE)", "movq": "latent (a MoVQ)",
    "text_encoder": "text-conditional", "text_encoder_2": "text-conditional", "tokenizer": "text-conditional",
    "image_encoder": "image-conditional",
}
#: diffusers' prediction_type -> our parameterisation (engine.score.output_to_score).
PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
#: Scheduler settings that shape sampling only (diffuse's own samplers replace them); recorded, not used.
SAMPLING_ONLY = ("clip_sample", "clip_sample_range", "thresholding", "timestep_spacing", "steps_offset", "set_alpha_to_one")


class UnsupportedModelError(CheckpointError):
    """A diffusers model diffuse cannot map onto a score model (text-conditional, latent, class embeddings, ...)."""


@dataclass(frozen=True)
class Layout:
    """Where the parts of a diffusers model are."""

    root: Path  # the folder --model named
    unet: Path  # the UNet2DModel folder: config.json and weights
    scheduler: Path  # its scheduler_config.json
    pipeline: str | None  # model_index.json's pipeline class, None for a bare UNet folder


@dataclass(frozen=True)
class Mapped:
    """What a scheduler config makes of the net: our SDE, how the net's output and inputs read."""

    sde: dict[str, Any]  # an SDE config (config.SDE_CONFIGS) as the card stores it
    parameterization: str  # eps, v, x0 or score
    noise_input: str  # "timestep" (the chain's step) or "std" (the noise std itself): engine.score.NET_INPUTS
    data_range: str  # "[-1,1]" (DDPM pipelines) or "[0,1]" (score_sde's VE models)
    provenance: dict[str, Any]  # what the card's extra records of the scheduler


def is_diffusers_folder(path: Path) -> bool:
    """A pipeline folder (model_index.json) or a bare model folder (config.json)."""
    return (path / INDEX).is_file() or (path / CONFIG).is_file()


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} is not readable JSON ({err}); is the diffusers folder complete?") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a JSON object; is it a diffusers config?")
    return data


def layout(path: Path) -> Layout:
    """The unet and scheduler folders of a pipeline or a bare UNet folder; refuses pipelines diffuse cannot run."""
    index = path / INDEX
    if index.is_file():
        meta = _json(index)
        pipeline = str(meta.get("_class_name", "a pipeline"))
        present = [k for k, v in meta.items() if not k.startswith("_") and isinstance(v, list) and v and v[0] is not None]
        bad = [k for k in present if k in UNSUPPORTED_COMPONENTS]
        if bad:
            kinds = " and ".join(dict.fromkeys(UNSUPPORTED_COMPONENTS[k] for k in bad))
            raise UnsupportedModelError(
                f"{path}: {pipeline} is a {kinds} pipeline ({', '.join(bad)}), which diffuse does not support; "
                "use a pixel-space UNet2DModel pipeline (DDPM, DDIM, PNDM, score-SDE VE)")
        if "unet" not in present:
            raise UnsupportedModelError(f"{path}: {pipeline} has no unet (it holds {', '.join(present) or 'nothing'}); "
                                        "diffuse reads pipelines of a UNet2DModel and a scheduler")
        scheduler = path / "scheduler" / SCHEDULER_CONFIG
        if not scheduler.is_file():
            raise CheckpointError(f"{path}: the pipeline has no {scheduler.relative_to(path)}; is the download complete?")
        return Layout(path, path / "unet", scheduler, pipeline)
    for candidate in (path / SCHEDULER_CONFIG, path / "scheduler" / SCHEDULER_CONFIG, path.parent / "scheduler" / SCHEDULER_CONFIG):
        if candidate.is_file():
            return Layout(path, path, candidate, None)
    raise CheckpointError(f"{path} holds a model config but no {SCHEDULER_CONFIG} beside it (nor in scheduler/); copy the "
                          "scheduler config of its pipeline there: its betas and prediction type define the model's score")


def unet_config(lay: Layout) -> dict[str, Any]:
    """The UNet2DModel config; refuses other networks, class embeddings and timestep embeddings we cannot feed."""
    file = lay.unet / CONFIG
    if not file.is_file():
        raise CheckpointError(f"{lay.root}: no {file.relative_to(lay.root) if lay.unet != lay.root else CONFIG}; is the download complete?")
    cfg = _json(file)
    cls = cfg.get("_class_name")
    where = f"{lay.root}: {'unet/' if lay.unet != lay.root else ''}{CONFIG}"
    if cls == "UNet2DConditionModel":
        raise UnsupportedModelError(f"{where} is a UNet2DConditionModel, a text-conditional network (cross-attention on "
                                    "prompt embeddings), which diffuse does not support; use an unconditional UNet2DModel")
    if cls != "UNet2DModel":
        raise UnsupportedModelError(f"{where} is a {cls or 'model without _class_name'}, which diffuse does not support; "
                                    "it reads UNet2DModel networks")
    if cfg.get("class_embed_type") is not None or cfg.get("num_class_embeds") is not None:
        raise UnsupportedModelError(
            f"{where}: a UNet2DModel with class embeddings (class_embed_type={cfg.get('class_embed_type')!r}, "
            f"num_class_embeds={cfg.get('num_class_embeds')!r}) is not supported: its labels cannot be mapped onto diffuse's "
            "classes (it has no 'no class' label for guidance); use an unconditional UNet2DModel")
    if cfg.get("time_embedding_type", "positional") == "learned":
        raise UnsupportedModelError(f"{where}: time_embedding_type 'learned' is not supported: it takes integer steps only, "
                                    "and diffuse's samplers evaluate the net between them")
    if cfg.get("sample_size") is None:
        raise CheckpointError(f"{where} names no sample_size, so the image size is unknown; add it to the config")
    cin, cout = int(cfg.get("in_channels", 3)), int(cfg.get("out_channels", 3))
    if cout not in (cin, 2 * cin):
        raise UnsupportedModelError(f"{where}: {cin} input and {cout} output channels; diffuse reads nets whose output is "
                                    "shaped like the image (or twice that, with a learned variance)")
    return cfg


# ---- schedulers: the forward process the net was trained for ------------------------------------


def _clean(value: float) -> float:
    """beta_start * T with the rounding noise removed (1e-4 * 1000 is 0.1, the name of our default)."""
    return float(f"{value:.12g}")


def _scaled_linear(b0: float, b1: float, n: int) -> list[float]:
    return (torch.linspace(b0**0.5, b1**0.5, n, dtype=torch.float32) ** 2).double().tolist()


def _sigmoid(b0: float, b1: float, n: int) -> list[float]:
    return (torch.sigmoid(torch.linspace(-6, 6, n)) * (b1 - b0) + b0).double().tolist()


#: diffusers beta schedules we hold as a table, computed as diffusers computes them (float32).
BETA_TABLES: dict[str, Callable[[float, float, int], list[float]]] = {"scaled_linear": _scaled_linear, "sigmoid": _sigmoid}


def ddpm_chain(cfg: dict[str, Any], unet: dict[str, Any], where: str) -> Mapped:
    """A DDPM-family scheduler config as our discrete chain with the same betas (and T = num_train_timesteps)."""
    name = cfg["_class_name"]
    if unet.get("time_embedding_type") == "fourier":
        raise UnsupportedModelError(f"{where}: a Fourier-embedding UNet2DModel takes the noise std, not the timesteps of "
                                    f"{name}; diffuse reads it only with ScoreSdeVeScheduler")
    if cfg.get("rescale_betas_zero_snr"):
        raise UnsupportedModelError(f"{where}: {name} with rescale_betas_zero_snr (zero terminal SNR) is not supported: "
                                    "its last step has no noise-free prior for the SDE samplers")
    prediction = cfg.get("prediction_type") or "epsilon"
    if prediction not in PREDICTIONS:
        raise UnsupportedModelError(f"{where}: prediction_type {prediction!r} of {name} is not supported; "
                                    f"diffuse maps {', '.join(PREDICTIONS)}")
    n = int(cfg.get("num_train_timesteps") or 1000)
    b0, b1 = float(cfg.get("beta_start", 1e-4)), float(cfg.get("beta_end", 0.02))
    schedule = cfg.get("beta_schedule") or "linear"
    trained = cfg.get("trained_betas")
    try:
        if trained is not None:
            sde = DDPMConfig(betas=torch.tensor(trained, dtype=torch.float32).double().tolist())
            schedule = "trained_betas"
        elif schedule == "linear" and b0 < b1:
            # Our named linear chain: the same betas (in float64), and `--sde ddpm` classifiers share its card.
            sde = DDPMConfig(schedule="linear", beta_min=_clean(b0 * n), beta_max=_clean(b1 * n), num_steps=n)
        elif schedule == "squaredcos_cap_v2":  # Nichol & Dhariwal's cosine, s = 0.008, betas clipped at 0.999: ours
            sde = DDPMConfig(schedule="cosine", cosine_s=0.008, num_steps=n)
        elif schedule in BETA_TABLES or schedule == "linear":
            sde = DDPMConfig(betas=BETA_TABLES.get(schedule, lambda a, b, k: torch.linspace(a, b, k).double().tolist())(b0, b1, n))
        else:
            raise UnsupportedModelError(f"{where}: beta_schedule {schedule!r} of {name} is not supported; diffuse maps "
                                        f"linear, scaled_linear, squaredcos_cap_v2, sigmoid and trained_betas")
    except ValueError as err:  # pydantic: betas out of (0, 1)
        raise CheckpointError(f"{where}: the betas of {name} are not a valid chain ({str(err).splitlines()[-1].strip()})") from None
    ignored = {k: cfg[k] for k in SAMPLING_ONLY if k in cfg}
    return Mapped(sde.model_dump(mode="json"), PREDICTIONS[prediction], "timestep", "[-1,1]",
                  {"scheduler": name, "prediction_type": prediction, "beta_schedule": schedule, "num_train_timesteps": n,
                   "beta_start": b0, "beta_end": b1, "variance_type": cfg.get("variance_type"),
                   "sampling_settings_not_used": ignored})


def score_sde_ve(cfg: dict[str, Any], unet: dict[str, Any], where: str) -> Mapped:
    """ScoreSdeVeScheduler: our VE SDE with twice its sigmas (images in [-1, 1], not [0, 1]); the net's output is the score."""
    smin, smax = float(cfg.get("sigma_min", 0.01)), float(cfg.get("sigma_max", 1348.0))
    try:
        sde = VEConfig(sigma_min=2 * smin, sigma_max=2 * smax)
    except ValueError:
        raise CheckpointError(f"{where}: sigma_min {smin} and sigma_max {smax} are not a VE SDE (need 0 < min < max)") from None
    return Mapped(sde.model_dump(mode="json"), "score", "std", "[0,1]",
                  {"scheduler": cfg["_class_name"], "sigma_min": smin, "sigma_max": smax,
                   "num_train_timesteps": cfg.get("num_train_timesteps"), "sampling_eps": cfg.get("sampling_eps"),
                   "data_range": "[0,1] (score_sde's VE models; diffuse maps its [-1,1] images onto it)"})


_DDPM_FAMILY = ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
                "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "LMSDiscreteScheduler",
                "UniPCMultistepScheduler", "DEISMultistepScheduler")
#: The diffusers schedulers whose config defines a net's forward process, each with the function that maps it.
SCHEDULERS: dict[str, Callable[[dict[str, Any], dict[str, Any], str], Mapped]] = {
    **{name: ddpm_chain for name in _DDPM_FAMILY},
    "ScoreSdeVeScheduler": score_sde_ve,
}


def map_scheduler(lay: Layout, unet: dict[str, Any]) -> Mapped:
    """Our SDE and parameterisation for the model's scheduler config; refuses schedulers we do not map."""
    cfg = _json(lay.scheduler)
    name = str(cfg.get("_class_name"))
    where = f"{lay.root}: {lay.scheduler.relative_to(lay.root) if lay.scheduler.is_relative_to(lay.root) else lay.scheduler}"
    if name not in SCHEDULERS:
        raise UnsupportedModelError(f"{where}: scheduler {name} is not supported; diffuse maps the DDPM family "
                                    f"({', '.join(_DDPM_FAMILY)}) and ScoreSdeVeScheduler")
    return SCHEDULERS[name](cfg, unet, where)


# ---- weights ------------------------------------------------------------------------------------


def weights_file(folder: Path) -> tuple[Path, str]:
    """The weights of a UNet folder and their format: safetensors (preferred), sharded safetensors, or a .bin state dict."""
    for name, kind in ((f"{WEIGHTS}.safetensors", "safetensors"), (f"{WEIGHTS}.safetensors.index.json", "safetensors (sharded)"),
                       (f"{WEIGHTS}.bin", "bin")):
        if (folder / name).is_file():
            return folder / name, kind
    others = sorted(p.name for p in folder.glob(f"{WEIGHTS}*")) if folder.is_dir() else []
    hint = f" (it has {', '.join(others)}; diffuse reads the full-precision file)" if others else ""
    raise CheckpointError(f"{folder} holds no {WEIGHTS}.safetensors or .bin{hint}; is the download complete?")


def read_weights(file: Path, kind: str) -> dict[str, Tensor]:
    """The state dict: safetensors as is; a .bin only through torch.load(weights_only=True), which unpickles no code."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        if kind == "safetensors":
            return load_file(str(file))
        if kind == "safetensors (sharded)":
            shards = sorted(set(_json(file).get("weight_map", {}).values()))
            state: dict[str, Tensor] = {}
            for shard in shards:
                state.update(load_file(str(file.parent / shard)))
            return state
        state = torch.load(file, map_location="cpu", weights_only=True)
    except (SafetensorError, OSError, RuntimeError, ValueError, EOFError, UnpicklingError) as err:
        raise CheckpointError(f"{file} is not a readable state dict ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                              "is it corrupt or truncated?") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{file} is not a plain state dict of tensors")
    return state


# ---- the card and the network -----------------------------------------------------------------


def _dataset_guess(name: str) -> str:
    """A dataset of ours the model's name mentions (google/ddpm-cifar10-32: cifar10), else "unknown"."""
    from diffusers_cli.data.registry import DATASETS

    text = "-" + re.sub(r"[^a-z0-9]+", "-", name.lower()) + "-"
    names = sorted({n for spec in DATASETS.values() for n in (spec.name, *spec.aliases)}, key=len, reverse=True)
    return next((n for n in names if f"-{n}-" in text and n != "folder"), "unknown")


def read_card(path: Path) -> ModelCard:
    """The card of a diffusers folder, from its JSON files alone (no weights read, diffusers not imported)."""
    lay = layout(path)
    unet = unet_config(lay)
    mapped = map_scheduler(lay, unet)
    size = unet["sample_size"]
    h, w = (int(size), int(size)) if isinstance(size, (int, float)) else (int(size[0]), int(size[1]))
    file, kind = weights_file(lay.unet)
    origin = hub.provenance(path) or {"model": str(path)}
    name = origin["model"]
    extra = {
        **origin,
        "pipeline": lay.pipeline,
        "diffusers_version": unet.get("_diffusers_version"),
        "weights": str(file.relative_to(path)) if file.is_relative_to(path) else str(file),
        "weights_format": "bin, read with torch.load(weights_only=True)" if kind == "bin" else kind,
        "dataset": "guessed from the name" if _dataset_guess(name) != "unknown" else "not recorded by diffusers",
        **mapped.provenance,
    }
    return ModelCard(
        kind="score", arch="diffusers",
        network={"unet": {k: v for k, v in unet.items() if k != "_name_or_path"}, "noise_input": mapped.noise_input,
                 "data_range": mapped.data_range},
        sde=mapped.sde, image_shape=(int(unet.get("in_channels", 3)), h, w), class_names=(), dataset=_dataset_guess(name),
        parameterization=mapped.parameterization, step=0, ema_updates=0, source="diffusers", package_version=__version__,
        extra=extra,
    )


class DiffusersUNet(nn.Module):
    """A diffusers UNet2DModel as one of our networks: (x_in, c_noise, class_labels) -> what its ScoreModel reads.

    ``net_inputs`` tells ScoreModel how to feed it (engine.score.NET_INPUTS): the chain's step or the noise std.
    """

    def __init__(
        self,
        unet: dict[str, Any],  # the UNet2DModel config (its config.json)
        noise_input: str = "timestep",  # "timestep": DDPM-family nets; "std": score_sde's VE nets
        data_range: str = "[-1,1]",  # the images the net was trained on: "[-1,1]", or "[0,1]" (score_sde VE)
    ) -> None:
        super().__init__()
        if noise_input not in ("timestep", "std") or data_range not in ("[-1,1]", "[0,1]"):
            raise ValueError(f"unknown noise_input {noise_input!r} or data_range {data_range!r}")
        require("diffusers", "a diffusers model")
        from diffusers import UNet2DModel

        self.unet = UNet2DModel.from_config(unet)
        self.config: dict[str, Any] = {"unet": dict(unet), "noise_input": noise_input, "data_range": data_range}
        self.net_inputs = noise_input
        self.channels = int(unet.get("in_channels", 3))

    def forward(self, x_in: Tensor, c_noise: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """x [B, C, H, W] (ours, in [-1, 1]), the step or std [B] -> eps/v/x0, or std * score."""
        if class_labels is not None and bool((class_labels >= 0).any()):
            raise ValueError("class labels given to an unconditional diffusers UNet2DModel")
        if self.config["data_range"] == "[0,1]":
            # score_sde's frame: x' = (x + 1) / 2 has half our noise std, and its score is twice ours. The net
            # returns grad' log p; std' grad' = std grad, which is what the "score" parameterisation reads.
            sigma = (c_noise / 2).to(x_in.dtype)
            out = self.unet((x_in + 1) / 2, sigma).sample
            return out[:, : self.channels] * sigma.view(-1, *([1] * (x_in.ndim - 1)))
        out = self.unet(x_in, c_noise).sample
        return out[:, : self.channels]  # a learned-variance net's first C channels are its prediction


def load(path: Path) -> tuple[DiffusersUNet, ModelCard]:
    """The network (weights loaded, eval mode) and card of a diffusers folder."""
    card = read_card(path)
    lay = layout(path)
    file, kind = weights_file(lay.unet)
    net = DiffusersUNet(**card.network)
    state = read_weights(file, kind)
    fix = getattr(net.unet, "_fix_state_dict_keys_on_load", None)  # diffusers' renames of old attention weights
    if fix is not None:
        state = fix(dict(state)) or state
    load_into(net.unet, {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, file)
    if kind == "bin":
        log.warning(f"note: {file} is a .bin state dict (no safetensors beside it): read with torch.load(weights_only=True), "
                    "which loads tensors only")
    return net.eval(), replace(card, extra={**card.extra, "weights_loaded": str(file)})
