"""Reading images with an independent judge (`builtin:mnist-judge`): which class each is, and how sure it is.

A lesson or benchmark asks "how many samples are recognisable digits?" here rather than of the classifier that
steered them, which would grade its own guidance. The judge is a plain CNN of clean images
(``engine.networks.judge``); its card carries its recipe and held-out accuracy.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor

from diffusers_cli.checkpoints.card import ModelCard
from diffusers_cli.engine.networks.judge import Judge, class_probabilities
from diffusers_cli.models import resolve_model_path
from diffusers_cli.models.ours import load_net
from diffusers_cli.support.errors import UsageError

#: The judge used when none is named.
DEFAULT_JUDGE = "builtin:mnist-judge"


@lru_cache(maxsize=4)
def load_judge(model: str | Path = DEFAULT_JUDGE) -> tuple[Judge, ModelCard]:
    """The judge network (float32, eval mode) and its card, read once per process: ``builtin:NAME`` or a file.

    CheckpointError (a UsageError: exit 2, one line) when the file is missing, damaged, or holds no judge.
    """
    path = resolve_model_path(str(model))
    if path.is_dir():
        raise UsageError(f"{model} is a folder; a judge is one .safetensors file (e.g. {DEFAULT_JUDGE})")
    net, card = load_net(path, "judge")
    assert isinstance(net, Judge)  # the card's arch "judge" builds a Judge (models.ours.NETWORKS)
    return net.float(), card


def judge(images: Tensor, model: str | Path = DEFAULT_JUDGE) -> tuple[Tensor, Tensor]:
    """(classes [n], confidence [n]) the judge gives images [n, C, H, W] in [-1, 1], as ``dc.sample`` returns them.

    A class is an index into the judge's ``card.class_names``; the last one is "none" (not plainly any class).
    The benchmarks and lessons count an image as recognised when its class is not "none" and confidence >= 0.9.
    """
    net, card = load_judge(model)
    if images.dim() != 4 or tuple(images.shape[1:]) != card.image_shape:
        raise UsageError(f"{model} reads images [n, {', '.join(map(str, card.image_shape))}]; got {list(images.shape)}")
    with torch.no_grad():
        p = class_probabilities(net, images.detach().to("cpu", torch.float32))
    confidence, classes = p.max(dim=1)
    return classes, confidence
