"""torchrun + DDP on the CPU (gloo): 2 processes equal 1 process with the same global batch, and resume across world sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from test_scale import MICRO_TOL
from typer.testing import CliRunner

from diffusers_cli.checkpoints.weights import load_weights
from diffusers_cli.cli import app

runner = CliRunner()

ARGS = ["train", "--image-size", "8", "--batch-size", "8", "--set", "data.num_examples=64", "--set", "network.base_channels=16",
        "--set", "sampler.name=ddpm", "--set", "sampler.steps=2", "--set", "sample_n=2", "--set", "data.flip=true",
        "--set", "optim.warmup=2", "--device", "cpu", "--sample-every", "0"]


def invoke(*args: object) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_two_processes_equal_one_and_resume_with_one(tmp_path: Path) -> None:
    # The one-process runs go in this process (one thread, conftest.py): only the 2-process run needs torchrun.
    single = invoke(*ARGS, "--steps", "4", "--out", tmp_path, "--name", "one")
    assert single.exit_code == 0, single.stderr
    dist = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "diffusers_cli", *ARGS, "--steps", "4", "--out", str(tmp_path), "--name", "two", "--json"])
    assert dist.returncode == 0, dist.stderr
    # Each rank read (and would decode) only its half of every global batch: 4 steps x 4 of 8 examples.
    summaries = [json.loads(line) for line in dist.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1 and summaries[0]["examples_read"] == [16, 16], dist.stdout  # rank 0 alone reports
    w1, m1 = load_weights(tmp_path / "one" / "model.safetensors")
    w2, m2 = load_weights(tmp_path / "two" / "model.safetensors")
    assert m1["step"] == m2["step"] == 4
    worst = max((w1[k] - w2[k]).abs().max().item() for k in w1)
    assert worst < 1e-5, worst  # same data, noise and flips per example; only the reduction order differs
    # Micro-batches under torchrun: each rank runs its 4 examples in chunks of 2, and the weights are still one pass's
    # (the same tolerance as one process's micro-batches, tests/test_scale.py: only the order of float sums differs).
    micro = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                 "-m", "diffusers_cli", *ARGS, "--steps", "4", "--out", str(tmp_path), "--name", "two-micro",
                 "--micro-batch", "2"])
    assert micro.returncode == 0, micro.stderr
    wm, _ = load_weights(tmp_path / "two-micro" / "model.safetensors")
    assert max((w1[k] - wm[k]).abs().max().item() for k in w1) < MICRO_TOL
    # The agreement is meaningful: two more training steps move the weights far more than the 1-vs-2 gap.
    short = invoke(*ARGS, "--steps", "2", "--out", tmp_path, "--name", "short")
    assert short.exit_code == 0, short.stderr
    w0, _ = load_weights(tmp_path / "short" / "model.safetensors")
    moved = max((w1[k] - w0[k]).abs().max().item() for k in w1)
    assert moved > 100 * max(worst, 1e-7), (moved, worst)

    # Resume the 2-process run with 1 process: it continues from step 4 and matches the 1-process run continued alike.
    for name in ("one", "two"):
        res = invoke("train", "--resume", "--out", tmp_path, "--name", name, "--steps", "6")
        assert res.exit_code == 0, res.stderr
    r1, _ = load_weights(tmp_path / "one" / "model.safetensors")
    r2, meta = load_weights(tmp_path / "two" / "model.safetensors")
    assert meta["step"] == 6
    assert max((r1[k] - r2[k]).abs().max().item() for k in r1) < 1e-4


@pytest.mark.slow
def test_sampling_sharded_over_two_processes_gives_the_same_images(tiny_run: Path, tmp_path: Path) -> None:
    """6 images in batches of 4 over 2 ranks (uneven shares): the same grid as one process makes."""
    common = ["sample", "--model", str(tiny_run), "--sampler", "ddpm", "--steps", "3", "-n", "6", "--batch-size", "4", "--device", "cpu"]
    one = run([sys.executable, "-m", "diffusers_cli", *common, "--out", str(tmp_path / "one.png")])
    assert one.returncode == 0, one.stderr
    two = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "diffusers_cli", *common, "--out", str(tmp_path / "two.png")])
    assert two.returncode == 0, two.stderr
    assert (tmp_path / "one.png").read_bytes() == (tmp_path / "two.png").read_bytes()
