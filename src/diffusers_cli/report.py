"""How jobs report progress: a small protocol the CLI implements with rich, plain lines, or silence."""

from __future__ import annotations

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
