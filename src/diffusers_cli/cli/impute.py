"""`diffuse impute`: fill the masked region of an image (white in the mask = fill)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from diffusers_cli.engine.masks import HALF_SIDES, MASKS  # torch-free: the names for --mask's and --mask-side's help
from diffusers_cli.support.memory import FEWER_CANDIDATES

from diffusers_cli.cli.common import (
    ConfigOpt, DeviceOpt, DownloadModelOpt, GridOpt, UpscaleOpt, JsonOpt, ModelOpt, SeedOpt, SetOpt, StepsOpt, emit_json, make_reporter, option_pairs, parse_kv,
    run_job, sampler_overrides,
)


def impute_command(
    image: Annotated[Path, typer.Argument(help="The image to complete (any size; resized to the model and back).")],
    mask: Annotated[Optional[Path], typer.Argument(help="Mask PNG of the image's size: WHITE = fill, black = keep.")] = None,
    mask_kind: Annotated[Optional[str], typer.Option("--mask", help=f"Instead of a mask file: {', '.join(MASKS)}.")] = None,
    mask_fraction: Annotated[Optional[float], typer.Option(help="box/outpaint: area fraction; random-pixels: fraction kept.")] = None,
    mask_side: Annotated[Optional[str], typer.Option(help=f"half: the side to fill ({', '.join(HALF_SIDES)}).")] = None,
    model: ModelOpt = None,
    method: Annotated[Optional[str], typer.Option(help="auto (default: chosen by the mask, and the output says which and why) or a method `diffuse samplers` lists under imputation methods, with its options.")] = None,
    particles: Annotated[Optional[int], typer.Option(help="twisted / smc: particles per candidate (more is closer to the exact posterior); = -o particles=N.")] = None,
    option: Annotated[Optional[list[str]], typer.Option("-o", "--option", help="Method option KEY=VALUE, repeatable (e.g. -o resample=5); replacement passes the rest to its sampler. `diffuse samplers` lists them.")] = None,
    sampler: Annotated[Optional[str], typer.Option(help="replacement: any sampler of `diffuse sample`.")] = None,
    steps: StepsOpt = None,
    grid: GridOpt = None,
    n: Annotated[Optional[int], typer.Option("-n", "--num-samples", help="How many candidates.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output PNG (with -n > 1: <stem>_NN.png).")] = None,
    upscale: UpscaleOpt = None,
    download: DownloadModelOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Fill the masked pixels of IMAGE; the known pixels of the output are exactly the input's."""

    def job() -> None:
        from diffusers_cli.config.schema import ImputeConfig, build_config

        overrides: dict[str, object] = {
            "image": str(image), "mask": str(mask) if mask else None, "mask_kind": mask_kind,
            "mask_fraction": mask_fraction, "mask_side": mask_side, "model": str(model) if model else None,
            "method": method, "download": True if download else None, "n": n, "out": str(out) if out else None, "upscale": upscale, "seed": seed,
            "device": device, **sampler_overrides(sampler, steps, grid),
            **{f"options.{k}": v for k, v in {"particles": particles, **option_pairs(option)}.items()},
        }
        overrides.update(parse_kv(set_))
        cfg = build_config(ImputeConfig, config, overrides)
        from diffusers_cli.jobs.impute import impute_image

        res = impute_image(cfg, make_reporter(json_))
        summary = {"outputs": [str(p) for p in res.outputs], "method": res.method, "n": cfg.n, "steps": cfg.sampler.steps,
                   "nfe": res.nfe, "particles": res.particles, "seconds": round(res.seconds, 3), "seed": cfg.seed,
                   "model": str(res.model), "size": list(res.image_size), "notes": res.notes}
        if json_:
            emit_json(summary)
        else:
            print(f"wrote {', '.join(str(p) for p in res.outputs[:3])} ({res.method}, {res.nfe} NFE)")

    run_job(job, FEWER_CANDIDATES)
