"""What the machine offers and the fast defaults taken on it: native bf16, TF32 and cuDNN autotuning on CUDA.

``--precision auto`` resolves here (bf16 autocast where the device computes bf16 natively: CUDA from Ampere on,
CPUs with AVX512-BF16 or AMX; fp32 elsewhere), and ``diffuse env`` prints ``describe()``.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

#: CPU flags (as /proc/cpuinfo spells them) that mean native bf16 arithmetic.
BF16_CPU_FLAGS: tuple[str, ...] = ("avx512_bf16", "amx_bf16")
#: The CPU flags `diffuse env` reports: what decides torch's CPU kernels and bf16's speed.
REPORTED_CPU_FLAGS: tuple[str, ...] = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_model() -> str:
    """The CPU's model name, as /proc/cpuinfo or the platform module gives it."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively (so bf16 autocast can be faster than fp32, not an emulation)."""
    import torch

    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.cuda.get_device_capability(index) >= (8, 0)
    if device.type == "cpu":
        return bool(cpu_flags() & set(BF16_CPU_FLAGS))
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``precision`` itself, or for "auto" bf16 where ``device`` has native bf16 and fp32 elsewhere."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"


def enable_fast_math(device: torch.device) -> dict[str, bool]:
    """On CUDA: TF32 matmuls and convolutions, and cuDNN autotuning; returns what is on (recorded in a run's card).

    TF32 keeps fp32's range with a 10-bit mantissa in matmuls (the default of most training code on Ampere and
    later); autotuning picks the fastest convolution algorithm for each shape once, which pays off in a loop
    of identical shapes such as training and sampling. Nothing changes on the CPU.
    """
    import torch

    if device.type != "cuda":
        return {}
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    return {"tf32": True, "cudnn_benchmark": True}


def fast_math_state(device: torch.device) -> dict[str, bool]:
    """What ``enable_fast_math`` turned on for ``device``, as a run records it (empty off CUDA)."""
    import torch

    if device.type != "cuda":
        return {}
    return {"tf32": bool(torch.backends.cuda.matmul.allow_tf32), "cudnn_benchmark": bool(torch.backends.cudnn.benchmark)}


def memory_bytes() -> int | None:
    """The machine's physical memory in bytes (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None


def describe() -> dict[str, Any]:
    """What `diffuse env` prints: the CPU and its flags, memory, threads, and each CUDA device's capabilities."""
    import torch

    flags = cpu_flags()
    mem = memory_bytes()
    cpu = torch.device("cpu")
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_flags": [f for f in REPORTED_CPU_FLAGS if f in flags],
        "cpu_native_bf16": native_bf16(cpu),
        "memory_gib": round(mem / 2**30, 1) if mem else None,
        "cpu_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "cuda_devices": [],
        "mps_available": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
    }
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        dev = torch.device("cuda", i)
        info["cuda_devices"].append({
            "name": props.name, "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1), "native_bf16": native_bf16(dev),
            "tf32": (props.major, props.minor) >= (8, 0),
        })
    best = torch.device("cuda") if torch.cuda.is_available() else cpu
    info["precision_auto"] = resolve_precision("auto", best)
    return info
