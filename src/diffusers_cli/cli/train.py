"""`diffuse train`: train a score model (or a noise-aware classifier) into a run directory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

# The registries that the help texts list (each torch-free; config.sde costs only pydantic's import).
from diffusers_cli.config.defaults import LogKind, Precision
from diffusers_cli.config.sde import SCHEDULES, SDE_KINDS
from diffusers_cli.data.spec import Split
from diffusers_cli.data.registry import DATASETS
from diffusers_cli.engine.choices import EmaProfile, LrDecay, TimeSampling, listed
from diffusers_cli.engine.metrics import METRICS
from diffusers_cli.engine.metrics.metric import scores_samples_alone
from diffusers_cli.engine.networks.presets import UNET_PRESETS, WRN_PRESETS
from diffusers_cli.engine.weightings import DEFAULT_WEIGHTING, WEIGHTINGS
from diffusers_cli.support.memory import SMALLER_STEP

from diffusers_cli.cli.common import (
    EXIT_INTERRUPTED,
    ConfigOpt,
    DeviceOpt,
    JsonOpt,
    SeedOpt,
    SetOpt,
    emit_json,
    make_reporter,
    parse_kv,
    run_job,
    sampler_overrides,
)


def _count_or_auto(value: str | None, flag: str) -> int | str | None:
    """A flag's ``N`` as an int, ``auto`` as itself; anything else is bad input naming the flag."""
    if value is None or value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        from diffusers_cli.support.errors import UsageError

        raise UsageError(f"{flag} expects a whole number or auto, got {value!r}") from None


