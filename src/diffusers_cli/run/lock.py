"""One writer per run directory: an OS lock on the directory itself plus ``lock.json`` naming the holder."""

from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from diffusers_cli.run.reader import RunFiles
from diffusers_cli.support.errors import UsageError
from diffusers_cli.support.files import write_text_atomic

HOLDER_FILE = "lock.json"
#: The most bytes a holder record may have (it is one short JSON line).
HOLDER_LIMIT = 4096

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
        # Through the run's reader: a lock.json that links out of the run, or is huge, says nothing of its holder.
        text = RunFiles.of(run_dir).read_text(HOLDER_FILE, limit=HOLDER_LIMIT)
        holder = json.loads(text) if text is not None else None
        return dict(holder) if isinstance(holder, dict) else None
    except (OSError, ValueError, TypeError):  # RunFileError is a UsageError, hence a ValueError
        return None


def _who(holder: dict[str, Any] | None) -> str:
    """'pid 4242 on HOST since 17:02' from a holder record (or what is known of it)."""
    if not holder:
        return "another process"
    started = holder.get("started")
    # lock.json may come with a stranger's run: its values are shown only as short, printable, one-line text.
    known = isinstance(started, (int, float)) and not isinstance(started, bool) and 0 <= started < 2**40
    since = time.strftime("%H:%M", time.localtime(started)) if known else "an unknown time"
    return f"pid {_plain(holder.get('pid', '?'))} on {_plain(holder.get('host', '?'))} since {since}"


def _plain(value: Any) -> str:
    """A holder's field as at most 64 printable characters (a newline would break the one-line message)."""
    return "".join(c if c.isprintable() else "?" for c in str(value)[:64])


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
