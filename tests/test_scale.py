"""Training at scale: micro-batches, activation checkpointing, out of memory as one line, each rank reading its share."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from conftest import tiny_train_config
from diffusers_cli.checkpoints.weights import load_weights
from diffusers_cli.cli import app
from diffusers_cli.data import load_dataset
from diffusers_cli.engine.networks.unet import UNet
from diffusers_cli.engine.objectives import ScoreObjective
from diffusers_cli.engine.score import ScoreModel
from diffusers_cli.engine.sde import VPSDE
from diffusers_cli.engine.training import EMA, batch_indices, chunks, default_generators, divisors_down, train_loop
from diffusers_cli.jobs.train import _Batches, num_workers, train
from diffusers_cli.support.distributed import World
from diffusers_cli.support.memory import out_of_memory

runner = CliRunner()

#: Micro-batches change only the order of float sums. Adam divides each gradient by its own running size, so a
#: parameter whose gradient is nearly 0 turns a last-bit difference into a fraction of a step (lr 1e-3): measured
#: after 4 tiny steps up to 7e-6 (score) and 1.8e-5 (classifier), against 2e-3 that two steps move the weights.
MICRO_TOL = 3e-5


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_weights(run_dir / "model.safetensors")[0]


def _gap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize("task", ["score", "classifier"])
def test_micro_batches_give_the_weights_of_one_pass(tmp_path: Path, task: str) -> None:
    over: dict[str, Any] = {"steps": 4, "task": task, "data.flip": True}
    if task == "classifier":
        over["classifier.preset"] = "wrn-10-2"
    first = train(tiny_train_config(tmp_path / "one", **over))
    one = _weights(first.run_dir)
    for micro in (1, 2, 4):
        res = train(tiny_train_config(tmp_path / f"m{micro}", micro_batch=micro, **over))
        assert res.extra["micro_batch"] == micro
        # The loss (and its gradient) is the mean over the whole batch, not a sum of the chunks' means
        # (which Adam, indifferent to a gradient's scale, would hide in the weights).
        assert res.loss == pytest.approx(first.loss, rel=1e-5)
        gap = _gap(one, _weights(res.run_dir))
        assert gap < MICRO_TOL, (micro, gap)
    # The agreement means something: two steps fewer move the weights far more than micro-batches do.
    short = _weights(train(tiny_train_config(tmp_path / "short", **{**over, "steps": 2})).run_dir)
    assert _gap(one, short) > 50 * MICRO_TOL


def test_micro_batch_must_divide_each_process_share(tmp_path: Path) -> None:
    base = ["train", "--image-size", "8", "--batch-size", "8", "--steps", "1", "--device", "cpu", "--out", str(tmp_path)]
    res = runner.invoke(app, [*base, "--micro-batch", "3"])
    assert res.exit_code == 2
    assert res.stderr == "diffuse: error: --micro-batch 3 must divide --batch-size 8; use a divisor (e.g. 2) or auto\n"
    res = runner.invoke(app, [*base, "--micro-batch", "three"])
    assert res.exit_code == 2
    assert res.stderr == "diffuse: error: --micro-batch expects a whole number or auto, got 'three'\n"
    res = runner.invoke(app, [*base, "--micro-batch", "0"])
    assert res.exit_code == 2 and res.stderr.count("\n") == 1 and "micro_batch" in res.stderr
    assert not tmp_path.exists() or not any(tmp_path.iterdir())  # nothing half-written


def test_chunks_and_halving() -> None:
    assert chunks(8, 3) == [slice(0, 3), slice(3, 6), slice(6, 8)]
    assert chunks(8, None) == [slice(0, 8)]
    assert list(divisors_down(256, 256)) == [256, 128, 64, 32, 16, 8, 4, 2, 1]
    assert list(divisors_down(40, 40)) == [40, 20, 10, 5, 2, 1]  # each the largest divisor at most half the last


def _unet(dropout: float, trained: bool = False) -> UNet:
    with default_generators(0, torch.device("cpu")):
        net = UNet(8, 1, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=dropout)
    if trained:  # no zero layers: at initialisation the zero last conv stops every gradient but its own
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return net


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_checkpointing_gives_the_same_gradients_and_dropout(dropout: float) -> None:
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(4, 1, 8, 8, generator=g), torch.randn(4, generator=g)
    grads = []
    for checkpointing in (False, True):
        net = _unet(dropout, trained=True).train()
        net.checkpointing = checkpointing
        with default_generators(7, torch.device("cpu")):
            out = net(x, c)
        (out**2).sum().backward()
        grads.append({n: p.grad.clone() for n, p in net.named_parameters()})
        if checkpointing:
            assert out.grad_fn is not None
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.equal(grads[0][name], grads[1][name]), name
    assert grads[0]["conv_in.weight"].abs().sum() > 0  # gradients reach the first layer
    # Dropout draws are a pure function of the seed: another seed gives other gradients.
    if dropout:
        net = _unet(dropout, trained=True).train()
        with default_generators(8, torch.device("cpu")):
            (net(x, c) ** 2).sum().backward()
        differ = [n for n, p in net.named_parameters() if not torch.equal(p.grad, grads[0][n])]
        assert differ, "dropout drew the same masks from another seed"


def test_checkpointing_trains_the_same_weights(tmp_path: Path) -> None:
    over = {"steps": 3, "network.dropout": 0.2}
    plain = _weights(train(tiny_train_config(tmp_path / "a", **over)).run_dir)
    ckpt = _weights(train(tiny_train_config(tmp_path / "b", checkpointing=True, **over)).run_dir)
    assert _gap(plain, ckpt) == 0.0


def test_checkpointing_needs_our_unet(tmp_path: Path) -> None:
    res = runner.invoke(app, ["train", "--task", "classifier", "--preset", "wrn-10-2", "--image-size", "8", "--steps", "1",
                              "--checkpointing", "--device", "cpu", "--out", str(tmp_path), "--name", "c"])
    assert res.exit_code == 2
    assert res.stderr == ("diffuse: error: --checkpointing recomputes the blocks of our U-Net; this wrn network has none "
                          "(drop the flag)\n")


def test_resume_with_dropout_is_exact_and_the_global_generator_untouched(tmp_path: Path) -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    over = {"network.dropout": 0.3, "checkpoint_every": 2}
    full = _weights(train(tiny_train_config(tmp_path / "a", steps=4, **over)).run_dir)
    assert torch.equal(torch.get_rng_state(), before)  # initial weights and dropout draw from their own seeds
    train(tiny_train_config(tmp_path / "b", steps=2, **over))
    torch.manual_seed(999)  # whatever the global generator holds, the resumed run drops what the full one dropped
    resumed = _weights(train(tiny_train_config(tmp_path / "b", steps=4, resume=True, **over)).run_dir)
    for k in full:
        assert torch.equal(full[k], resumed[k]), k


def _loop(batches: list[tuple[torch.Tensor, torch.Tensor]], local: slice, global_batch: int | None) -> UNet:
    net = _unet(0.0)
    sde = VPSDE()
    objective = ScoreObjective(ScoreModel(net, sde, "edm"))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    train_loop(net, EMA(net), opt, objective, batches, torch.Generator().manual_seed(1), steps=len(batches),
               lr=lambda s: 1e-3, device=torch.device("cpu"), local=local, global_batch=global_batch,
               augment=lambda x, g: torch.where(torch.rand(x.shape[0], generator=g)[:, None, None, None] < 0.5, x.flip(-1), x))
    return net


def test_a_rank_reading_its_slice_trains_as_one_reading_the_whole_batch() -> None:
    g = torch.Generator().manual_seed(0)
    whole = [(torch.randn(8, 1, 8, 8, generator=g), torch.zeros(8, dtype=torch.long)) for _ in range(3)]
    local = slice(4, 8)  # rank 1 of 2
    a = _loop(whole, local, None)
    b = _loop([(x[local], y[local]) for x, y in whole], local, 8)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_each_rank_reads_only_its_slice() -> None:
    dataset, _ = load_dataset("shapes", 8, None, "train", 0, 40, None, False)
    ranks = [_Batches(dataset, 8, 3, slice(r * 4, (r + 1) * 4), 0) for r in range(2)]
    got = [list(b(2, 5)) for b in ranks]
    assert [b.read for b in ranks] == [12, 12]  # 3 steps x 4 examples each, not 3 x 8
    for step, (x0, x1) in enumerate(zip(got[0], got[1]), start=2):
        whole = batch_indices(40, 8, 3, step)
        want = dataset.images[whole].float().div(127.5).sub(1.0)
        assert torch.equal(torch.cat([x0[0], x1[0]]), want)


def test_num_workers_auto(tmp_path: Path) -> None:
    shapes, _ = load_dataset("shapes", 8, None, "train", 0, 16, None, False)
    assert num_workers("auto", shapes, World()) == 0  # tensors in memory
    assert num_workers(3, shapes, World()) == 0
    from PIL import Image

    for i in range(2):
        Image.new("RGB", (8, 8), (i * 100, 0, 0)).save(tmp_path / f"{i}.png")
    folder, _ = load_dataset(str(tmp_path), 8, None, "train", 0, None, None, False)
    want = max(1, min(4, (os.cpu_count() or 2) - 1))
    assert num_workers("auto", folder, World()) == want
    assert num_workers("auto", folder, World(0, 64)) == 1
    assert num_workers(0, folder, World()) == 0


@pytest.mark.parametrize(("message", "line"), [
    ("CUDA out of memory. Tried to allocate 2.50 GiB. GPU 0 has a total capacity of 79.1 GiB",
     "the GPU's memory (cuda:0) ran out trying to allocate 2.50 GiB"),
    ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to allocate "
     "2684354560 bytes. Error code 12 (Cannot allocate memory)", "the CPU's memory ran out trying to allocate 2.5 GiB"),
    ("could not create a primitive", "the CPU's memory ran out"),
    ("std::bad_alloc", "the CPU's memory ran out"),
])
def test_out_of_memory_says_what_ran_out_and_the_size(message: str, line: str) -> None:
    err: BaseException = RuntimeError(message)
    if message.startswith("CUDA"):
        err = type("OutOfMemoryError", (RuntimeError,), {})(message)
    assert out_of_memory(err) == line
    assert out_of_memory(MemoryError("Unable to allocate 1.5 GiB for an array")) == "the CPU's memory ran out trying to allocate 1.5 GiB"
    assert out_of_memory(RuntimeError("shapes do not match")) is None


#: Runs `diffuse` with the address space limited to what the imports take plus HEADROOM MiB. Everything a run
#: loads later (matplotlib's backend, BLAS buffers) is loaded first: under the limit they would fail to map.
LIMITED = textwrap.dedent("""
    import resource, sys
    import numpy as np
    import matplotlib.backends.backend_agg, matplotlib.pyplot
    import diffusers_cli.jobs.train
    from diffusers_cli.cli import app
    np.ones((64, 64)) @ np.ones((64, 64))
    size = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize"))
    limit = size + int(sys.argv[1]) * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    sys.argv = ["diffuse", *sys.argv[2:]]
    app()
