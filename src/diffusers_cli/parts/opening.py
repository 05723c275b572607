"""Opening a model, once for every job that reads one (sample, condition, impute, evaluate, tune).

A job hands over its ``ModelSource`` (the config fields ``model``, ``download``, ``device``, ``use_ema``,
``runs_dir``); ``locate`` resolves it and reads the card alone, ``open_model`` reads the weights. Before any
weights are read or any network is built, a card is checked against what it asks of the machine: a batch of
its images must fit the memory there is (``check_memory``), and the network it describes must have exactly its
weights' tensor shapes (``models.ours``, built on the meta device). A hostile card is then one line and exit 2,
not a 100 GB allocation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from diffusers_cli.checkpoints.card import ModelCard
from diffusers_cli.config.schema import ModelSource
from diffusers_cli.engine.score import ScoreModel
from diffusers_cli.checkpoints.weights import stored_shapes
from diffusers_cli.models import Loaded, load_score_model, read_model_card, resolve_model_path, score_model_of
from diffusers_cli.models.ours import check_card_fits
from diffusers_cli.support.errors import UsageError

#: float32 feature maps: the bytes of one activation value.
_BYTES = 4


@dataclass(frozen=True)
class Located:
    """A model's resolved place and its card, read without its weights."""

    path: Path  # the file or folder ``--model`` resolved to
    card: ModelCard


class Opened(NamedTuple):
    """A model opened for a job: where it came from, the score model (on the job's device) and its card."""

    path: Path
    model: ScoreModel
    card: ModelCard


def locate(source: ModelSource) -> Located:
    """Resolve ``source.model`` (a run, RUN@STEP, a file, a folder, hf:, builtin:) and read its card, not its weights.

    A card of ours is also checked against its weights' shapes (``models.ours.check_card_fits``: no allocation).
    """
    path = resolve_model_path(source.model, source.runs_dir, source.download)
    card = read_model_card(path)
    if not path.is_dir():
        # Our files: the card's network against the weights' shapes now, before a job's minutes of other preparation.
        online = not source.use_ema and any(k.startswith("online.") for k in stored_shapes(path))
        check_card_fits(path, card, "online" if online else "ema")
    return Located(path, card)


def activation_bytes(card: ModelCard, batch: int) -> int:
    """A lower bound on the memory one network pass over ``batch`` images of the card's shape holds at once.

    The images and their score, plus the U-Net's full-resolution skip activations (its first level's width
    times its blocks there, each kept until the decoder reads it back); deeper levels are left out, so the
    bound only refuses what cannot run.
    """
    c, h, w = card.image_shape
    net = card.network
    width = net.get("base_channels") or (net.get("block_out_channels") or [c])[0]
    blocks = net.get("num_res_blocks") or net.get("layers_per_block") or 1
    per_pixel = 2 * c + int(width) * (int(blocks) + 1)
    return batch * h * w * per_pixel * _BYTES


def available_bytes(device: torch.device) -> int:
    """Memory a job may still take: free CUDA memory on a GPU, the kernel's available RAM otherwise."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    have = _meminfo_available()
    if have is None:
        try:
            have = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):  # no such figure on this system: nothing to compare with
            have = 2**62
    # A container's memory limit (cgroup v2) binds before the host's RAM does.
    limit, used = _read_int("/sys/fs/cgroup/memory.max"), _read_int("/sys/fs/cgroup/memory.current")
    return min(have, limit - used) if limit is not None and used is not None else have


def _read_int(path: str) -> int | None:
    """An integer file of the kernel ("max" and absent files: None)."""
    try:
        with open(path, encoding="ascii") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _meminfo_available() -> int | None:
    """MemAvailable of /proc/meminfo in bytes: free RAM plus what the kernel can reclaim (None off Linux)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def _gb(n: int) -> str:
    """A size as a reader wants it: GB, MB or kB (binary), one decimal."""
    for unit, size in (("GB", 2**30), ("MB", 2**20)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n / 2**10:,.1f} kB"


def check_memory(card: ModelCard, batch: int, device: torch.device, where: Path | str) -> None:
    """UsageError (one line) when a batch of the card's images needs more memory than ``device`` has free."""
    need = activation_bytes(card, batch)
    have = available_bytes(device)
    if need > have:
        c, h, w = card.image_shape
        one = activation_bytes(card, 1)
        fix = ("lower --batch-size" if one <= have else
               "no batch size fits: the card's image shape is not one this machine can sample; check where the file came from")
        machine = "the GPU" if device.type == "cuda" else "this machine"
        raise UsageError(f"{where} makes {c}x{h}x{w} images: a batch of {batch} needs at least {_gb(need)} but {machine} "
                         f"has {_gb(have)} available; {fix}")


def open_model(source: ModelSource, device: torch.device, batch: int | None = None, loaded: Loaded | None = None,
               located: Located | None = None) -> Opened:
    """The score model ``source`` names (or ``loaded``, the Python face's), checked and on ``device``.

    ``batch``: images per network pass; the card must fit them in memory before anything is read (None: no
    check, for a job that runs no batch). ``located``: ``locate(source)`` already done by the job.
    """
    if loaded is not None:
        path, model, card = loaded.path, score_model_of(loaded), loaded.card
        if batch is not None:
            check_memory(card, batch, device, loaded.spec)
    else:
        located = located or locate(source)
        if batch is not None:
            check_memory(located.card, batch, device, source.model or located.path)
        model, card = load_score_model(located.path, source.use_ema, checked=True)
        path = located.path
    return Opened(path, model.to(device), card)
