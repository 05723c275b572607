"""`diffuse tune`: time grids tuned to one model, for `--grid tuned` on sample, condition and evaluate."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from diffusers_cli.cli.common import (
    ConfigOpt, DeviceOpt, DownloadModelOpt, GridsOpt, JsonOpt, OptionOpt, OrderOpt, SamplerOpt, SeedOpt, SetOpt,
    emit_json, make_reporter, option_pairs, parse_kv, run_job,
)


def tune_command(
    model: Annotated[Optional[str], typer.Argument(help="Run directory, .safetensors, diffusers folder, hf:ORG/NAME or builtin:NAME (default: the newest run).")] = None,
    sampler: SamplerOpt = None,
    steps: Annotated[Optional[list[int]], typer.Option("--steps", help="Step count to tune for; repeat for several (default 5).")] = None,
    option: OptionOpt = None,
    order: OrderOpt = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Images the grid is tuned on (default 16).")] = None,
    guidance: Annotated[Optional[float], typer.Option(help="Class-conditional models: the guidance scale to tune at (default: sample's).")] = None,
    objective: Annotated[Optional[str], typer.Option(help="What the grid minimises: 'path' (each sample's error against an accurate solve; deterministic samplers' default) or 'moments' (the batch's mean and spread).")] = None,
    grids: GridsOpt = None,
    download: DownloadModelOpt = False,
    no_ema: Annotated[bool, typer.Option("--no-ema", help="Tune for the online weights instead of the EMA.")] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Tune a sampler's time grid to a model (written to grids.json; use it with --grid tuned)."""

    def job() -> None:
        from diffusers_cli.config.schema import TuneConfig, build_config

        overrides: dict[str, object] = {
            "model": model, "sampler": sampler, "steps": steps, "batch_size": batch_size, "guidance": guidance, "objective": objective,
            "grids": str(grids) if grids else None, "seed": seed, "device": device,
            "use_ema": False if no_ema else None, "download": True if download else None,
            **{f"options.{k}": v for k, v in {"order": order, **option_pairs(option)}.items() if v is not None},
        }
        overrides.update(parse_kv(set_))
        cfg = build_config(TuneConfig, config, overrides)
        from diffusers_cli.jobs.tune import tune_grids

        res = tune_grids(cfg, make_reporter(json_))
        if json_:
            emit_json({"model": str(res.model), "file": str(res.file), "grids": res.entries})
            return
        for e in res.entries:
            cost = e["cost"]
            gain = e["default_error"] / e["error"] if e["error"] > 0 else float("inf")
            print(f"{e['sampler']} at {e['steps']} steps: {e['objective']} error {e['error']:.3g} (default grid "
                  f"{e['default_error']:.3g}, {gain:.2f}x lower), {cost['evaluations']} evaluations, {cost['nfe']} NFE on "
                  f"{cost['batch']} images, {cost['seconds']:.1f} s")
        print(f"wrote {res.file}; sample with --grid tuned --sampler {cfg.sampler} --steps N")

    run_job(job)
