"""`diffuse condition`: class-conditional generation by classifier guidance."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from diffusers_cli.cli.common import emit_json, make_reporter, parse_kv, run_job
from diffusers_cli.cli.sample import sampler_overrides
from diffusers_cli.config import ConditionConfig, build_config


def condition_command(
    classifier: Annotated[Optional[Path], typer.Option(help="Classifier run (from `diffuse train --task classifier`) or .safetensors.")] = None,
    class_: Annotated[Optional[str], typer.Option("--class", help="Class index or name (e.g. 3, circle).")] = None,
    scale: Annotated[Optional[float], typer.Option(help="Guidance scale: 1 samples p(x | y); larger is sharper, less diverse.")] = None,
    model: Annotated[Optional[Path], typer.Option(help="Score model run or .safetensors (default: the newest run).")] = None,
    sampler: Annotated[Optional[str], typer.Option(help="Any sampler of `diffuse sample`.")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Sampler steps.")] = None,
    n: Annotated[Optional[int], typer.Option("-n", "--num-samples", help="How many images.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per batch.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output PNG grid (or name stem with --individual).")] = None,
    individual: Annotated[bool, typer.Option("--individual", help="One PNG per image.")] = False,
    grid: Annotated[Optional[str], typer.Option(help="Time grid: uniform, quadratic, logsnr, karras.")] = None,
    snr: Annotated[Optional[float], typer.Option(help="Langevin signal-to-noise ratio (pc).")] = None,
    order: Annotated[Optional[int], typer.Option(help="Solver order (ei).")] = None,
    eta: Annotated[Optional[float], typer.Option(help="DDIM stochasticity (ddim).")] = None,
    config: Annotated[Optional[Path], typer.Option(help="YAML, JSON or TOML config; flags override its values.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override any config key.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed; the same seed gives the same images.")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")] = False,
) -> None:
    """Generate images of one class with an unconditional model steered by a noise-aware classifier."""

    def job() -> None:
        overrides: dict[str, object] = {
            "classifier": str(classifier) if classifier else None, "class": class_, "scale": scale,
            "model": str(model) if model else None, "n": n, "batch_size": batch_size, "out": str(out) if out else None,
            "individual": True if individual else None, "seed": seed, "device": device,
            **sampler_overrides(sampler, steps, grid, None, snr, order, eta, None, None, False),
        }
        overrides.update(parse_kv(set_))
        cfg = build_config(ConditionConfig, config, overrides)
        from diffusers_cli.jobs.condition import condition

        res = condition(cfg, make_reporter(json_))
        summary = {"outputs": [str(p) for p in res.outputs], "class": res.label, "class_name": res.class_name,
                   "scale": cfg.scale, "n": cfg.n, "sampler": cfg.sampler.name, "steps": cfg.sampler.steps,
                   "nfe": res.nfe, "seconds": round(res.seconds, 3), "seed": cfg.seed,
                   "model": str(res.model), "classifier": str(res.classifier)}
        if json_:
            emit_json(summary)
        else:
            print(f"wrote {', '.join(str(p) for p in res.outputs[:3])}: {cfg.n} x class {res.label} ({res.class_name})")

    run_job(job)
