"""Training in other numerics: --precision bf16 and fp16 (grad scaler), --channels-last, --compile.

Each trains a few steps through the command line, resumes bit for bit within its own numerics, and
its loss on the first batch (the same weights, data and draws as fp32's) stays within a stated
tolerance of fp32's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from test_cli import invoke, one_error_line

import diffusers_cli.jobs.train as train_job
from diffusers_cli.engine.objectives import Objective
from diffusers_cli.engine.training import EMA, train_loop

# A one-level 8-channel U-Net on 4x4 shapes: torch.compile's cold start on 2 CPU cores grows with the graph.
SMALL = ["--image-size", "4", "--batch-size", "4", "--set", "data.num_examples=16", "--set", "network.base_channels=8",
         "--set", "network.channel_mult=[1]", "--set", "network.num_res_blocks=1", "--set", "network.attn_resolutions=[]",
         "--set", "optim.warmup=2", "--set", "optim.lr=0.001", "--set", "log_every=1", "--sample-every", "0",
         "--set", "sample_n=2", "--set", "sampler.name=ddim", "--set", "sampler.steps=2"]
MODES: dict[str, list[str]] = {
    "fp32": [],
    "bf16": ["--precision", "bf16"],
    "fp16": ["--precision", "fp16"],
    "channels-last": ["--channels-last"],
    "compile": ["--compile"],
}
#: Relative distance of the first step's loss from fp32's that each mode may take, and which steps it applies to.
#: bf16 keeps 8 bits of mantissa (2^-8 = 0.4 % a rounding): measured 0.2 % off; fp16 keeps 11 bits. Channels-last
#: and the compiled graph only reorder float32 sums: measured 1e-7, and their trajectories stay as close for 4 steps.
LOSS_RTOL: dict[str, tuple[float, int]] = {"bf16": (1e-2, 1), "fp16": (2e-3, 1), "channels-last": (1e-5, 4), "compile": (1e-5, 4)}


def cuda_or_skip(mode: str) -> str:
    """The device a mode is tested on: fp16 needs CUDA (the job refuses it on the CPU, tested below)."""
    if mode != "fp16":
        return "cpu"
    if not torch.cuda.is_available():
        pytest.skip("fp16 autocast with a grad scaler runs only on CUDA: on the CPU the job refuses it "
                    "(test_fp16_on_the_cpu_is_refused_in_one_line)")
    return "cuda"


def compiler_or_skip() -> None:
    """torch.compile's default backend (Inductor) needs Dynamo on this Python and a C++ compiler for its CPU kernels."""
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        pytest.skip("torch.compile (Dynamo) does not support this Python")
    if not any(shutil.which(cc) for cc in ("c++", "g++", "clang++")):
        pytest.skip("torch.compile's Inductor backend needs a C++ compiler (c++, g++ or clang++) on PATH for CPU kernels")


def train(out: Path, name: str, flags: list[str], steps: int, device: str = "cpu", resume: bool = False) -> Path:
    args = ["train", "--resume", "--out", out, "--name", name, "--steps", steps] if resume else \
        ["train", *SMALL, *flags, "--device", device, "--out", out, "--name", name, "--steps", steps]
    res = invoke(*args)
    assert res.exit_code == 0, res.stderr
    return out / name


