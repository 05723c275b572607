"""`diffuse tune`: time grids tuned to one model, for `--grid tuned` on sample, condition and evaluate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from diffusers_cli.engine.grid_objectives import DEFAULT_OBJECTIVE, OBJECTIVES  # the registry alone: no torch
from diffusers_cli.cli.common import (
    ConfigOpt, DeviceOpt, DownloadModelOpt, GridsOpt, JsonOpt, OptionOpt, OrderOpt, SamplerOpt, SeedOpt, SetOpt,
    emit_json, make_reporter, option_pairs, parse_kv, run_job,
)

OBJECTIVE_HELP = (f"What the grid minimises against an accurate solve of the same noise: {', '.join(OBJECTIVES)} "
                  f"(default {DEFAULT_OBJECTIVE}). " + "; ".join(f"{o.name}: {o.help}" for o in OBJECTIVES.values()) + ".")


def tune_command(
    model: Annotated[Optional[str], typer.Argument(help="Run directory, .safetensors, diffusers folder, hf:ORG/NAME or builtin:NAME (default: the newest run).")] = None,
    sampler: SamplerOpt = None,
    steps: Annotated[Optional[list[int]], typer.Option("--steps", help="Step count to tune for; repeat for several (default 5).")] = None,
    option: OptionOpt = None,
    order: OrderOpt = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Images the grid is tuned on (default 16).")] = None,
    guidance: Annotated[Optional[float], typer.Option(help="Class-conditional models: the guidance scale to tune at (default: sample's).")] = None,
    objective: Annotated[Optional[str], typer.Option(help=OBJECTIVE_HELP)] = None,
    judge: Annotated[Optional[str], typer.Option(help="A judge of clean images (builtin:mnist-judge, or a judge's .safetensors): keep a tuned grid only if, on 256 images of other noise, the judge finds it better than the default grid by more than the noise on its recognised share or its FD to real images, and not worse beyond the noise on the other.")] = None,
    judge_batch: Annotated[Optional[int], typer.Option("--judge-batch", help="With --judge: images each grid is drawn and judged on (default 256).")] = None,
    reference: Annotated[Optional[str], typer.Option(help="With --judge: the real images its FD is taken to, a dataset name (default: the model's dataset, test split).")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="With --judge: where the reference dataset's files are.")] = None,
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
            "grids": str(grids) if grids else None, "seed": seed, "device": device, "judge": judge,
            "judge_batch": judge_batch, "reference": reference, "data_dir": str(data_dir) if data_dir else None,
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
            cost, held = e["cost"], e.get("held_out")
            head = f"{e['sampler']} at {e['steps']} steps ({e['objective']} objective)"
            if held is None and not e["kept"]:
                verdict = f"no grid beat the default (error {e['default_error']:.3g}): the default grid is kept"
            elif held is None:
                verdict = f"error {e['error']:.3g} against the default grid's {e['default_error']:.3g} (no held-out check)"
            else:
                figures = (f"on {held['batch']} held-out images {held['tuned']:.3g} against the default grid's "
                           f"{held['default']:.3g} (standard error of the gap {held['se']:.2g})")
                judged = e.get("judge_gate")
                if not held["kept"]:
                    verdict = f"the default grid is kept: the tuned grid did not beat it by more than the noise, {figures}"
                elif judged is None:
                    verdict = f"tuned grid kept: {figures}"
                else:
                    verdict = (f"{figures}; judged on {judged['n']} images of other noise: recognised {judged['recognised']:.1%} "
                               f"against {judged['default_recognised']:.1%}, judge FD {judged['judge_fd']:.1f} against "
                               f"{judged['default_judge_fd']:.1f} (gap SEs {judged['recognised_gap_se']:.1%}, "
                               f"{judged['judge_fd_gap_se']:.1f}): " + ("tuned grid kept" if e["kept"] else
                                                                       "not a clear win, so the default grid is kept"))
            print(f"{head}: {verdict}; {cost['evaluations']} evaluations, {cost['nfe']} NFE on {cost['batch']} images, "
                  f"{cost['seconds']:.1f} s")
        print(f"wrote {res.file}; sample with --grid tuned --sampler {cfg.sampler} --steps N")

    run_job(job)