def train_command(
    dataset: Annotated[Optional[str], typer.Option(help=f"{', '.join(DATASETS)}, a folder path, or a file of `diffuse prepare` (`diffuse datasets` describes them).")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="Where the dataset's files are.")] = None,
    split: Annotated[Optional[str], typer.Option(help=f"Dataset split: {listed(Split)}.")] = None,
    image_size: Annotated[Optional[str], typer.Option(help="Train at this resolution: a side (32) or HEIGHTxWIDTH (32x48).")] = None,
    task: Annotated[Optional[str], typer.Option(help="score (the diffusion model) or classifier (for `diffuse condition`).")] = None,
    sde: Annotated[Optional[str], typer.Option(help=f"{', '.join(SDE_KINDS)}.")] = None,
    schedule: Annotated[Optional[str], typer.Option(help=f"{' or '.join(SCHEDULES)} (VP, subVP, DDPM).")] = None,
    preset: Annotated[Optional[str], typer.Option(help=f"Network size preset ({', '.join(UNET_PRESETS)}; classifiers: {', '.join(WRN_PRESETS)}).")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Total optimisation steps (default 3000).")] = None,
    epochs: Annotated[Optional[float], typer.Option(help="Instead of --steps: passes over the dataset at the global batch size.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Global batch size (split across processes under torchrun).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate of AdamW.")] = None,
    lr_decay: Annotated[Optional[str], typer.Option(help=f"After warm-up: {listed(LrDecay)} (none: constant; the others reach 0 at the last step).")] = None,
    loss_weighting: Annotated[Optional[str], typer.Option(help=f"{', '.join(WEIGHTINGS)} (default {DEFAULT_WEIGHTING}); min-snr's gamma: --set min_snr_gamma=5.")] = None,
    time_sampling: Annotated[Optional[str], typer.Option(help=f"Noise levels: {listed(TimeSampling)}. lognormal is the default (--set lognormal_mean, lognormal_std); importance draws a wider log-normal and weights each loss back (--set importance_widen=1.5).")] = None,
    ema_profile: Annotated[Optional[str], typer.Option(help=f"EMA of the weights: {listed(EmaProfile)}. exponential is the default (--set optim.ema_decay); power is EDM2's (--set optim.ema_sigma_rel).")] = None,
    class_conditional: Annotated[bool, typer.Option("--class-conditional", help="Also learn p(x | class), for classifier-free guidance (`diffuse sample --guidance`).")] = False,
    label_dropout: Annotated[Optional[float], typer.Option(help="With --class-conditional: share of labels dropped to 'no class' (default 0.1).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Folder that holds run directories.")] = None,
    name: Annotated[Optional[str], typer.Option(help="Run name (default: dataset-sde-date).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run --name (or the latest run) from its saved state.")] = False,
    init: Annotated[Optional[str], typer.Option("--init", help="Fine-tune this model: a run, .safetensors, diffusers folder, hf:ORG/NAME[@REV] or builtin:NAME (its SDE, network and image size are kept).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    precision: Annotated[Optional[str], typer.Option(help=f"{listed(Precision)}. fp32 is the default; bf16 and fp16 autocast (fp16 with a grad scaler, CUDA only); auto is bf16 where the device computes it natively (CUDA Ampere+, CPUs with AVX512-BF16 or AMX), else fp32.")] = None,
    compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the training step.")] = False,
    channels_last: Annotated[bool, typer.Option("--channels-last", help="Use the channels-last memory format.")] = False,
    num_workers: Annotated[Optional[str], typer.Option(help="Data-loading worker processes: N, or auto (default: some for datasets that decode files, folders and Cars; none for tensors in memory).")] = None,
    micro_batch: Annotated[Optional[str], typer.Option(help="Run each process's share of --batch-size in chunks of N, accumulating gradients (same recipe, less memory; N divides the share), or auto: found before the first step by halving until one fits (then halved once more for headroom), and recorded in the run.")] = None,
    checkpointing: Annotated[bool, typer.Option("--checkpointing", help="Recompute the U-Net's blocks in the backward pass (activation checkpointing): less memory per example, more time a step (benchmarks/README.md).")] = False,
    download: Annotated[bool, typer.Option("--download", help=f"Let torchvision download a missing {', '.join(s.name for s in DATASETS.values() if s.download == '--download')}, and huggingface_hub a missing hf: --init model.")] = False,
    sample_every: Annotated[Optional[int], typer.Option(help="Write a sample grid every N steps (0: only at the end).")] = None,
    snapshot_every: Annotated[Optional[str], typer.Option(help="Keep the EMA weights with their card in RUN/snapshots/ every N steps, or every Ne epochs (5e), and at the end; sample one with --model RUN@STEP, score them all with `diffuse evaluate --model RUN --snapshots`.")] = None,
    keep_snapshots: Annotated[Optional[int], typer.Option(help="Keep only the newest K snapshots, deleting the oldest (default: all).")] = None,
    sampler: Annotated[Optional[str], typer.Option(help="Sampler of the sample grids (default ei, 30 steps); `diffuse samplers` lists them.")] = None,
    option: Annotated[Optional[list[str]], typer.Option("-o", "--option", help="Option KEY=VALUE of the grids' sampler, repeatable (e.g. -o order=3).")] = None,
    eval_every: Annotated[Optional[str], typer.Option(help="Evaluate EMA samples every N steps, or every Ne epochs (5e); slow on a CPU: each evaluation samples and runs Inception on --eval-samples images (minutes; benchmarks/README.md).")] = None,
    eval_metrics: Annotated[Optional[str], typer.Option(help=f"Metrics of each evaluation, comma-separated: {', '.join(n for n, m in METRICS.items() if scores_samples_alone(m))} (default fid).")] = None,
    eval_samples: Annotated[Optional[int], typer.Option(help="Samples per evaluation (default 1000); fewer are faster but biased, so compare only figures of one count.")] = None,
    eval_sampler: Annotated[Optional[str], typer.Option(help="Sampler of the evaluation samples (default ei).")] = None,
    eval_steps: Annotated[Optional[int], typer.Option(help="Steps of the evaluation sampler (default 20).")] = None,
    eval_reference: Annotated[Optional[str], typer.Option(help="Evaluation reference: dataset name, image folder or statistics .npz (default: the training data); its statistics are computed once and cached in the run.")] = None,
    keep_best: Annotated[Optional[str], typer.Option(help="Keep best.safetensors by this metric (default: the first of --eval-metrics; none: off).")] = None,
    inception_weights: Annotated[Optional[Path], typer.Option(help="pytorch-fid's Inception weights for --eval-every (default: $DIFFUSE_INCEPTION_WEIGHTS, then torch's hub cache).")] = None,
    log: Annotated[Optional[str], typer.Option(help=f"{listed(LogKind)}: jsonl (default) writes the run's metrics.jsonl alone, tensorboard also TensorBoard events in the run (needs the tensorboard extra).")] = None,
    json_: JsonOpt = False,
) -> None:
    """Train a score model (or a classifier) and write a run directory with weights, state, logs and grids."""

    def job() -> int:
        from diffusers_cli.config.schema import TrainConfig, build_config
        from diffusers_cli.support.errors import UsageError
        from diffusers_cli.run.layout import CONFIG_NAME, latest_run, run_dir_inside
        from diffusers_cli.run.reader import RunFiles

        file = config
        overrides: dict[str, object] = {
            "data.dataset": dataset, "data.data_dir": str(data_dir) if data_dir else None, "data.split": split,
            "data.image_size": image_size, "data.num_workers": _count_or_auto(num_workers, "--num-workers"),
            "micro_batch": _count_or_auto(micro_batch, "--micro-batch"), "checkpointing": True if checkpointing else None,
            "data.download": True if download else None, "init": init, "task": task,
            "sde.kind": sde, "sde.schedule": schedule, "steps": steps, "batch_size": batch_size, "optim.lr": lr, "optim.decay": lr_decay,
            "loss_weighting": loss_weighting, "time_sampling": time_sampling, "optim.ema_profile": ema_profile,
            "out": str(out) if out else None, "name": name, "seed": seed, "device": device, "precision": precision,
            "compile": True if compile_ else None, "channels_last": True if channels_last else None,
            "sample_every": sample_every, "snapshot_every": snapshot_every, "keep_snapshots": keep_snapshots, "class_conditional": True if class_conditional else None, "label_dropout": label_dropout,
            **sampler_overrides(sampler, options=option),
            "epochs": epochs, "eval.every": eval_every, "eval.metrics": eval_metrics, "eval.samples": eval_samples,
            "eval.sampler.name": eval_sampler, "eval.sampler.steps": eval_steps, "eval.reference": eval_reference,
            "eval.keep_best": keep_best, "eval.inception_weights": str(inception_weights) if inception_weights else None,
            "log": log,
        }
        if preset is not None:
            overrides["classifier.preset" if (task == "classifier" or preset.startswith("wrn")) else "network.preset"] = preset
        if resume:
            # The saved config is the base; flags given now (e.g. more --steps) override it.
            runs = out or Path("runs")
            run = run_dir_inside(runs, name) if name else latest_run(runs)  # a name never reaches outside --out
            if run is None or not os.path.lexists(run / CONFIG_NAME):
                raise UsageError(f"nothing to resume: no run {'named ' + repr(name) if name else 'at all'} under {runs}/")
            # The run's files are read, appended to and written into: none may lead out of it (run.reader).
            files = RunFiles.of(run)
            files.check_inside()
            file = files.file(CONFIG_NAME) or run / CONFIG_NAME
            overrides.update({"name": run.name, "out": str(run.parent), "resume": True})
        overrides.update(parse_kv(set_))
        cfg = build_config(TrainConfig, file, overrides)
        from diffusers_cli.checkpoints.weights import WEIGHTS_NAME
        from diffusers_cli.jobs.train import train

        result = train(cfg, make_reporter(json_))
        summary = {
            "run_dir": str(result.run_dir), "task": cfg.task, "steps": result.step, "start_step": result.start_step,
            "loss": result.loss, "seconds": round(result.seconds, 3), "parameters": result.parameters,
            "interrupted": result.interrupted, "weights": str(result.run_dir / WEIGHTS_NAME),
            **result.extra,
        }
        if not result.is_main:
            pass  # rank 0 speaks for the run; two ranks writing one stdout would interleave their lines
        elif json_:
            emit_json(summary)
        else:
            best = result.extra.get("best")
            kept = f"; best {best['metric']} {best['value']:.4g} at step {best['step']} in {best['weights']}" if best else ""
            print(f"trained {result.run_dir} to step {result.step} ({result.extra['epochs']:g} epochs) in {result.seconds:.0f}s "
                  f"(loss {result.loss:.4f}){kept}")
        return EXIT_INTERRUPTED if result.interrupted else 0

    code = run_job(job, SMALLER_STEP)
    if code:
        raise typer.Exit(code)
