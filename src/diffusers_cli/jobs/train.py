"""The training job: assembles data, model, objective, AdamW + EMA and hooks (log, grids, checkpoints) around the engine's loop."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from diffusers_cli.parts import build
from diffusers_cli.checkpoints.weights import STATE_NAME, WEIGHTS_NAME, load_into, load_model, save_model, subset
from diffusers_cli.checkpoints.card import CheckpointError, ModelCard
from diffusers_cli.checkpoints.train_state import load_train_state, save_train_state
from diffusers_cli.config.base import ConfigError
from diffusers_cli.config.schema import TrainConfig, dump_config, steps_between
from diffusers_cli.data import DatasetInfo, load_dataset, random_flip
from diffusers_cli.data.prepared import advise_prepare
from diffusers_cli.support.distributed import World, all_gather, barrier, broadcast_object, init_world, shutdown
from diffusers_cli.engine.grid_tuning import tune
from diffusers_cli.engine.grids import TUNED
from diffusers_cli.engine.score import ScoreModel, make_score_fn
from diffusers_cli.engine.sde import SDE
from diffusers_cli.engine.training import (
    EMA,
    Hook,
    NonFiniteError,
    batch_indices,
    default_generators,
    largest_micro_batch,
    train_loop,
    warmup_lr,
)
from diffusers_cli.support.files import atomic_path, write_text_atomic
from diffusers_cli.support.hardware import fast_math_state, resolve_precision
from diffusers_cli.support.progress import Reporter, SilentReporter
from diffusers_cli.run.lock import busy, hold_run
from diffusers_cli.engine.metrics import check_metrics, metric_options
from diffusers_cli.support.errors import MachineError, RunFailed, UsageError
from diffusers_cli.support.memory import SMALLER_STEP, out_of_memory
from diffusers_cli.parts.drawing import draw, guidance_plan, guided_score_fns
from diffusers_cli.parts.evaluation import ReferenceRequest, check_training_metrics, prepare_evaluator
from diffusers_cli.run.layout import (
    BEST_NAME,
    CONFIG_NAME,
    EVAL_REFERENCE_NAME,
    FINAL_SAMPLES_NAME,
    LOSS_PLOT_NAME,
    METRICS_NAME,
    SAMPLES_DIR,
    MetricsLog,
    new_run_name,
    run_dir_inside,
    step_grid_name,
)
from diffusers_cli.support.image_grids import make_grid, save_grid
from diffusers_cli.run.plots import loss_figure, save_figure
from diffusers_cli.run.provenance import source_commit
from diffusers_cli.run.facts import counts_epochs
from diffusers_cli.run.reader import RunFiles
from diffusers_cli.models.ours import arch_of
from diffusers_cli.run.snapshots import drop_after, write_snapshot
from diffusers_cli.run.report import write_report
from diffusers_cli.run.tensorboard import TensorBoardLog
from diffusers_cli.parts.watch import Watch


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
    is_main: bool = True  # under torchrun only rank 0 reports: one summary (one JSON document) per run


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
    hw = getattr(dataset, "image_hw", None)
    return isinstance(images, Tensor) and images.dtype == torch.uint8 and tuple(images.shape[-2:]) == hw


def num_workers(setting: int | str, dataset: Any, world: World) -> int:
    """The data-loading workers of ``--num-workers``: "auto" gives datasets that decode files a share of the CPUs, tensors none."""
    if _preloaded(dataset):
        return 0  # indexing a tensor in memory: a worker would only add a copy
    if setting != "auto":
        return int(setting)
    # Leave one CPU to the training process itself; the ranks of one machine share the rest.
    return max(1, min(4, (os.cpu_count() or 2) // world.size - 1))


@dataclass
class _Batches:
    """This rank's slices of the global batches of steps ``start`` .. ``steps`` - 1, read ahead by workers where they decode.

    The indices are a pure function of (seed, step) (``batch_indices``); a rank reads and decodes only
    its slice of them, and ``read`` counts the examples it read.
    """

    dataset: Any
    batch_size: int  # the global batch
    seed: int
    local: slice  # this rank's share of each global batch
    workers: int
    read: int = 0  # examples this rank has read (decoded, for datasets that decode files)

    def __call__(self, start: int, steps: int) -> Iterator[tuple[Tensor, Tensor]]:
        """The batches of steps ``start`` .. ``steps`` - 1."""
        n = len(self.dataset)
        slices = (batch_indices(n, self.batch_size, self.seed, s)[self.local] for s in range(start, steps))
        if self.workers == 0:
            for idx in slices:
                self.read += len(idx)
                yield _fetch(self.dataset, idx)
            return
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=[idx.tolist() for idx in slices],
            num_workers=self.workers,
            pin_memory=torch.cuda.is_available(),
            prefetch_factor=4,
            persistent_workers=True,
        )
        for x, y in loader:
            self.read += len(x)
            yield x, torch.as_tensor(y).long()


def _run_dir(cfg: TrainConfig) -> Path:
    name = cfg.name or new_run_name(cfg.data.dataset, cfg.sde.kind if cfg.task == "score" else "classifier")
    return run_dir_inside(cfg.out, name)


def _refuse_existing(cfg: TrainConfig, run_dir: Path) -> None:
    """ConfigError when a new run would overwrite a trained one."""
    if not cfg.resume and (run_dir / STATE_NAME).exists():
        raise ConfigError(f"run {run_dir} already exists; pass --resume to continue it or choose another --name")


def _check_eval(cfg: TrainConfig) -> tuple[dict[str, Any], str] | None:
    """The metrics evaluated during training and the one kept best, checked before anything is written (None: no --eval-every)."""
    e = cfg.eval
    if cfg.task != "score" or e.steps_between(1.0) == 0:  # 0 steps between: no evaluation at any epoch size
        return None
    metrics = check_metrics(e.metrics)
    check_training_metrics(metrics)
    keep = e.keep_best if e.keep_best is not None else next(iter(metrics))
    if keep != "none" and keep not in metrics:
        raise ConfigError(f"--keep-best {keep}: it must be one of the evaluated metrics ({', '.join(metrics)}) or none")
    return metrics, keep


def _diverged(err: NonFiniteError, run: "_Run", cfg: TrainConfig) -> RunFailed:
    """The one line a diverged run ends with: where, what is kept, how to go on."""
    skip = ("--set max_skips=K skips longer runs of them" if cfg.on_nonfinite == "skip"
            else "--set on_nonfinite=skip skips such steps instead")
    return RunFailed(f"training diverged: {err}; {run.kept()} after lowering --lr, training in fp32 (--precision fp32) or clipping "
                     f"gradients harder (--set optim.grad_clip=0.5); {skip}")


def model_card(cfg: TrainConfig, info: DatasetInfo, net: nn.Module, step: int, ema_updates: int,
               ran: dict[str, Any] | None = None) -> ModelCard:
    """What a weights file says about itself: the network's own config, the SDE, the images; enough to rebuild it.

    ``ran``: how the run ran, for its extra (e.g. the micro-batch --micro-batch auto chose).
    """
    return ModelCard(
        kind=cfg.task, arch=arch_of(net), network=dict(net.config), sde=dump_config(cfg.sde),
        image_shape=(info.channels, *cfg.data.image_hw), class_names=info.class_names, dataset=info.name,
        parameterization=cfg.network.parameterization if cfg.task == "score" else None, step=step, ema_updates=ema_updates,
        extra={**build.init_record(cfg), **({"commit": commit} if (commit := source_commit()) else {}),
               **({"fast_math": fast} if (fast := fast_math_state(next(net.parameters()).device)) else {}), **(ran or {})},
    )


def _weights(net: nn.Module, ema: EMA) -> dict[str, Tensor]:
    """The tensors of a weights file: the online network's under ``online.``, the average's under ``ema.``."""
    tensors = {f"online.{k}": v for k, v in net.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in ema.module.state_dict().items()})
    return tensors


def _save(run_dir: Path, net: nn.Module, ema: EMA, opt: torch.optim.Optimizer, gen: torch.Generator, card: ModelCard,
          scaler: torch.amp.GradScaler | None = None) -> None:
    """Both files written in full before either replaces its predecessor: a full disk leaves the old pair, consistent.

    The weights go to a temporary file, the state is written and renamed, then the weights are renamed;
    only a crash between the two renames (which need no disk space) can split the pair, and resume says so.
    """
    with atomic_path(run_dir / WEIGHTS_NAME, durable=True) as weights_tmp:
        save_model(weights_tmp, _weights(net, ema), card, atomic=False)
        # fp16's loss scale and growth count: which steps the scaler skips depends on them, so a resume must keep them.
        scaled = {"grad_scaler": scaler.state_dict()} if scaler is not None and scaler.is_enabled() else {}
        save_train_state(run_dir / STATE_NAME, card.step, opt, gen, {"ema_updates": ema.num_updates, **scaled})


def _resume(run_dir: Path, net: nn.Module, ema: EMA, opt: torch.optim.Optimizer, gen: torch.Generator,
            scaler: torch.amp.GradScaler | None = None) -> int:
    files = RunFiles.of(run_dir)
    files.check_inside()  # the run is appended to and written into: no link may carry that outside it (run.reader)
    weights = files.file(WEIGHTS_NAME) or run_dir / WEIGHTS_NAME
    if not (weights.is_file() and files.file(STATE_NAME) is not None):
        raise CheckpointError(f"{run_dir} has no saved training state to resume; start it without --resume")
    tensors, card = load_model(weights)
    load_into(net, subset(tensors, "online"), weights)
    load_into(ema.module, subset(tensors, "ema"), weights)
    state = load_train_state(run_dir / STATE_NAME, opt, gen)
    if state["step"] != card.step:
        raise CheckpointError(f"{run_dir}: weights are at step {card.step} but the state at {state['step']}; the run was damaged")
    ema.num_updates = int(state["ema_updates"])
    if scaler is not None and state.get("grad_scaler"):
        scaler.load_state_dict(state["grad_scaler"])
    return int(state["step"])


def _preview(ema_net: nn.Module, cfg: TrainConfig, card: ModelCard, sde: SDE, device: torch.device, run_dir: Path) -> Tensor:
    """The preview grid's images: what ``diffuse sample --seed SEED -n sample_n`` draws from these EMA weights."""
    model = ScoreModel(ema_net, sde, cfg.network.parameterization).eval()
    s, n, shape = cfg.sampler, cfg.sample_n, tuple(card.image_shape)
    # A conditional net shows what `diffuse sample` gives by default: the classes in turn, guided.
    _, scale = guidance_plan(card, None, None, run_dir)
    score_fn_for = guided_score_fns(model, card.num_classes, None, scale, device) if scale is not None else None
    score_fn = score_fn_for(0, n) if score_fn_for is not None else make_score_fn(model)
    # The weights move between previews, so a tuned grid is tuned again, on the preview's own score and noise.
    times = None if s.grid != TUNED else tune(sde, score_fn, (n, *shape), s.name, s.steps, device=device, eps=s.eps,
                                               generator=torch.Generator(device=device).manual_seed(cfg.seed),
                                               final_denoise=s.final_denoise, **s.options).times
    images, _ = draw(sde, score_fn, shape, n, n, cfg.seed, s, device, World(), SilentReporter(),
                     score_fn_for=score_fn_for, times=times)
    return images


