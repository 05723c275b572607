"""`diffuse datasets` and `diffuse env`: what data is built in, and what this machine offers."""

from __future__ import annotations

import platform
from typing import Annotated

import typer

from diffusers_cli.cli.common import emit_json, run_job


def datasets_command(
    json_: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """List the datasets diffuse can train on and where their files go."""

    def job() -> None:
        # The registry imports no torch, so this answers at once.
        from diffusers_cli.data import list_datasets

        rows = list_datasets()
        if json_:
            emit_json({"datasets": rows})
            return
        for row in rows:
            aliases = row["aliases"]
            also = f" (also: {', '.join(aliases)})" if isinstance(aliases, list) and aliases else ""
            print(f"{row['name']:<14} {row['description']}{also}")

    run_job(job)


def env_command(
    json_: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """Print versions, the CPU and its bf16 support, memory, devices and threads: what to paste into a bug report."""

    def job() -> None:
        import torch

        from diffusers_cli import __version__

        from diffusers_cli.support.hardware import describe

        info = {
            "diffusers_cli": __version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            **describe(),
        }
        if json_:
            emit_json(info)
        else:
            for k, v in info.items():
                if k == "cuda_devices":
                    for i, dev in enumerate(v):
                        print(f"{'cuda:' + str(i):<16} " + ", ".join(f"{dk} {dv}" for dk, dv in dev.items()))
                else:
                    print(f"{k:<16} {', '.join(v) if isinstance(v, list) else v}")

    run_job(job)