def tensors_of(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {f: load_file(str(run / f)) for f in ("model.safetensors", "state.safetensors")}


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def spy_on_the_loop(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What the job hands the training loop, leg by leg: its numerics and the network's memory format."""
    seen: list[dict[str, Any]] = []
    real = train_job.train_loop

    def loop(net: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        convs = [p for p in net.parameters() if p.ndim == 4 and p.shape[-1] > 1]
        seen.append({
            "precision": kwargs["precision"], "channels_last": kwargs["channels_last"],
            "net_channels_last": bool(convs) and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs),
            "compiled": type(kwargs["forward"]).__name__ == "OptimizedModule",
            "grad_scaler": kwargs["scaler"].is_enabled(),
        })
        return real(net, *args, **kwargs)

    monkeypatch.setattr(train_job, "train_loop", loop)
    return seen


@pytest.mark.parametrize("mode", ["bf16", "fp16", "channels-last", "compile"])
def test_each_mode_trains_resumes_exactly_and_stays_near_fp32(mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    device = cuda_or_skip(mode)
    if mode == "compile":
        compiler_or_skip()
    reference = losses(train(tmp_path, "fp32", [], 4, device))
    seen = spy_on_the_loop(monkeypatch)
    whole = train(tmp_path, "whole", MODES[mode], 4, device)
    train(tmp_path, "split", MODES[mode], 2, device)
    split = train(tmp_path, "split", [], 4, device, resume=True)  # the saved config keeps the mode
    # Every leg ran in the mode asked for, and only in it.
    want = {"precision": {"bf16": "bf16", "fp16": "fp16"}.get(mode, "fp32"), "channels_last": mode == "channels-last",
            "net_channels_last": mode == "channels-last", "compiled": mode == "compile", "grad_scaler": mode == "fp16"}
    assert seen == [want] * 3
    # Within its own numerics a resumed run is the uninterrupted one, bit for bit: weights, EMA, optimizer, generator.
    a, b = tensors_of(whole), tensors_of(split)
    for f in a:
        assert a[f].keys() == b[f].keys() and all(torch.equal(a[f][k], b[f][k]) for k in a[f]), f
    assert losses(whole) == losses(split) and len(losses(whole)) == 4
    # Near fp32 on the same batch (the first step: the same initial weights, examples, times and noise).
    rtol, steps = LOSS_RTOL[mode]
    mine = losses(whole)
    print(f"\n{mode}: losses {mine} against fp32's {reference}")
    for got, ref in zip(mine[:steps], reference[:steps]):
        assert got == pytest.approx(ref, rel=rtol)
    if mode in ("bf16", "fp16"):
        assert mine[0] != reference[0]  # autocast really ran in the lower precision


def test_fp16_on_the_cpu_is_refused_in_one_line(tmp_path: Path) -> None:
    line = one_error_line(invoke("train", *SMALL, "--precision", "fp16", "--device", "cpu", "--steps", 1, "--out", tmp_path))
    assert line == "diffuse: error: precision fp16 needs a CUDA device; use bf16 or fp32 on the CPU"
    assert not any(tmp_path.rglob("*.safetensors"))


class _Overflowing(Objective):
    """Least squares of a linear map whose fp16 gradient overflows at the grad scaler's first scale (2^16) but not at 2^15."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def draw(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        return {"x": x}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return (self.net(x).squeeze(1) - 3.0) ** 2 * 0.05, {}


def _fp16_legs(legs: list[int]) -> tuple[list[torch.Tensor], list[float], float]:
    """Run the loop in fp16 on the CPU over ``legs`` (the step each leg ends at), one grad scaler carried across them."""
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    ema = EMA(net, 0.5, warmup=False)
    scaler = torch.amp.GradScaler("cpu")
    batches = [(torch.full((4, 3), 3.0), torch.zeros(4, dtype=torch.long)) for _ in range(legs[-1])]
    logged: list[float] = []
    start = 0
    for end in legs:
        train_loop(net, ema, opt, _Overflowing(net), batches[start:end], None, steps=end, start=start, lr=lambda s: 1e-3,
                   device=torch.device("cpu"), precision="fp16", log_every=1, on_log=lambda s, r: logged.append(r["loss"]),
                   scaler=scaler)
        start = end
    return [p.detach().clone() for p in net.parameters()], logged, scaler.get_scale()


def test_fp16_grad_scaler_state_is_carried_across_a_resume() -> None:
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            torch.nn.Linear(2, 1)(torch.ones(1, 2))
    except RuntimeError as err:
        pytest.skip(f"this torch has no fp16 autocast on the CPU ({err})")
    whole_weights, whole_log, whole_scale = _fp16_legs([8])
    # The scaler skipped step 1 (an inf gradient at 2^16: step 2 starts from the same weights) and settled at 2^15.
    assert whole_log[0] == whole_log[1] != whole_log[2] and whole_scale == 2.0**15
    # Resumed after step 2 with the same scaler, nothing changes; a fresh scaler (what the job used before it saved
    # the scale) starts at 2^16 again and skips step 3 as well, and the runs part.
    split_weights, split_log, _ = _fp16_legs([2, 8])
    assert split_log == whole_log and all(torch.equal(a, b) for a, b in zip(whole_weights, split_weights))


def test_the_job_saves_and_restores_the_grad_scalers_state(tmp_path: Path) -> None:
    from diffusers_cli.checkpoints.weights import read_card

    run = train(tmp_path, "r", [], 1)
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    card = read_card(run / "model.safetensors")
    scaler = torch.amp.GradScaler("cpu")
    state = {"scale": 512.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000, "_growth_tracker": 7}
    scaler.load_state_dict(state)
    (tmp_path / "s").mkdir()
    train_job._save(tmp_path / "s", net, EMA(net, 0.5), torch.optim.SGD(net.parameters(), lr=0.1), torch.Generator(), card, scaler)
    restored = torch.amp.GradScaler("cpu")
    step = train_job._resume(tmp_path / "s", net, EMA(net, 0.5), torch.optim.SGD(net.parameters(), lr=0.1), torch.Generator(), restored)
    assert step == card.step and restored.state_dict() == state