def _watch(cfg: TrainConfig, run_dir: Path, log: MetricsLog, card: ModelCard, steps_per_epoch: float, device: torch.device,
           world: World, reporter: Reporter, tb: TensorBoardLog | None) -> Watch | None:
    """The evaluation hook's state, prepared before the first step (None without --eval-every)."""
    e = cfg.eval
    checked = _check_eval(cfg)
    if e.steps_between(steps_per_epoch) == 0 or checked is None:
        return None
    metrics, keep = checked
    # Few samples are allowed here: figures are compared between evaluations of one run, always of the same count.
    options = metric_options(e, e.metric_options, e.seed, allow_few=True)
    request = ReferenceRequest(e.reference, None, cfg.data.data_dir, e.split, e.reference_examples, cfg.data.download, e.batch_size)
    evaluator = prepare_evaluator(metrics, options, request, card, run_dir / EVAL_REFERENCE_NAME, e.samples, e.sampler,
                                  e.batch_size, e.seed, e.inception_weights, cfg.data.download, device, world, reporter)
    if world.is_main:
        for line in evaluator.warnings:
            reporter.message(f"evaluation: {line}")
        reporter.message(f"evaluating {', '.join(metrics)} on {e.samples} EMA samples ({e.sampler.name}, {e.sampler.steps} steps) "
                         f"every {e.steps_between(steps_per_epoch)} steps against {evaluator.reference.description}; "
                         f"on a CPU each evaluation takes minutes (benchmarks/README.md)")
    every = e.steps_between(steps_per_epoch)
    total = cfg.total_steps(round(steps_per_epoch * cfg.batch_size))

    def remaining(step: int) -> int:  # multiples of every still ahead, plus the one after the last step
        return (total - 1) // every - step // every + 1

    return Watch(evaluator, run_dir, log, None if keep == "none" else keep, steps_per_epoch, world, device, reporter,
                 tb.record if tb is not None else None, remaining, counts_epochs(cfg))


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
    if cfg.precision == "auto":  # what ran is what the run records (config.json, the card)
        cfg = cfg.model_copy(update={"precision": resolve_precision(cfg.precision, device)})
        if world.is_main:
            reporter.message(f"precision auto: {cfg.precision} ({'native' if cfg.precision == 'bf16' else 'no native'} bf16 on {device.type})")
    if cfg.precision == "fp16" and device.type != "cuda":
        raise ConfigError("precision fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
    cfg, init = build.apply_init(cfg)  # --init MODEL: its SDE, parameterisation, image shape, and its weights below
    # Rank 0's name: a dated default name could differ between ranks that start a second apart.
    run_dir = Path(str(broadcast_object(str(_run_dir(cfg)), world)))
    # First: "being trained by pid ..." says more than "exists" while another job writes it. Rank 0 asks, every
    # rank hears (rank 0 may hold the run by the time another rank looks).
    held = broadcast_object(busy(run_dir) if world.is_main else None, world)
    if held is not None:
        raise UsageError(held)
    _refuse_existing(cfg, run_dir)
    _check_eval(cfg)  # before the run directory exists: a bad --eval-metrics leaves nothing behind
    _check_micro_batch(cfg, world)

    d = cfg.data
    dataset, info = load_dataset(d.dataset, d.image_size, d.data_dir, d.split, cfg.seed, d.num_examples, d.channels, d.download)
    if cfg.task == "classifier" and info.num_classes < 2:
        raise ConfigError(f"dataset {info.name} has {info.num_classes} class; a classifier needs at least 2 (use class subfolders)")
    if cfg.class_conditional and cfg.task != "score":
        raise ConfigError("--class-conditional is for score models; a classifier is conditional by nature (drop the flag)")
    if cfg.class_conditional and info.num_classes < 2:
        raise ConfigError(f"--class-conditional needs a dataset with at least 2 classes; {info.name} has {info.num_classes} (use class subfolders)")
    if init is None:  # an unknown preset is bad input: found before any directory exists
        build.network_kwargs(cfg.network) if cfg.task == "score" else build.classifier_kwargs(cfg.classifier)
    new_dir = not run_dir.exists()
    new_out = not run_dir.parent.exists()  # --out too, when this job makes it
    with ExitStack() as stack:
        # One writer per run (DESIGN.md): rank 0 holds the lock and every rank hears whether it got it.
        refused = None
        if world.is_main:
            try:
                stack.enter_context(hold_run(run_dir, "trained", reporter.message))
            except UsageError as err:
                refused = str(err)
        refused = broadcast_object(refused, world)
        if refused is not None:
            raise UsageError(refused)
        try:
            return _train_held(cfg, init, run_dir, dataset, info, reporter, device, world)
        except UsageError:
            # Bad input found after the directory was made (e.g. a reference the evaluation cannot read): a run
            # this job created and never checkpointed is removed, so nothing half-written stays behind.
            if world.is_main and new_dir and not (run_dir / STATE_NAME).exists():
                stack.close()
                shutil.rmtree(run_dir, ignore_errors=True)
                if new_out:
                    with contextlib.suppress(OSError):  # only if empty: another job may have written there since
                        run_dir.parent.rmdir()
            raise


def _build_network(cfg: TrainConfig, init: Any, info: DatasetInfo, device: torch.device) -> nn.Module:
    """The network to train: the --init model's, or a new one whose initial weights are a pure function of the seed."""
    if init is not None:
        net = build.init_network(init, info.num_classes)
    else:
        # The layers' initialisers draw from torch's default generator: seeded here, and given back as it was.
        with default_generators(cfg.seed, torch.device("cpu")):
            if cfg.task == "score":
                net_kwargs = build.network_kwargs(cfg.network)
                if cfg.class_conditional:
                    net_kwargs["num_classes"] = info.num_classes
                net = build.build_unet(net_kwargs, cfg.data.image_size, info.channels)
            else:
                net = build.build_classifier(build.classifier_kwargs(cfg.classifier), cfg.data.image_size, info.channels,
                                             info.num_classes)
    if cfg.checkpointing:
        if not hasattr(net, "checkpointing"):
            raise ConfigError(f"--checkpointing recomputes the blocks of our U-Net; this {arch_of(net)} network has "
                              "none (drop the flag)")
        net.checkpointing = True
    net.to(device)
    if cfg.channels_last:
        net.to(memory_format=torch.channels_last)
    return net


def _check_micro_batch(cfg: TrainConfig, world: World) -> None:
    """ConfigError unless --micro-batch divides each process's share of the global batch."""
    share = cfg.batch_size // world.size
    if isinstance(cfg.micro_batch, int) and share % cfg.micro_batch:
        per = f"the {share} examples each of {world.size} processes runs" if world.distributed else f"--batch-size {share}"
        raise ConfigError(f"--micro-batch {cfg.micro_batch} must divide {per}; use a divisor (e.g. "
                          f"{max(d for d in range(1, cfg.micro_batch + 1) if share % d == 0)}) or auto")


class _Run:
    """One training run's state between steps, and the loop's hooks as its methods: log, preview, checkpoint, evaluate."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, info: DatasetInfo, net: nn.Module, ema: EMA,
                 opt: torch.optim.Optimizer, gen: torch.Generator, scaler: torch.amp.GradScaler, sde: SDE,
                 device: torch.device, world: World, log: MetricsLog, steps_per_epoch: float, saved: int | None,
                 tb: TensorBoardLog | None) -> None:
        self.cfg, self.run_dir, self.info, self.sde, self.device, self.world = cfg, run_dir, info, sde, device, world
        self.net, self.ema, self.opt, self.gen, self.scaler = net, ema, opt, gen, scaler
        self.log, self.tb, self.steps_per_epoch = log, tb, steps_per_epoch
        self.saved = saved  # the step of the last checkpoint on disk (None: none yet)
        self.done = saved or 0  # steps done, as the loop last said
        self.loss_png: bytes | None = None  # loss.png as last drawn, which the report reuses
        self.watch: Watch | None = None  # the evaluation hook's state (None without --eval-every)
        self.extra: dict[str, Any] = {}  # what the card's extra records of how the run ran (e.g. the micro-batch)
        self.epoch_axis = steps_per_epoch if counts_epochs(cfg) else None  # plots show epochs if the run counts them

    def card(self, step: int) -> ModelCard:
        """The card of the weights at ``step``."""
        return model_card(self.cfg, self.info, self.net, step, self.ema.num_updates, self.extra)

    def advance(self, step: int, loss: float) -> None:
        """After every step."""
        self.done = step

    def write_log(self, step: int, record: dict[str, Any]) -> None:
        """A metrics.jsonl record (and TensorBoard's)."""
        if self.world.is_main:
            record = {**record, "epoch": round(step / self.steps_per_epoch, 4)}
            self.log.write(record)
            if self.tb is not None:
                self.tb.record(step, record)

    def checkpoint(self, step: int) -> None:
        """Weights and training state, then the loss plot; every rank waits for it."""
        if self.world.is_main:
            _save(self.run_dir, self.net, self.ema, self.opt, self.gen, self.card(step), self.scaler)
            self.saved = step
            self.loss_png = save_figure(loss_figure(self.log.read(), f"training loss ({self.cfg.task})", self.epoch_axis),
                                        self.run_dir / LOSS_PLOT_NAME)
        barrier(self.world)

    def preview(self, step: int, path: Path | None = None) -> None:
        """A grid of EMA samples in samples/ (or at ``path``)."""
        if self.world.is_main and self.cfg.task == "score":
            images = _preview(self.ema.module, self.cfg, self.card(step), self.sde, self.device, self.run_dir)
            save_grid(images, path or self.run_dir / SAMPLES_DIR / step_grid_name(step))
            if self.tb is not None:
                self.tb.grid(step, make_grid(images))

    def evaluate(self, step: int) -> None:
        """Score EMA samples; keep the best weights."""
        assert self.watch is not None
        model = ScoreModel(self.ema.module, self.sde, self.cfg.network.parameterization)
        self.watch(step, self.ema.module, model, self.card(step), lambda: _weights(self.net, self.ema))

    def keep_snapshot(self, step: int) -> None:
        """The EMA weights of ``step`` with their card in snapshots/ (the oldest beyond --keep-snapshots deleted)."""
        if self.world.is_main:
            write_snapshot(self.run_dir, self.ema.module, self.card(step), self.cfg.keep_snapshots)

    def kept(self) -> str:
        """What a stopped run leaves: its last checkpoint and how to resume it."""
        cfg = self.cfg
        if self.saved is None:
            return f"no checkpoint was written before it (one every {cfg.checkpoint_every} steps); start again"
        out = "" if cfg.out == Path("runs") else f" --out {cfg.out}"
        return (f"the last checkpoint (step {self.saved}) in {self.run_dir} is intact: resume it with --resume "
                f"--name {self.run_dir.name}{out}")


def _train_held(cfg: TrainConfig, init: Any, run_dir: Path, dataset: Any, info: DatasetInfo, reporter: Reporter,
                device: torch.device, world: World) -> TrainResult:
    """The run itself, with its directory held by this job."""
    _refuse_existing(cfg, run_dir)  # again, held: another job may have finished this run since the first look
    d, o = cfg.data, cfg.optim
    sde = build.build_sde(cfg.sde)
    net = _build_network(cfg, init, info, device)
    ema = EMA(net, o.ema_decay, o.ema_warmup, o.ema_profile, o.ema_sigma_rel)
    opt = torch.optim.AdamW(net.parameters(), lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
    gen = build.make_generator(cfg.seed, device)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    start = _resume(run_dir, net, ema, opt, gen, scaler) if cfg.resume else 0
    steps = cfg.total_steps(len(dataset))  # type: ignore[arg-type]
    steps_per_epoch = len(dataset) / cfg.batch_size  # type: ignore[arg-type]
    log = _open_run_dir(cfg, run_dir, start, world)
    tb = TensorBoardLog(run_dir, purge_step=start + 1 if cfg.resume else None) if cfg.log == "tensorboard" and world.is_main else None
    run = _Run(cfg, run_dir, info, net, ema, opt, gen, scaler, sde, device, world, log, steps_per_epoch,
               start if cfg.resume else None, tb)
    if cfg.task == "score":
        run.watch = _watch(cfg, run_dir, log, run.card(start), steps_per_epoch, device, world, reporter, tb)
    eval_every = cfg.eval.steps_between(steps_per_epoch) if run.watch is not None else 0

    objective = build.build_objective(cfg, net, sde)
    forward = _wrapped(objective, cfg, device, world)
    share = cfg.batch_size // world.size
    local = slice(world.rank * share, (world.rank + 1) * share)
    batches = _Batches(dataset, cfg.batch_size, cfg.seed, local, num_workers(d.num_workers, dataset, world))
    micro = _micro_batch(cfg, objective, opt, dataset, share, device, world, reporter)
    if cfg.micro_batch is not None:
        run.extra["micro_batch"] = micro

    snapshot_every = steps_between(cfg.snapshot_every, steps_per_epoch)
    if world.is_main:  # one line for datasets that decode files: how much `diffuse prepare` would save
        advise_prepare(dataset, batch_indices(len(dataset), cfg.batch_size, cfg.seed, start)[local], d, reporter.message)
    reporter.start(steps - start, f"training {run_dir.name} ({steps} steps = {steps / steps_per_epoch:.3g} epochs)")
    t0 = time.perf_counter()
    try:
        res = train_loop(
            net, ema, opt, objective, batches(start, steps), gen,
            steps=steps,
            start=start,
            lr=lambda step: warmup_lr(step, o.lr, o.warmup, o.decay, steps),
            device=device,
            grad_clip=o.grad_clip,
            precision=cfg.precision,
            scaler=scaler,
            channels_last=cfg.channels_last,
            local=local,
            global_batch=cfg.batch_size,
            micro_batch=micro,
            dropout_seed=cfg.seed,
            forward=forward,
            augment=random_flip if d.flip else None,
            log_every=cfg.log_every,
            on_log=run.write_log,
            on_step=lambda step, loss: (run.advance(step, loss), reporter.advance(1, loss=loss)),
            hooks=[Hook(cfg.sample_every, run.preview), Hook(cfg.checkpoint_every, run.checkpoint),
                   *([Hook(eval_every, run.evaluate, final=True)] if eval_every else []),
                   *([Hook(snapshot_every, run.keep_snapshot, final=True)] if snapshot_every else [])],
            on_nonfinite=cfg.on_nonfinite,
            max_skips=cfg.max_skips,
        )
    except NonFiniteError as err:
        reporter.finish()
        raise _diverged(err, run, cfg) from err
    except Exception as err:
        ran_out = out_of_memory(err)
        if ran_out is None:
            raise
        reporter.finish()
        raise MachineError(f"out of memory at step {run.done + 1}: {ran_out}; {SMALLER_STEP}; {run.kept()}") from None
    if res.interrupted:
        reporter.message(f"interrupted at step {res.step}; saving the training state (Ctrl-C again aborts)")
    reporter.finish()
    run.checkpoint(res.step)
    if not res.interrupted and res.step > start:
        run.preview(res.step, run_dir / FINAL_SAMPLES_NAME)
    if tb is not None:
        tb.close()
    extra: dict[str, Any] = {"epochs": round(res.step / steps_per_epoch, 4), "total_steps": steps, **run.extra,
                             "examples_read": _gathered(batches.read, device, world), **_finished(run, world)}
    n_params = sum(p.numel() for p in net.parameters())
    return TrainResult(run_dir, start, res.step, time.perf_counter() - t0, res.loss, res.interrupted, n_params, extra,
                       world.is_main)


def _open_run_dir(cfg: TrainConfig, run_dir: Path, start: int, world: World) -> MetricsLog:
    """The run's log, after rank 0 has written the config and, on resume, dropped what came after ``start``."""
    log = MetricsLog(run_dir / METRICS_NAME)
    if world.is_main:
        (run_dir / SAMPLES_DIR).mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / CONFIG_NAME, json.dumps(dump_config(cfg), indent=2) + "\n")
        if cfg.resume:  # the steps after the checkpoint are trained again: their records and snapshots go
            log.truncate_after(start)
            drop_after(run_dir, start)
    barrier(world)
    return log


def _wrapped(objective: nn.Module, cfg: TrainConfig, device: torch.device, world: World) -> nn.Module:
    """The module the loop calls: DDP and compile wrap the objective, which still draws the noise."""
    forward: nn.Module = objective
    if world.distributed:
        forward = DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        forward = torch.compile(forward)
    return forward


def _finished(run: "_Run", world: World) -> dict[str, Any]:
    """The summary's report page (rank 0 writes it, now up to date), best checkpoint and evaluations."""
    extra: dict[str, Any] = {}
    if world.is_main:
        extra["report"] = str(write_report(run.run_dir, run.loss_png).path)  # the page `diffuse report RUN` writes
    watch = run.watch
    if watch is not None and watch.best is not None:
        extra["best"] = {"metric": watch.best.metric, "value": watch.best.value, "step": watch.best.step,
                         "weights": str(run.run_dir / BEST_NAME)}
    if watch is not None:
        extra["evaluations"] = watch.evaluations
    return extra


def _micro_batch(cfg: TrainConfig, objective: nn.Module, opt: torch.optim.Optimizer, dataset: Any, share: int,
                 device: torch.device, world: World, reporter: Reporter) -> int | None:
    """The micro-batch each step runs in: the config's, or with "auto" the largest that fits on every rank (said in one line)."""
    if cfg.micro_batch != "auto":
        return cfg.micro_batch
    x, y = _fetch(dataset, torch.tensor([0]))
    # The optimizer's state (AdamW: two tensors per parameter) is allocated by the first step: held aside meanwhile.
    params = [p for g in opt.param_groups for p in g["params"]]
    reserve = 0 if opt.state else 2 * sum(p.numel() * p.element_size() for p in params)
    found = largest_micro_batch(objective, (x.to(device), y.to(device)), share, device, cfg.precision, reserve)
    chosen = min(_gathered(found, device, world))  # every rank runs the same chunks: DDP syncs once per step
    if world.is_main:
        reporter.message(f"--micro-batch auto: {chosen} of the {share} examples a process runs per step at once "
                         f"({share // chosen} micro-batches a step{'' if chosen == share else '; half the most that fit'})")
    return chosen


def _gathered(value: int, device: torch.device, world: World) -> list[int]:
    """Every rank's ``value``, in rank order."""
    if not world.distributed:
        return [value]
    return [int(v) for v in all_gather(torch.tensor([value], device=device), world)]
