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
    """Print versions, devices and threads: what to paste into a bug report."""

    def job() -> None:
        import torch

        from diffusers_cli import __version__

        info = {
            "diffusers_cli": __version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "cuda_available": torch.cuda.is_available(),
            "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
            "mps_available": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
            "cpu_threads": torch.get_num_threads(),
        }
        if json_:
            emit_json(info)
        else:
            for k, v in info.items():
                print(f"{k:<16} {v}")

    run_job(job)
