"""One writer per run directory: an OS lock on the directory itself plus ``lock.json`` naming the holder."""

from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from diffusers_cli.support.errors import UsageError
from diffusers_cli.support.files import write_text_atomic

HOLDER_FILE = "lock.json"

# The lock is never a file that is unlinked on release: unlinking a lock file lets a third process lock a new
# inode while a second still waits on the old one. POSIX locks the directory's own descriptor (no file at all);
# Windows cannot open a directory for locking, so it locks one byte of a file that stays, ``.lock``.
if os.name == "nt":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _open(run_dir: Path) -> int:
        return os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT)

    def _try_lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
else:
    import fcntl

    def _open(run_dir: Path) -> int:
        return os.open(run_dir, os.O_RDONLY)

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)


def read_holder(run_dir: Path) -> dict[str, Any] | None:
    """What ``lock.json`` says of the job that holds (or last held) the run, or None."""
    try:
        return dict(json.loads((run_dir / HOLDER_FILE).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def _who(holder: dict[str, Any] | None) -> str:
    """'pid 4242 on HOST since 17:02' from a holder record (or what is known of it)."""
    if not holder:
        return "another process"
    since = time.strftime("%H:%M", time.localtime(holder.get("started", 0)))
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} since {since}"


def busy(run_dir: Path) -> str | None:
    """The line a second writer would get if ``run_dir`` is held now, else None (nothing is written either way)."""
    if not run_dir.is_dir():
        return None
    fd = _open(run_dir)
    try:
        if _try_lock(fd):
            _unlock(fd)
            return None
        return _refusal(run_dir)
    finally:
        os.close(fd)


def _refusal(run_dir: Path) -> str:
    holder = read_holder(run_dir)
    doing = holder.get("job", "written") if holder else "written"
    return f"{run_dir} is being {doing} by {_who(holder)}; wait for it or choose another --name"


@contextmanager
def hold_run(run_dir: Path, job: str, on_takeover: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold ``run_dir`` for one writing job (``job``: 'trained', 'tuned', ...); a second writer gets UsageError.

    The OS lock dies with its process, so a holder that crashed or was killed leaves only ``lock.json``
    behind: the next writer takes the run over and ``on_takeover`` hears one line saying whose lock it was.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = _open(run_dir)
    try:
        if not _try_lock(fd):
            raise UsageError(_refusal(run_dir))
        stale = read_holder(run_dir)
        if stale is not None and on_takeover is not None:
            on_takeover(f"took over {run_dir} from {_who(stale)}, which is gone")
        write_text_atomic(run_dir / HOLDER_FILE, json.dumps(
            {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "job": job}) + "\n")
        try:
            yield
        finally:
            # A clean exit removes lock.json first: a lock.json without a live lock means the holder died.
            (run_dir / HOLDER_FILE).unlink(missing_ok=True)
            _unlock(fd)
    finally:
        os.close(fd)
