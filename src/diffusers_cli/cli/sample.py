"""`diffuse sample`: draw images from a trained model with any sampler."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from diffusers_cli.cli.common import (
    CardSamplerOpt, CardStepsOpt,
    AtolOpt, BatchOpt, ConfigOpt, DeviceOpt, DownloadModelOpt, EpsOpt, EtaOpt, GridOpt, GridsOpt, IndividualOpt, JsonOpt, ModelOpt, NoDenoiseOpt, NumOpt,
    OptionOpt, OrderOpt, RtolOpt, SeedOpt, SetOpt, SnrOpt, emit_json, make_reporter, parse_kv,
    run_job, sampler_overrides, UpscaleOpt,
)
from diffusers_cli.config.defaults import DEFAULT_GUIDANCE


def sample_command(
    model: ModelOpt = None,
    sampler: CardSamplerOpt = None,
    steps: CardStepsOpt = None,
    n: NumOpt = None,
    first: Annotated[Optional[int], typer.Option(help="Index of the first image (default 0): --first 41 -n 1 makes image 41 of the seed alone.")] = None,
    batch_size: BatchOpt = None,
    out: Annotated[Optional[Path], typer.Option(help="Output PNG (a grid, or a name stem with --individual).")] = None,
    individual: IndividualOpt = False,
    upscale: UpscaleOpt = None,
    class_: Annotated[Optional[str], typer.Option("--class", help="Class-conditional models: one class (index or name); default: every class in turn.")] = None,
    guidance: Annotated[Optional[float], typer.Option(help=f"Class-conditional models: classifier-free guidance scale (1: plain p(x | class), 0: unconditional; default {DEFAULT_GUIDANCE:g}).")] = None,
    trajectory: Annotated[Optional[Path], typer.Option(help="Also save a strip of x_t along the way to this PNG.")] = None,
    labels: Annotated[bool, typer.Option("--labels", help="Caption the grid (each image's index and class) and the --trajectory strip (step and sigma under each column).")] = False,
    grid: GridOpt = None,
    grids: GridsOpt = None,
    eps: EpsOpt = None,
    option: OptionOpt = None,
    snr: SnrOpt = None,
    order: OrderOpt = None,
    eta: EtaOpt = None,
    rtol: RtolOpt = None,
    atol: AtolOpt = None,
    no_denoise: NoDenoiseOpt = False,
    download: DownloadModelOpt = False,
    no_ema: Annotated[bool, typer.Option("--no-ema", help="Use the online weights instead of the EMA.")] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Generate images with a trained model."""

    def job() -> None:
        from diffusers_cli.config.schema import SampleConfig, build_config

        overrides: dict[str, object] = {
            "model": str(model) if model else None, "grids": str(grids) if grids else None, "n": n, "first": first, "batch_size": batch_size, "out": str(out) if out else None,
            "individual": True if individual else None, "upscale": upscale, "trajectory": str(trajectory) if trajectory else None,
            "labels": True if labels else None,
            "seed": seed, "device": device, "use_ema": False if no_ema else None, "download": True if download else None, "class": class_, "guidance": guidance,
            **sampler_overrides(sampler, steps, grid, eps, no_denoise, option, snr=snr, order=order, eta=eta, rtol=rtol, atol=atol),
        }
        overrides.update(parse_kv(set_))
        cfg = build_config(SampleConfig, config, overrides)
        from diffusers_cli.jobs.sample import sample_images

        res = sample_images(cfg, make_reporter(json_))
        assert res.choice is not None
        ran = res.choice.sampler
        summary = {
            "model": str(res.model), "outputs": [str(p) for p in res.outputs], "n": cfg.n, "sampler": ran.name,
            "steps": ran.steps, "sampler_choice": res.choice.why, "grid": res.choice.grid, "nfe": res.nfe, "seconds": round(res.seconds, 3),
            "seed": cfg.seed, "images_per_s": round(cfg.n / max(res.seconds, 1e-9), 3),
        }
        if res.guidance is not None:
            summary.update({"class": res.class_name, "guidance": res.guidance})
        if json_:
            emit_json(summary)
        else:
            # NFE per image: what each image cost in network evaluations (guidance doubles it).
            print(f"sampled {cfg.n} images with {res.choice.describe()}, {res.nfe} NFE, {res.seconds:.1f}s; wrote "
                  f"{len(res.outputs)} file(s): {', '.join(str(p) for p in res.outputs[:3])}")

    run_job(job)
