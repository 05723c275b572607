"""`diffuse evaluate`: FID and Inception Score of a model's samples (or a folder of images), and bits/dim on a data split."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from diffusers_cli.cli.common import (
    AtolOpt, BatchOpt, ConfigOpt, DeviceOpt, EpsOpt, EtaOpt, GridOpt, GridsOpt, JsonOpt, ModelOpt, NoDenoiseOpt, OptionOpt, OrderOpt, RtolOpt,
    SamplerOpt, SeedOpt, SetOpt, SnrOpt, StepsOpt, emit_json, make_reporter, metric_option_pairs, parse_kv, run_job,
    sampler_overrides,
)

from diffusers_cli.data.spec import Split  # torch-free, as the two below
from diffusers_cli.engine.choices import Probe, listed
from diffusers_cli.engine.metrics import METRICS, metric_option_specs  # the registry alone: no torch, numpy or scipy

if TYPE_CHECKING:  # the job imports torch; the CLI imports it only when a command runs
    from diffusers_cli.jobs.evaluate import EvaluateResult

METRICS_HELP = f"Metrics to compute, comma-separated: {', '.join(METRICS)} (default fid,is)."


def evaluate_command(
    model: ModelOpt = None,
    images: Annotated[Optional[Path], typer.Option(help="Evaluate this folder of images (recursive) instead of generating samples.")] = None,
    snapshots: Annotated[bool, typer.Option("--snapshots", help="Score every snapshot of the run --model names (train --snapshot-every): a table, a plot in its report.html, --json per snapshot.")] = False,
    metrics: Annotated[Optional[str], typer.Option(help=METRICS_HELP)] = None,
    n: Annotated[Optional[int], typer.Option("-n", "--num-samples", help="Images to generate (default 50,000), or the first N of --images.")] = None,
    reference: Annotated[Optional[str], typer.Option(help="FID reference: dataset name, image folder or statistics .npz (default: the model's dataset).")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="Where the reference (and bits/dim) dataset's files are.")] = None,
    split: Annotated[Optional[str], typer.Option(help=f"Reference dataset split: {listed(Split)} (default train).")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Resolution of the reference dataset (default: the model's).")] = None,
    reference_examples: Annotated[Optional[int], typer.Option(help="Use a seeded subset of this many reference dataset images.")] = None,
    download: Annotated[bool, typer.Option("--download", help="Fetch what is missing: a reference or bits/dim dataset (torchvision), an hf: --model (huggingface_hub), pytorch-fid's Inception weights (checked by SHA-256).")] = False,
    save_reference_stats: Annotated[Optional[Path], typer.Option(help="Cache the reference statistics in this .npz; reused when it matches (see below).")] = None,
    inception_weights: Annotated[Optional[Path], typer.Option(help="pytorch-fid's Inception weights (.pth, checked by SHA-256) or a .safetensors of them.")] = None,
    allow_few: Annotated[bool, typer.Option("--allow-few", help="Allow FID from <= 2048 images (meaningless; to test a pipeline) and IS in one split.")] = False,
    is_splits: Annotated[Optional[int], typer.Option(help="Inception Score splits (default 10); IS's std is over them.")] = None,
    kid_subsets: Annotated[Optional[int], typer.Option(help="KID: random subsets averaged (default 100); KID's std is over them.")] = None,
    kid_subset_size: Annotated[Optional[int], typer.Option(help="KID: images per subset at most (default 1000).")] = None,
    fid_bootstrap: Annotated[Optional[int], typer.Option(help="FID: bootstrap resamples of the scored images for its std (default 20; 0: none).")] = None,
    metric_option: Annotated[Optional[list[str]], typer.Option("--metric-option", help=(
        "A metric option NAME=VALUE, repeatable (wins over its flag above): "
        + "; ".join(f"{name}={spec.default}: {spec.help}" for name, spec in metric_option_specs().items())
        + "."))] = None,
    sampler: SamplerOpt = None,
    steps: StepsOpt = None,
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
    no_ema: Annotated[bool, typer.Option("--no-ema", help="Use the online weights instead of the EMA.")] = False,
    guidance: Annotated[Optional[float], typer.Option(help="Class-conditional models: classifier-free guidance of the samples (default as `diffuse sample`).")] = None,
    batch_size: BatchOpt = None,
    bpd_runs: Annotated[Optional[int], typer.Option(help="Runs of the bits/dim trace estimator; reports their mean and spread.")] = None,
    bpd_examples: Annotated[Optional[int], typer.Option(help="Dataset examples for bits/dim (default: the whole split).")] = None,
    bpd_dataset: Annotated[Optional[str], typer.Option(help="Dataset for bits/dim (default: the model's own).")] = None,
    bpd_split: Annotated[Optional[str], typer.Option(help=f"Split for bits/dim: {listed(Split)} (default test).")] = None,
    bpd_rtol: Annotated[Optional[float], typer.Option(help="Relative tolerance of the bits/dim ODE solve (default 1e-5).")] = None,
    bpd_atol: Annotated[Optional[float], typer.Option(help="Absolute tolerance of the bits/dim ODE solve (default 1e-5).")] = None,
    bpd_probe: Annotated[Optional[str], typer.Option(help=f"Trace estimator: {listed(Probe)} (default rademacher).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Measure FID, Inception Score and bits/dim of a model (or FID/IS of a folder of images).

    Reference (--reference): a dataset name, read as training reads it (at --image-size, default the
    model's; with --data-dir, --split, --reference-examples); a folder of images, read as pytorch-fid
    reads it (recursively; mixed sizes are resized); or a statistics .npz (pytorch-fid's keys mu, sigma).
    Default: the model's own dataset, train split.

    Statistics cache (--save-reference-stats PATH): the reference's statistics are written to PATH as an
    .npz that pytorch-fid reads too, recording the reference and the SHA-256 of the Inception weights.
    A later run with the same PATH, reference and weights reuses them instead of recomputing; another
    reference or other weights recompute and overwrite PATH; a file there that diffuse evaluate did not
    write is never overwritten. Delete PATH to force a recompute.

    Inception weights: --inception-weights PATH, else $DIFFUSE_INCEPTION_WEIGHTS, else torch's hub cache
    (where pytorch-fid keeps pt_inception-2015-12-05-6726825d.pth). Nothing is downloaded unless --download is given.

    Bits/dim: on --bpd-split (test) of the model's dataset, averaged over --bpd-runs runs of the trace
    estimator; its std is the standard deviation of the runs' means.

    --json prints {"fid": {...}, "is": {...}, "bpd": {...}, "provenance": {...}}: one key per metric
    computed, and what produced them (model or images, sampler, reference, Inception weights, warnings).

    Under torchrun, sampling and bits/dim are split across processes; Inception runs on rank 0.
    """

    def job() -> None:
        from diffusers_cli.config.schema import EvaluateConfig, build_config

        overrides: dict[str, object] = {
            "model": str(model) if model else None, "grids": str(grids) if grids else None, "images": str(images) if images else None, "snapshots": True if snapshots else None, "metrics": metrics,
            "num_samples": n, "reference": reference, "data_dir": str(data_dir) if data_dir else None, "split": split,
            "image_size": image_size, "reference_examples": reference_examples, "download": True if download else None,
            "save_reference_stats": str(save_reference_stats) if save_reference_stats else None,
            "inception_weights": str(inception_weights) if inception_weights else None,
            "allow_few": True if allow_few else None, "is_splits": is_splits, "batch_size": batch_size,
            "kid_subsets": kid_subsets, "kid_subset_size": kid_subset_size, "fid_bootstrap": fid_bootstrap,
            "metric_options": metric_option_pairs(metric_option) or None,
            "bpd_runs": bpd_runs, "bpd_examples": bpd_examples, "bpd_dataset": bpd_dataset, "bpd_split": bpd_split,
            "bpd_rtol": bpd_rtol, "bpd_atol": bpd_atol, "bpd_probe": bpd_probe,
            "seed": seed, "device": device, "use_ema": False if no_ema else None, "guidance": guidance,
            **sampler_overrides(sampler, steps, grid, eps, no_denoise, option, snr=snr, order=order, eta=eta, rtol=rtol, atol=atol),
        }
        overrides.update(parse_kv(set_))
        cfg = build_config(EvaluateConfig, config, overrides)
        from diffusers_cli.jobs.evaluate import evaluate, evaluate_snapshots

        if cfg.snapshots:
            scores = evaluate_snapshots(cfg, make_reporter(json_))
            if scores.results and scores.results[0].is_main:
                if json_:
                    emit_json(scores.summary())
                else:
                    for line in snapshot_table(scores.rows()):
                        print(line)
                for line in dict.fromkeys(w for res in scores.results for w in res.warnings):
                    print(f"diffuse: warning: {line}", file=sys.stderr)
            return
        res = evaluate(cfg, make_reporter(json_))
        if not res.is_main:
            return
        if json_:
            emit_json(res.summary())
        else:
            for line in human_lines(res):
                print(line)
        for line in res.warnings:
            print(f"diffuse: warning: {line}", file=sys.stderr)

    run_job(job)



