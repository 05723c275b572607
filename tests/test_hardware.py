"""The machine's offer and the fast defaults: --precision auto, TF32 and autotuning on CUDA, `diffuse env`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from diffusers_cli.cli import app
from diffusers_cli.support import hardware


@pytest.mark.parametrize("flags, expect", [({"avx2", "avx512f"}, "fp32"), ({"avx2", "avx512_bf16"}, "bf16"),
                                           ({"amx_bf16", "amx_tile"}, "bf16"), (set(), "fp32")])
def test_precision_auto_is_bf16_only_where_the_cpu_computes_it_natively(flags: set[str], expect: str,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hardware, "cpu_flags", lambda: flags)
    assert hardware.resolve_precision("auto", torch.device("cpu")) == expect
    # An explicit choice is never second-guessed.
    assert hardware.resolve_precision("fp32", torch.device("cpu")) == "fp32"
    assert hardware.resolve_precision("bf16", torch.device("cpu")) == "bf16"


def test_fast_math_changes_nothing_on_the_cpu() -> None:
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark)
    assert hardware.enable_fast_math(torch.device("cpu")) == {} and hardware.fast_math_state(torch.device("cpu")) == {}
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark) == before


def test_cpu_flags_are_read_from_cpuinfo() -> None:
    if not Path("/proc/cpuinfo").is_file():
        pytest.skip("no /proc/cpuinfo on this OS")
    text = Path("/proc/cpuinfo").read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith(("flags", "Features")))
    assert hardware.cpu_flags() == set(line.split(":", 1)[1].split())


def test_env_reports_the_cpu_its_bf16_and_what_auto_picks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16", "sse4_2"})
    res = CliRunner().invoke(app, ["env", "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["cpu_flags"] == ["avx2", "avx512f", "avx512_bf16"]  # the reported ones, in REPORTED_CPU_FLAGS order
    assert info["cpu_native_bf16"] is True
    if not torch.cuda.is_available():
        assert info["precision_auto"] == "bf16" and info["cuda_devices"] == []


def test_training_with_precision_auto_records_what_ran(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import tiny_train_config

    from diffusers_cli.jobs.train import train

    monkeypatch.setattr(hardware, "cpu_flags", lambda: set())  # a CPU without native bf16: auto is fp32
    res = train(tiny_train_config(tmp_path, steps=2, precision="auto"))
    saved = json.loads((res.run_dir / "config.json").read_text())
    assert saved["precision"] == "fp32"
    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx512_bf16"})
    res = train(tiny_train_config(tmp_path, steps=2, precision="auto", name="b"))
    assert json.loads((res.run_dir / "config.json").read_text())["precision"] == "bf16"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="TF32 and cuDNN autotuning are CUDA settings (benchmarks/gpu_check.py)")
def test_a_cuda_device_gets_tf32_and_autotuning() -> None:
    from diffusers_cli.parts.build import resolve_device

    dev = resolve_device("cuda")
    assert hardware.fast_math_state(dev) == {"tf32": True, "cudnn_benchmark": True}