""")


def _limited(tmp: Path, headroom_mib: int | None, *args: str) -> subprocess.CompletedProcess[str]:
    # A fixed mmap threshold: glibc otherwise keeps freed large blocks in its heap, whose addresses count against the limit.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-c", LIMITED, str(headroom_mib), *args] if headroom_mib else [sys.executable, "-m", "diffusers_cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp, timeout=600)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc/self/status are Linux's")
def test_out_of_memory_is_one_line_and_auto_micro_batch_trains_under_the_limit(tmp_path: Path) -> None:
    run = ["--image-size", "16", "--batch-size", "768", "--set", "data.num_examples=64", "--set", "network.base_channels=8",
           "--preset", "tiny", "--device", "cpu", "--sample-every", "0", "--set", "checkpoint_every=1", "--name", "big"]
    first = _limited(tmp_path, None, "train", *run, "--steps", "1")
    assert first.returncode == 0, first.stderr
    # The same batch under a limit: exit 1, one line, the step-1 checkpoint kept.
    plain = _limited(tmp_path, 250, "train", "--resume", "--name", "big", "--steps", "2")
    assert plain.returncode == 1, plain.stderr
    last = plain.stderr.splitlines()[-1]
    assert re.fullmatch(
        r"diffuse: error: out of memory at step 2: the CPU's memory ran out trying to allocate [\d.]+ (bytes|KiB|MiB|GiB); "
        r"make a step need less with --micro-batch N \(or auto\), --checkpointing, or a smaller --batch-size; "
        r"the last checkpoint \(step 1\) in runs/big is intact: resume it with --resume --name big", last), last
    assert [ln for ln in plain.stderr.splitlines() if ln.startswith("diffuse:")] == [last]
    # --micro-batch auto resumes it under the same limit, says what it chose and records it.
    auto = _limited(tmp_path, 250, "train", "--resume", "--name", "big", "--steps", "2", "--micro-batch", "auto", "--json")
    assert auto.returncode == 0, auto.stderr
    said = re.search(r"--micro-batch auto: (\d+) of the 768 examples a process runs per step at once "
                     r"\((\d+) micro-batches a step; half the most that fit\)", auto.stderr)
    assert said is not None, auto.stderr
    chosen = int(said.group(1))
    assert chosen < 768 and 768 % chosen == 0 and int(said.group(2)) == 768 // chosen
    weights, meta = load_weights(tmp_path / "runs" / "big" / "model.safetensors")
    assert meta["step"] == 2
    # The weights are those of the unlimited run in one pass, to float summation order.
    ref = _limited(tmp_path, None, "train", *[a if a != "big" else "ref" for a in run], "--steps", "2")
    assert ref.returncode == 0, ref.stderr
    assert _gap(weights, load_weights(tmp_path / "runs" / "ref" / "model.safetensors")[0]) < MICRO_TOL


def test_run_job_turns_out_of_memory_into_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    import typer

    from diffusers_cli.cli.common import run_job
    from diffusers_cli.support.memory import SMALLER_BATCH

    def job() -> None:
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 1073741824 bytes. Error code 12 (Cannot allocate memory)")

    with pytest.raises(typer.Exit) as exit_:
        run_job(job, SMALLER_BATCH)
    assert exit_.value.exit_code == 1
    assert capsys.readouterr().err == ("diffuse: error: out of memory: the CPU's memory ran out trying to allocate 1 GiB; "
                                       "draw fewer images at once with a smaller --batch-size\n")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc/self/status are Linux's")
def test_sampling_out_of_memory_is_one_line(tiny_run: Path, tmp_path: Path) -> None:
    res = _limited(tmp_path, 200, "sample", "--model", str(tiny_run), "-n", "200000", "--batch-size", "200000",
                   "--steps", "1", "--device", "cpu", "--out", str(tmp_path / "x.png"))
    assert res.returncode == 1, res.stderr
    last = res.stderr.splitlines()[-1]
    # Where C++ code runs out (std::bad_alloc) no size is told; the allocators that know it say it.
    assert re.fullmatch(r"diffuse: error: out of memory: the CPU's memory ran out( trying to allocate [\d.]+ (MiB|GiB))?; "
                        r"draw fewer images at once with a smaller --batch-size", last), res.stderr
    assert [ln for ln in res.stderr.splitlines() if ln.startswith("diffuse:")] == [last]
    assert not (tmp_path / "x.png").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc/self/status are Linux's")
@pytest.mark.parametrize("command", ["condition", "impute"])
def test_conditioning_and_imputation_out_of_memory_is_one_line(tiny_run: Path, tiny_classifier: Path, tmp_path: Path,
                                                               command: str) -> None:
    from PIL import Image

    if command == "condition":
        args = ["condition", "--model", str(tiny_run), "--classifier", str(tiny_classifier), "--class", "0",
                "-n", "400000", "--batch-size", "400000", "--sampler", "ddim", "--steps", "1"]
        fix = r"draw fewer images at once with a smaller --batch-size"
    else:
        Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / "img.png")
        args = ["impute", "img.png", "--mask", "half", "--model", str(tiny_run), "-n", "400000",
                "--method", "replacement", "--sampler", "ddim", "--steps", "1"]
        fix = r"fill fewer candidates at once with a smaller -n or --particles"
    res = _limited(tmp_path, 200, *args, "--device", "cpu", "--out", str(tmp_path / "x.png"))
    assert res.returncode == 1, res.stderr
    last = res.stderr.splitlines()[-1]
    assert re.fullmatch(rf"diffuse: error: out of memory: the CPU's memory ran out( trying to allocate [\d.]+ (MiB|GiB))?; {fix}",
                        last), res.stderr
    assert [ln for ln in res.stderr.splitlines() if ln.startswith("diffuse:")] == [last]
    assert not (tmp_path / "x.png").exists()
