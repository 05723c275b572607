"""`diffuse condition`: class-conditional generation by classifier guidance (or classifier-free, for a class-conditional model)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from diffusers_cli.cli.common import (
    CardSamplerOpt, CardStepsOpt,
    BatchOpt, ConfigOpt, DeviceOpt, DownloadModelOpt, EtaOpt, GridOpt, GridsOpt, IndividualOpt, JsonOpt, ModelOpt, NumOpt, OptionOpt, OrderOpt,
    SeedOpt, SetOpt, SnrOpt, emit_json, make_reporter, parse_kv, run_job, sampler_overrides, UpscaleOpt,
)


def condition_command(
    classifier: Annotated[Optional[Path], typer.Option(help="Classifier run (from `diffuse train --task classifier`), .safetensors or builtin:mnist-classifier; not needed for a --class-conditional model.")] = None,
    class_: Annotated[Optional[str], typer.Option("--class", help="Class index or name (e.g. 3, circle).")] = None,
    scale: Annotated[Optional[float], typer.Option(help="Guidance scale: 1 samples p(x | y); larger is sharper, less diverse.")] = None,
    guidance: Annotated[Optional[float], typer.Option(help="With --classifier on a class-conditional model: steer its conditional score, classifier-free at this scale (1: p(x | y)), instead of its unconditional one.")] = None,
    model: ModelOpt = None,
    sampler: CardSamplerOpt = None,
    steps: CardStepsOpt = None,
    n: NumOpt = None,
    batch_size: BatchOpt = None,
    out: Annotated[Optional[Path], typer.Option(help="Output PNG grid (or name stem with --individual).")] = None,
    individual: IndividualOpt = False,
    upscale: UpscaleOpt = None,
    grid: GridOpt = None,
    grids: GridsOpt = None,
    option: OptionOpt = None,
    snr: SnrOpt = None,
    order: OrderOpt = None,
    eta: EtaOpt = None,
    download: DownloadModelOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Generate images of one class: a model steered by a noise-aware classifier, or a class-conditional model by itself."""

    def job() -> None:
        from diffusers_cli.config.schema import ConditionConfig, build_config

        overrides: dict[str, object] = {
            "classifier": str(classifier) if classifier else None, "class": class_, "scale": scale, "guidance": guidance,
            "model": str(model) if model else None, "grids": str(grids) if grids else None, "n": n, "batch_size": batch_size, "out": str(out) if out else None,
            "individual": True if individual else None, "upscale": upscale, "download": True if download else None, "seed": seed, "device": device,
            **sampler_overrides(sampler, steps, grid, options=option, snr=snr, order=order, eta=eta),
        }
        overrides.update(parse_kv(set_))
        cfg = build_config(ConditionConfig, config, overrides)
        from diffusers_cli.jobs.condition import condition

        res = condition(cfg, make_reporter(json_))
        assert res.choice is not None
        ran = res.choice.sampler
        summary = {"outputs": [str(p) for p in res.outputs], "class": res.label, "class_name": res.class_name,
                   "scale": cfg.scale, "guidance": cfg.guidance, "n": cfg.n, "sampler": ran.name, "steps": ran.steps,
                   "sampler_choice": res.choice.why, "grid": res.choice.grid, "nfe": res.nfe, "seconds": round(res.seconds, 3), "seed": cfg.seed,
                   "model": str(res.model), "classifier": str(res.classifier) if res.classifier else None}
        if json_:
            emit_json(summary)
        else:
            print(f"wrote {', '.join(str(p) for p in res.outputs[:3])}: {cfg.n} x class {res.label} ({res.class_name}) with "
                  f"{res.choice.describe()}, {res.nfe} NFE, {res.seconds:.1f}s")

    run_job(job)
