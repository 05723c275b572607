"""Defaults the command line shows in its help and the jobs use: plain values, importable without pydantic or torch."""

from __future__ import annotations

from typing import Literal

#: Classifier-free guidance scale of ``diffuse sample`` on a class-conditional model when none is given:
#: the scale whose samples were both recognisable and closest to real ones on shapes and MNIST
#: (the guidance sweeps in benchmarks/README.md).
DEFAULT_GUIDANCE = 2.0

#: The sampler and steps of a sampling command given neither, for a model whose card recommends none
#: (``ModelCard.recommended`` wins when it exists): score_sde's predictor-corrector, slow but needing no tuning.
DEFAULT_SAMPLER = "pc"
DEFAULT_STEPS = 1000

#: Training's precision; "auto": bf16 where the device computes it natively (support.hardware.resolve_precision),
#: else fp32.
Precision = Literal["fp32", "bf16", "fp16", "auto"]
#: Where training logs: the run's metrics.jsonl alone, or TensorBoard events beside it.
LogKind = Literal["jsonl", "tensorboard"]