def human_lines(res: EvaluateResult) -> list[str]:
    """The figures of a result as short lines for a terminal: one per metric (its own wording), then the weights."""
    p = res.provenance
    guided = f", guidance {p.guidance:g}" if p.guidance is not None else ""
    if p.num_samples is None:
        scored = ""  # no image metric asked for
    elif p.images is not None:
        scored = f"{p.num_samples:,} images in {p.images}"
    else:
        scored = f"{p.num_samples:,} samples ({p.sampler}, {p.steps} steps, {p.grid} grid, {p.nfe} NFE{guided})"
    reference = p.reference.description if p.reference is not None else None
    lines = [METRICS[name].describe(values, scored, reference) for name, values in res.figures.items()]
    if p.weights is not None:
        lines.append(f"Inception weights {p.weights.path} (SHA-256 {p.weights.sha256[:12]}..., "
                     f"{'official' if p.weights.official else 'NOT the official pytorch-fid weights'})")
    return lines


def snapshot_table(rows: list[dict[str, object]]) -> list[str]:
    """``evaluate --snapshots``' rows as an aligned table: the step, then each metric's headline figure (± std)."""
    names = list(dict.fromkeys(k for row in rows for k in row if k != "step"))
    header = ["step", *(n.upper() for n in names)]

    def cell(figures: object, name: str) -> str:
        if not isinstance(figures, dict) or not isinstance(figures.get(METRICS[name].headline), (int, float)):
            return "-"
        text = f"{figures[METRICS[name].headline]:.4g}"
        std = figures.get("std")
        return text + (f" ± {std:.2g}" if isinstance(std, (int, float)) and std else "")

    table = [header] + [[f"{row['step']:,}", *(cell(row.get(n), n) for n in names)] for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    return ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in table]
