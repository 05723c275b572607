"""TensorBoard event files for a run (`diffuse train --log tensorboard`): scalars and sample grids beside metrics.jsonl.

metrics.jsonl stays the source of truth; the events are a view of the same records for TensorBoard.
The `tensorboard` package is an optional extra: without it, one line says which extra to install.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from diffusers_cli.support.errors import UsageError

#: Where a run's event files go (``tensorboard --logdir runs/`` shows every run).
EVENTS_DIR = "tensorboard"


class TensorBoardLog:
    """Writes a run's training records (loss, lr, it/s), evaluation figures and sample grids as TensorBoard events."""

    def __init__(self, run_dir: Path, purge_step: int | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UsageError('--log tensorboard needs the tensorboard package: pip install "diffusers-cli[tensorboard]"') from None
        # purge_step: a resumed run rewrites the steps after its checkpoint, as metrics.jsonl does.
        self.writer = SummaryWriter(log_dir=str(run_dir / EVENTS_DIR), purge_step=purge_step)

    def record(self, step: int, record: dict[str, Any]) -> None:
        """The numbers of one metrics.jsonl record: top-level scalars as train/KEY, evaluation figures as eval/METRIC/KEY."""
        for key, value in record.items():
            if key == "eval":
                for metric, figures in value.items():
                    for name, figure in figures.items():
                        if isinstance(figure, (int, float)) and not isinstance(figure, bool):
                            self.writer.add_scalar(f"eval/{metric}/{name}", figure, step)
            elif key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"train/{key}", value, step)
        self.writer.flush()

    def grid(self, step: int, image: Tensor) -> None:
        """A sample grid, uint8 [C, H, W]."""
        self.writer.add_image("samples", image, step, dataformats="CHW")
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()
