"""The training job: data, model, AdamW + EMA, the loop with logging, sample grids, checkpoints, resume and DDP."""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from diffusers_cli import build
from diffusers_cli.checkpoints import STATE_NAME, WEIGHTS_NAME, CheckpointError, load_into, load_train_state, load_weights, save_train_state, save_weights, subset
from diffusers_cli.config import DEFAULT_GUIDANCE, ConfigError, TrainConfig, dump_config
from diffusers_cli.data import DatasetInfo, load_dataset
from diffusers_cli.distributed import World, barrier, init_world, shutdown
from diffusers_cli.engine.guidance import classifier_free, cycle_labels
from diffusers_cli.engine.losses import classifier_loss, dsm_loss
from diffusers_cli.engine.samplers import sample
from diffusers_cli.engine.score import ScoreModel, make_score_fn
from diffusers_cli.engine.sde import DDPM, SDE
from diffusers_cli.engine.training import EMA, batch_indices, warmup_lr
from diffusers_cli.engine.utils import append_dims
from diffusers_cli.files import write_text_atomic
from diffusers_cli.jobs.report import Reporter, SilentReporter
from diffusers_cli.runs import CONFIG_NAME, LOSS_PLOT_NAME, METRICS_NAME, MetricsLog, new_run_name, plot_series, save_grid

#: Accuracy of a classifier is logged per noise level in these bins of t.
T_BINS = (0.0, 0.25, 0.5, 0.75, 1.0001)


