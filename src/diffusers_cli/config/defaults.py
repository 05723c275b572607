"""Defaults the command line shows in its help and the jobs use: plain values, importable without pydantic or torch."""

from __future__ import annotations

#: Classifier-free guidance scale of ``diffuse sample`` on a class-conditional model when none is given:
#: the scale whose samples were both recognisable and closest to real ones on shapes and MNIST
#: (the guidance sweeps in benchmarks/README.md).
DEFAULT_GUIDANCE = 2.0
