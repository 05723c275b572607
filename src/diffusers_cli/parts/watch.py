"""Watching quality while training: evaluations appended to metrics.jsonl, metrics.png, and the best checkpoint.

``Watch`` is called by the training loop's evaluation hook with the EMA network. It scores EMA
samples (``evaluation.SampleEvaluator``), appends ``{"step", "epoch", "eval": {metric: figures}}``
to the run's metrics log, redraws ``metrics.png`` (``plots.metrics_figure``: one panel per metric) and, when the ranking
metric improved, writes ``best.safetensors`` whose card records the step and the figure. Only
rank 0 writes; every rank samples its share.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffusers_cli.checkpoints.card import ModelCard
from diffusers_cli.checkpoints.weights import read_card, save_model
from diffusers_cli.support.distributed import World, barrier
from diffusers_cli.engine.metrics import Metric
from diffusers_cli.engine.score import ScoreModel
from diffusers_cli.parts.evaluation import SampleEvaluator
from diffusers_cli.run.plots import BestMark, metrics_figure, save_figure
from diffusers_cli.support.progress import Reporter, SilentReporter
from diffusers_cli.run.layout import BEST_NAME, METRICS_PLOT_NAME, MetricsLog

#: Key of the best checkpoint's figure in its card's ``extra``.
BEST_KEY = "best"


def headline(metric: Metric, figures: dict[str, Any]) -> float:
    """The one number that ranks a metric's figures (FID's fid, KID's and IS's mean)."""
    return float(figures[metric.headline])


@dataclass
class Best:
    """The best figure so far of the ranking metric, and the step it was reached at."""

    metric: str
    value: float
    step: int


def read_best(run_dir: Path) -> Best | None:
    """The best figure recorded in a run's best.safetensors (None if there is none yet)."""
    path = run_dir / BEST_NAME
    if not path.is_file():
        return None
    record = read_card(path).extra.get(BEST_KEY)
    return Best(record["metric"], float(record["value"]), int(record["step"])) if record else None


class Watch:
    """The evaluation hook of a training run: figures, plot and best checkpoint (see the module docstring)."""

    def __init__(
        self,
        evaluator: SampleEvaluator,  # prepared before training: Inception and the reference statistics
        run_dir: Path,  # where metrics.png and best.safetensors go
        log: MetricsLog,  # the run's metrics.jsonl
        keep_best: str | None,  # metric that ranks checkpoints; None: keep none
        steps_per_epoch: float,  # to report each evaluation's epoch
        world: World,
        device: torch.device,
        reporter: Reporter,
        on_record: Callable[[int, dict[str, Any]], None] | None = None,  # e.g. TensorBoard
        remaining: Callable[[int], int] | None = None,  # evaluations still to come after a step (for the cost line)
        epoch_axis: bool = False,  # the run counts epochs: metrics.png shows them along the top
    ) -> None:
        self.evaluator, self.run_dir, self.log, self.world, self.device, self.reporter = evaluator, run_dir, log, world, device, reporter
        self.keep_best = keep_best
        self.steps_per_epoch = steps_per_epoch
        self.on_record = on_record
        self.remaining = remaining
        self.epoch_axis = epoch_axis
        self.best = read_best(run_dir) if keep_best else None
        if self.best is not None and self.best.metric != keep_best:
            self.best = None  # a resumed run that ranks by another metric starts its own best
        self.evaluations = 0

    def __call__(self, step: int, net: nn.Module, model: ScoreModel, card: ModelCard, tensors: Callable[[], dict[str, torch.Tensor]]) -> None:
        """Evaluate the EMA model at ``step``; ``tensors()`` gives the weights to keep if it is the best so far."""
        t0 = time.perf_counter()
        was_training = net.training
        # The training bar is the reporter's one task: the evaluation's own progress would take it over, so it stays silent.
        figures, nfe = self.evaluator(model.eval(), card, self.device, self.world, SilentReporter())
        net.train(was_training)
        self.evaluations += 1
        if self.world.is_main:
            seconds = time.perf_counter() - t0
            # eval_seconds: the run report's time per evaluation (wall time, so it differs between runs of one config).
            record = {"step": step, "epoch": round(step / self.steps_per_epoch, 4), "eval": figures,
                      "eval_samples": self.evaluator.num_samples, "eval_nfe": nfe, "eval_seconds": round(seconds, 3)}
            self.log.write(record)
            scored, against = f"{self.evaluator.num_samples} EMA samples", self.evaluator.reference.description
            line = "; ".join(self.evaluator.metrics[name].describe(values, scored, against) for name, values in figures.items())
            self.reporter.message(f"step {step}: {line} ({seconds:.0f}s)")
            if self.evaluations == 1 and self.remaining is not None:
                # The first evaluation's cost is the honest estimate of the rest: say it once, up front.
                left = self.remaining(step)
                self.reporter.message(f"one evaluation took {seconds:.0f}s on this machine; {left} more in this run "
                                      f"(about {left * seconds / 60:.1f} min); fewer --eval-samples or a rarer --eval-every cost less")
            if self.keep_best is not None:
                self._keep(step, figures, card, tensors)
            self.plot()  # after _keep, so the star sits on the best checkpoint as it now is
            if self.on_record is not None:
                self.on_record(step, record)
        barrier(self.world)

    def _keep(self, step: int, figures: dict[str, dict[str, Any]], card: ModelCard,
              tensors: Callable[[], dict[str, torch.Tensor]]) -> None:
        metric = self.evaluator.metrics[str(self.keep_best)]
        value = headline(metric, figures[metric.name])
        better = self.best is None or (value > self.best.value if metric.higher_is_better else value < self.best.value)
        if not better:
            return
        self.best = Best(metric.name, value, step)
        extra = {**card.extra, BEST_KEY: {"metric": metric.name, "value": value, "step": step}}
        save_model(self.run_dir / BEST_NAME, tensors(), ModelCard(**{**card.__dict__, "extra": extra}))
        self.reporter.message(f"best {metric.name} so far ({value:.4g} at step {step}): wrote {self.run_dir / BEST_NAME}")

    def plot(self) -> None:
        """Redraw metrics.png from the log."""
        best = BestMark(self.best.metric, self.best.value, self.best.step) if self.best is not None else None
        plot_evaluations(self.log.read(), self.evaluator.metrics, self.run_dir / METRICS_PLOT_NAME, best,
                         self.steps_per_epoch if self.epoch_axis else None)


def plot_evaluations(rows: list[dict[str, Any]], metrics: dict[str, Metric], path: Path, best: BestMark | None = None,
                     steps_per_epoch: float | None = None) -> None:
    """metrics.png: one panel per metric, its headline figure and spread by training step, from metrics.jsonl records."""
    save_figure(metrics_figure(rows, metrics, best, steps_per_epoch), path)
