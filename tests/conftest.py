"""Shared fixtures: a tiny trained run (8x8 shapes) reused by CLI, sampling, imputation and evaluation tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"

# One thread: the tests use tiny tensors, where thread start-up costs more than it buys, and
# subprocess tests (torchrun, Ctrl-C) run beside the main process on a 2-core machine.
torch.set_num_threads(1)


def tiny_train_config(tmp: Path, **over: Any) -> Any:
    """A TrainConfig that trains in seconds on 8x8 shapes."""
    from diffusers_cli.config.schema import TrainConfig

    data = {
        "data": {"dataset": "shapes", "image_size": 8, "num_examples": 64},
        "network": {"preset": "tiny", "base_channels": 16},
        "steps": 6, "batch_size": 8, "log_every": 1, "sample_every": 0, "checkpoint_every": 100,
        "sample_n": 4, "sampler": {"name": "ddpm", "steps": 4}, "out": str(tmp), "name": "tiny", "device": "cpu",
        "optim": {"warmup": 2, "lr": 1e-3},
    }
    for key, value in over.items():
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return TrainConfig.model_validate(data)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained tiny score model's run directory (shared, read-only for tests)."""
    from diffusers_cli.jobs.train import train

    tmp = tmp_path_factory.mktemp("runs")
    result = train(tiny_train_config(tmp, steps=20))
    return result.run_dir


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained tiny time-dependent classifier for the tiny run's SDE and 8x8 shapes."""
    from diffusers_cli.jobs.train import train

    tmp = tmp_path_factory.mktemp("clf")
    cfg = tiny_train_config(tmp, steps=10, task="classifier", name="clf", **{"classifier.preset": "wrn-10-2", "classifier.widen": 1})
    return train(cfg).run_dir


def registered_sdes() -> dict[str, Any]:
    """Every SDE kind of the config registry, built with its defaults, plus the cosine-schedule VP variant.

    Tests that must hold for every SDE parametrise over this, so a new kind is covered the moment it is registered.
    """
    from diffusers_cli.config.sde import SDE_CONFIGS, VPConfig

    sdes = {cls().kind: cls().build() for cls in SDE_CONFIGS}
    sdes["vp-cosine"] = VPConfig(schedule="cosine").build()
    return sdes


# ---- what a command wrote, against what the engine makes with the same per-image generators ----


def png_pixels(path: Path) -> Any:
    """A PNG's pixels as a uint8 array [H, W, C] (or [H, W] for greyscale)."""
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(path))


def grid_pixels(images: torch.Tensor) -> Any:
    """The uint8 pixels [H, W, C] of the grid PNG that `diffuse sample|condition` writes for images in [-1, 1]."""
    from diffusers_cli.support.image_grids import make_grid

    return make_grid(images).permute(1, 2, 0).numpy()


def engine_draw(sde: Any, score_fn: Any, shape: tuple[int, ...], n: int, sampler: str, steps: int, seed: int = 0,
                first: int = 0, **kwargs: Any) -> torch.Tensor:
    """Images first .. first + n - 1 of a job seeded with ``seed``, drawn by the engine's ``sample`` in one batch."""
    from diffusers_cli.engine.rng import ImageGenerators
    from diffusers_cli.engine.samplers import sample

    gens = ImageGenerators.for_images(seed, first, n)
    return sample(sde, score_fn, (n, *shape), sampler, steps, gens, **kwargs)
