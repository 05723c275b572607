"""How jobs report progress: a small protocol the CLI implements with rich, plain lines, or silence."""

from __future__ import annotations

import sys
import time
from typing import Any, Protocol


class Reporter(Protocol):
    """Progress and messages from a job; the job never prints by itself."""

    def start(self, total: int, description: str) -> None:
        """A task of ``total`` units begins."""

    def advance(self, n: int = 1, **fields: Any) -> None:
        """``n`` more units are done; ``fields`` are figures to show (loss, it/s)."""

    def finish(self) -> None:
        """The current task is done."""

    def message(self, text: str) -> None:
        """An informational line (warnings included)."""


class SilentReporter:
    """Reports nothing (library use, tests)."""

    def start(self, total: int, description: str) -> None:
        """Ignore."""

    def advance(self, n: int = 1, **fields: Any) -> None:
        """Ignore."""

    def finish(self) -> None:
        """Ignore."""

    def message(self, text: str) -> None:
        """Ignore."""


class LineReporter:
    """Plain progress lines on stderr (for logs and CI): at most one every ``every`` seconds."""

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self.total = 0
        self.done = 0
        self.desc = ""
        self._t0 = self._last = time.perf_counter()
        self.fields: dict[str, Any] = {}

    def start(self, total: int, description: str) -> None:
        """Begin a task."""
        self.total, self.done, self.desc, self.fields, self._printed = total, 0, description, {}, -1
        self._t0 = self._last = time.perf_counter()
        print(f"{description}: {total} steps", file=sys.stderr, flush=True)

    def advance(self, n: int = 1, **fields: Any) -> None:
        """Count progress; print a line now and then."""
        self.done += n
        self.fields.update(fields)
        now = time.perf_counter()
        if now - self._last >= self.every:
            self._last = now
            self._printed = self.done
            print(self._line(now), file=sys.stderr, flush=True)

    def _line(self, now: float) -> str:
        rate = self.done / max(now - self._t0, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        extra = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in self.fields.items())
        return f"{self.desc}: {self.done}/{self.total} {extra} {rate:.2f} it/s eta {eta:.0f}s".replace("  ", " ")

    def finish(self) -> None:
        """End the task with a last line (unless that line was just printed)."""
        if getattr(self, "_printed", -1) != self.done:
            print(self._line(time.perf_counter()), file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        """An informational line."""
        print(text, file=sys.stderr, flush=True)
