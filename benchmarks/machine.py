"""What machine a benchmark ran on: the CPU model, for the figures' context (imported by the scripts beside it)."""

from __future__ import annotations

from diffusers_cli.support.hardware import cpu_model

__all__ = ["cpu_model"]