@dataclass
class TrainResult:
    """What a training job did."""

    run_dir: Path
    start_step: int
    step: int
    seconds: float
    loss: float
    interrupted: bool = False
    parameters: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class _Objective(nn.Module):
    """The per-example training loss as a module, so DistributedDataParallel can wrap it."""

    def __init__(self, net: nn.Module, sde: SDE, task: str, weighting: str, parameterization: str, conditional: bool = False) -> None:
        super().__init__()
        self.net = net
        self.sde = sde
        self.task = task
        self.weighting = weighting
        self.conditional = conditional
        self.score_model = ScoreModel(net, sde, parameterization) if task == "score" else None

    def forward(self, x0: Tensor, labels: Tensor, t: Tensor, eps: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.score_model is not None:
            class_labels = labels if self.conditional else None
            return dsm_loss(self.score_model, x0, None, self.weighting, class_labels, t, eps), None
        loss, correct, _ = classifier_loss(self.net, self.sde, x0, labels, None, t, eps)
        return loss, correct


def _fetch(dataset: Any, idx: Tensor) -> tuple[Tensor, Tensor]:
    """A batch (images in [-1, 1], labels) by index; preloaded uint8 datasets are indexed without a loader."""
    images = getattr(dataset, "images", None)
    if _preloaded(dataset):
        x = images[idx].float().div_(127.5).sub_(1.0)
        return x, dataset.labels[idx].long()
    items = [dataset[int(i)] for i in idx]
    return torch.stack([it[0] for it in items]), torch.tensor([int(it[1]) for it in items])


def _preloaded(dataset: Any) -> bool:
    images = getattr(dataset, "images", None)
    size = getattr(dataset, "image_size", None)
    return isinstance(images, Tensor) and images.dtype == torch.uint8 and images.shape[-1] == size and images.shape[-2] == size


def _prefetching(dataset: Any, cfg: TrainConfig, start: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Global batches from ``start`` on; lazy datasets are read by DataLoader workers ahead of the GPU."""
    n = len(dataset)
    if cfg.data.num_workers == 0 or _preloaded(dataset):
        for step in range(start, cfg.steps):
            yield _fetch(dataset, batch_indices(n, cfg.batch_size, cfg.seed, step))
        return
    batches = [batch_indices(n, cfg.batch_size, cfg.seed, s).tolist() for s in range(start, cfg.steps)]
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=cfg.data.num_workers,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=4,
        persistent_workers=False,
    )
    for x, y in loader:
        yield x, torch.as_tensor(y).long()


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _run_dir(cfg: TrainConfig) -> Path:
    name = cfg.name or new_run_name(cfg.data.dataset, cfg.sde.kind if cfg.task == "score" else "classifier")
    return cfg.out / name


def model_metadata(cfg: TrainConfig, info: DatasetInfo, net_kwargs: dict[str, Any], step: int, ema_updates: int) -> dict[str, Any]:
    """What a weights file says about itself: enough to rebuild the model with no other file."""
    return {
        "kind": cfg.task,
        "sde": dump_config(cfg.sde),
        "network": {k: list(v) if isinstance(v, tuple) else v for k, v in net_kwargs.items()},
        "parameterization": cfg.network.parameterization,
        "image_size": cfg.data.image_size,
        "channels": info.channels,
        "num_classes": info.num_classes,
        "class_names": list(info.class_names),
        "dataset": info.name,
        "step": step,
        "ema_updates": ema_updates,
    }


def _save(run_dir: Path, net: nn.Module, ema: EMA, opt: torch.optim.Optimizer, gen: torch.Generator, meta: dict[str, Any]) -> None:
    """Weights first, then the state that refers to them: a crash between leaves the older state, still consistent."""
    tensors = {f"online.{k}": v for k, v in net.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in ema.module.state_dict().items()})
    save_weights(run_dir / WEIGHTS_NAME, tensors, meta)
    save_train_state(run_dir / STATE_NAME, meta["step"], opt, gen, {"ema_updates": ema.num_updates})


def _resume(run_dir: Path, net: nn.Module, ema: EMA, opt: torch.optim.Optimizer, gen: torch.Generator) -> int:
    weights = run_dir / WEIGHTS_NAME
    if not (weights.is_file() and (run_dir / STATE_NAME).is_file()):
        raise CheckpointError(f"{run_dir} has no saved training state to resume; start it without --resume")
    tensors, meta = load_weights(weights)
    load_into(net, subset(tensors, "online"), weights)
    load_into(ema.module, subset(tensors, "ema"), weights)
    state = load_train_state(run_dir / STATE_NAME, opt, gen)
    if state["step"] != meta["step"]:
        raise CheckpointError(f"{run_dir}: weights are at step {meta['step']} but the state at {state['step']}; the run was damaged")
    ema.num_updates = int(state["ema_updates"])
    return int(state["step"])


def _sample_grid(ema_net: nn.Module, cfg: TrainConfig, sde: SDE, shape: tuple[int, ...], device: torch.device, num_classes: int) -> Tensor:
    model = ScoreModel(ema_net, sde, cfg.network.parameterization).eval()
    s = cfg.sampler
    gen = build.make_generator(cfg.seed, device)
    # A conditional net shows what `diffuse sample` gives by default: the classes in turn, guided.
    score_fn = (classifier_free(model, cycle_labels(0, shape[0], num_classes, device), DEFAULT_GUIDANCE)
                if cfg.class_conditional else make_score_fn(model))
    return sample(sde, score_fn, shape, s.name, s.steps, gen, device=device, grid=s.grid, eps=s.eps, final_denoise=s.final_denoise, **s.options())


class _CtrlC:
    """Defers the first Ctrl-C to the end of the current step, so the saved state is consistent; a second one aborts."""

    def __init__(self) -> None:
        self.requested = False
        self._old: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> "_CtrlC":
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def train(cfg: TrainConfig, reporter: Reporter | None = None) -> TrainResult:
    """Train a score model or a noise-aware classifier as ``cfg`` says; returns where and how far."""
    reporter = reporter or SilentReporter()
    device = build.resolve_device(cfg.device)
    world, device = init_world(device)
    try:
        return _train(cfg, reporter, device, world)
    finally:
        shutdown(world)


def _train(cfg: TrainConfig, reporter: Reporter, device: torch.device, world: World) -> TrainResult:
    if cfg.batch_size % world.size:
        raise ConfigError(f"batch_size {cfg.batch_size} (the global batch) must be divisible by the {world.size} processes")
    if cfg.precision == "fp16" and device.type != "cuda":
        raise ConfigError("precision fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
    run_dir = _run_dir(cfg)
    if not cfg.resume and (run_dir / STATE_NAME).exists():
        raise ConfigError(f"run {run_dir} already exists; pass --resume to continue it or choose another --name")

    d = cfg.data
    dataset, info = load_dataset(d.dataset, d.image_size, d.data_dir, d.split, cfg.seed, d.num_examples, d.channels, d.download)
    if cfg.task == "classifier" and info.num_classes < 2:
        raise ConfigError(f"dataset {info.name} has {info.num_classes} class; a classifier needs at least 2 (use class subfolders)")
    if cfg.class_conditional and cfg.task != "score":
        raise ConfigError("--class-conditional is for score models; a classifier is conditional by nature (drop the flag)")
    if cfg.class_conditional and info.num_classes < 2:
        raise ConfigError(f"--class-conditional needs a dataset with at least 2 classes; {info.name} has {info.num_classes} (use class subfolders)")
    sde = build.build_sde(cfg.sde)
    torch.manual_seed(cfg.seed)  # the initial weights, and later dropout, draw from the global generator
    if cfg.task == "score":
        net_kwargs = build.network_kwargs(cfg.network)
        if cfg.class_conditional:
            net_kwargs["num_classes"] = info.num_classes
        net = build.build_unet(net_kwargs, d.image_size, info.channels)
    else:
        net_kwargs = build.classifier_kwargs(cfg.classifier)
        net = build.build_classifier(net_kwargs, d.image_size, info.channels, info.num_classes)
    net.to(device)
    if cfg.channels_last:
        net.to(memory_format=torch.channels_last)
    ema = EMA(net, cfg.optim.ema_decay, cfg.optim.ema_warmup)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay)
    gen = build.make_generator(cfg.seed, device)

    start = _resume(run_dir, net, ema, opt, gen) if cfg.resume else 0
    log = MetricsLog(run_dir / METRICS_NAME)
    if world.is_main:
        (run_dir / "samples").mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / CONFIG_NAME, json.dumps(dump_config(cfg), indent=2) + "\n")
        if cfg.resume:
            log.truncate_after(start)
    barrier(world)

    objective: nn.Module = _Objective(net, sde, cfg.task, cfg.loss_weighting, cfg.network.parameterization, cfg.class_conditional)
    if world.distributed:
        objective = DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None)
    step_objective = torch.compile(objective) if cfg.compile else objective
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.precision == "fp16")
    n_params = sum(p.numel() for p in net.parameters())
    local = slice(world.rank * (cfg.batch_size // world.size), (world.rank + 1) * (cfg.batch_size // world.size))
    shape = (cfg.batch_size, info.channels, d.image_size, d.image_size)

    def snapshot(step: int) -> None:
        if world.is_main:
            _save(run_dir, net, ema, opt, gen, model_metadata(cfg, info, net_kwargs, step, ema.num_updates))
            rows = [(r["step"], r["loss"]) for r in log.read() if "loss" in r]
            plot_series(rows, run_dir / LOSS_PLOT_NAME, title=f"training loss ({cfg.task})")
        barrier(world)

    def grid(step: int, path: Path) -> None:
        if world.is_main and cfg.task == "score":
            n = cfg.sample_n
            save_grid(_sample_grid(ema.module, cfg, sde, (n, *shape[1:]), device, info.num_classes), path)

    reporter.start(cfg.steps - start, f"training {run_dir.name}")
    window: list[float] = []
    acc_bins = torch.zeros(len(T_BINS) - 1, 2)
    t0 = time.perf_counter()
    t_log, step, last_loss = t0, start, math.nan
    stop = _CtrlC()
    with stop:
        for step, (x, y) in enumerate(_prefetching(dataset, cfg, start), start=start):
            # One global draw of flips, times and noise, sliced per rank: any world size sees the same batch.
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if d.flip:
                flip = torch.rand(x.shape[0], generator=gen, device=device) < 0.5
                x = torch.where(append_dims(flip, x.ndim), x.flip(-1), x)
            # A classifier must be right at every noise level guidance visits: it keeps the SDE's uniform times.
            if cfg.time_sampling == "lognormal" and cfg.task == "score" and not isinstance(sde, DDPM):
                t = sde.lognormal_times(x.shape[0], gen, device, cfg.lognormal_mean, cfg.lognormal_std)
            else:  # the SDE's own: uniform on [eps, T], or DDPM's integer steps
                t = sde.train_times(x.shape[0], gen, device)
            eps = torch.randn(x.shape, generator=gen, device=device, dtype=x.dtype)
            if cfg.class_conditional:  # drop labels to "no class" (-1): the same net learns the unconditional score
                y = torch.where(torch.rand(y.shape[0], generator=gen, device=device) < cfg.label_dropout, -1, y)
            x, y, t, eps = x[local], y[local], t[local], eps[local]
            if cfg.channels_last:
                x, eps = x.contiguous(memory_format=torch.channels_last), eps.contiguous(memory_format=torch.channels_last)
            for g in opt.param_groups:
                g["lr"] = warmup_lr(step, cfg.optim.lr, cfg.optim.warmup, cfg.optim.decay, cfg.steps)
            with _autocast(device, cfg.precision):
                per_example, correct = step_objective(x, y, t, eps)
            loss = per_example.float().mean()
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            if cfg.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.optim.grad_clip)
            scaler.step(opt)
            scaler.update()
            ema.update(net)
            last_loss = float(loss.detach())
            if not math.isfinite(last_loss):
                raise FloatingPointError(f"loss became {last_loss} at step {step}; lower --lr or use fp32")
            window.append(last_loss)
            if correct is not None:
                b = torch.bucketize(t.float().cpu(), torch.tensor(T_BINS[1:-1]))
                acc_bins.index_put_((b, torch.zeros_like(b)), correct.float().cpu(), accumulate=True)
                acc_bins.index_put_((b, torch.ones_like(b)), torch.ones_like(b, dtype=torch.float), accumulate=True)
            done = step + 1
            reporter.advance(1, loss=last_loss)
            if done % cfg.log_every == 0 or done == cfg.steps:
                now = time.perf_counter()
                rec: dict[str, Any] = {"step": done, "loss": sum(window) / len(window), "lr": opt.param_groups[0]["lr"],
                                       "it_per_s": len(window) / max(now - t_log, 1e-9), "time": round(now - t0, 3)}
                if correct is not None:
                    rec["accuracy_by_t"] = {f"{T_BINS[i]:.2f}-{min(T_BINS[i + 1], 1):.2f}": round(float(a / max(c, 1)), 4)
                                            for i, (a, c) in enumerate(acc_bins.tolist())}
                    acc_bins.zero_()
                if world.is_main:
                    log.write(rec)
                window, t_log = [], now
            if cfg.sample_every and done % cfg.sample_every == 0 and done != cfg.steps:
                grid(done, run_dir / "samples" / f"step_{done:07d}.png")
            if done % cfg.checkpoint_every == 0 and done != cfg.steps:
                snapshot(done)
            step = done
            if stop.requested:
                break
    interrupted = stop.requested and step < cfg.steps
    if interrupted:
        reporter.message(f"interrupted at step {step}; saving the training state (Ctrl-C again aborts)")
    reporter.finish()
    snapshot(step)
    if not interrupted and step > start:
        grid(step, run_dir / "samples.png")
    return TrainResult(run_dir, start, step, time.perf_counter() - t0, last_loss, interrupted, n_params)
