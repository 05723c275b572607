"""Running out of memory, recognised: CUDA's OutOfMemoryError, the CPU allocator's failure and Python's MemoryError.

Out of memory is a failing machine, not a bug (DESIGN.md): the jobs turn it into one line that names what ran
out, the size it tried, and the flag that makes the work smaller. Imports no torch, so the CLI can read errors too.
"""

from __future__ import annotations

import re

#: How each allocator says how much it asked for: CUDA "Tried to allocate 2.50 GiB", the CPU allocator
#: "you tried to allocate 2684354560 bytes", numpy "Unable to allocate 2.50 GiB for an array".
_SIZE_PATTERNS = (
    re.compile(r"[Tt]ried to allocate (\d+) bytes"),
    re.compile(r"[Tt]ried to allocate ([\d.]+ ?[KMGT]i?B)"),
    re.compile(r"[Uu]nable to allocate ([\d.]+ ?[KMGT]i?B)"),
)
_GPU = re.compile(r"GPU (\d+)")
_CPU_SAYINGS = ("can't allocate memory", "DefaultCPUAllocator", "out of memory", "could not create a primitive",
                "std::bad_alloc")

#: The fixes an out-of-memory line names, per kind of job: flags that make the work of one moment smaller.
SMALLER_BATCH = "draw fewer images at once with a smaller --batch-size"
FEWER_CANDIDATES = "fill fewer candidates at once with a smaller -n or --particles"
SMALLER_STEP = "make a step need less with --micro-batch N (or auto), --checkpointing, or a smaller --batch-size"


def _readable(num_bytes: int) -> str:
    """2684354560 -> '2.5 GiB' (two significant decimals at most)."""
    size = float(num_bytes)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.3g} {unit}" if unit != "bytes" else f"{int(size)} bytes"
        size /= 1024
    return f"{size:.3g} TiB"  # pragma: no cover - the loop returns at GiB


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an allocation failure (CUDA, MPS, the CPU allocator or Python's own)."""
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError, torch-free
        return True
    text = str(err)
    # oneDNN (the CPU's convolutions) says only "could not create a primitive" when it cannot map the memory of
    # its kernels or workspace, and C++ code "std::bad_alloc": under a memory limit that is how they run out.
    return isinstance(err, RuntimeError) and any(s in text for s in _CPU_SAYINGS)


def out_of_memory(err: BaseException) -> str | None:
    """'<what> ran out trying to allocate <size>' for an allocation failure (None for any other error)."""
    if not is_out_of_memory(err):
        return None
    text = str(err)
    if type(err).__name__ == "OutOfMemoryError" or "CUDA" in text:
        gpu = _GPU.search(text)
        what = f"the GPU's memory (cuda:{gpu.group(1)})" if gpu else "the GPU's memory"
    elif "MPS" in text:
        what = "the GPU's memory (mps)"
    else:
        what = "the CPU's memory"
    for pattern in _SIZE_PATTERNS:
        found = pattern.search(text)
        if found:
            size = found.group(1)
            return f"{what} ran out trying to allocate {_readable(int(size)) if size.isdigit() else size}"
    return f"{what} ran out"
