"""Atomic file output: write to a temporary file beside the target, then rename, so nothing is left half-written."""

from __future__ import annotations

from diffusers_cli.errors import UsageError

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


class OutputError(UsageError):
    """An output path cannot be written (missing parent we may not create, no permission, a directory)."""


def check_writable(path: Path) -> None:
    """Fail early, with one line, if ``path`` cannot be written; creates missing parent folders."""
    if path.is_dir():
        raise OutputError(f"output {path} is a directory; give a file name such as {path / 'samples.png'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create the folder {path.parent} for {path}: {err.strerror}; choose another --out") from None
    if not os.access(path.parent, os.W_OK):
        raise OutputError(f"cannot write to {path.parent} (permission denied); choose another --out")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it replaces ``path`` atomically."""
    path = Path(path)
    check_writable(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    # mkstemp makes the file private (0600); give it the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
