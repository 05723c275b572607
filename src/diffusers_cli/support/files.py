"""Atomic file output: write to a temporary file beside the target, then rename, so nothing is left half-written."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator

from diffusers_cli.support.errors import MachineError, UsageError

#: errno values that mean the machine failed a correct run (not a bad path the user gave).
MACHINE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})

#: The one image format we write; anything else would be a PNG under a misleading name.
IMAGE_SUFFIXES = (".png",)

# Rust's std::io::Error, which safetensors reports inside a SafetensorError (not an OSError), ends its
# text with "(os error 28)"; that number is the only way to tell a full disk from a bug there.
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")

#: What the user can do about each machine failure.
MACHINE_HINTS = {
    errno.ENOSPC: "free some space and run again",
    errno.EDQUOT: "free some space under your quota and run again",
    errno.EROFS: "write somewhere else",
    errno.EIO: "check the disk (see dmesg) and run again",
}


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
        # Found before any work is done, a read-only mount is a path to change, like a permission.
        why = "read-only file system" if _read_only(path.parent) else "permission denied"
        raise OutputError(f"cannot write to {path.parent} ({why}); choose another --out")


def _read_only(folder: Path) -> bool:
    """Whether ``folder`` lies on a file system mounted read-only."""
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def check_image_output(path: Path, flag: str | None = "--out", individual: bool = False) -> None:
    """Fail early, with one line, unless ``path`` is a writable .png (with ``individual``, a bare name stem too)."""
    path = Path(path)
    suffix = path.suffix
    where = f"{flag} {path}" if flag else str(path)
    if path.is_dir():  # a folder given for a file is the likelier mistake: say that, not "no extension"
        check_writable(path)
    # The extension before check_writable, which creates missing folders: a refused name leaves nothing behind.
    if suffix.lower() not in IMAGE_SUFFIXES and not (individual and not suffix):
        if not suffix:
            raise OutputError(f"{where}: no image extension; use {path.name}.png")
        raise OutputError(f"{where}: unknown image extension {suffix!r}; use .png")
    check_writable(path)


def os_errno(err: BaseException) -> int | None:
    """The errno behind an OSError, or behind an error that only quotes one in its text (safetensors)."""
    if isinstance(err, OSError):
        return err.errno
    found = _RUST_OS_ERROR.search(str(err))
    return int(found.group(1)) if found else None


def machine_error(path: Path, err: BaseException, note: str = "") -> MachineError:
    """A MachineError whose one line names ``path`` and the cause (plus ``note``); its errno is the cause's."""
    code = os_errno(err)
    cause = os.strerror(code) if code is not None else str(err)
    hint = MACHINE_HINTS.get(code) if code is not None else None
    out = MachineError(f"cannot write {path}: {cause}" + (f" ({note})" if note else "") + (f"; {hint}" if hint else ""))
    # errno only: with strerror or filename set too, OSError's str() would become "[Errno 28] ...: 'path'".
    out.errno = code
    return out


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask alone must set it to read it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: Path, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it replaces ``path`` atomically.

    A full disk, a quota, a read-only file system or an I/O error while writing raises MachineError
    naming ``path``; the temporary file is removed and whatever was at ``path`` before is left intact.
    ``durable`` fsyncs the content before the rename (checkpoints): a disk that fails late reports it
    then, not after the old file is gone. Images skip it; it costs milliseconds a file.
    """
    path = Path(path)
    check_writable(path)
    existed = path.exists()
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    except OSError as err:
        if os_errno(err) in MACHINE_ERRNOS:
            raise machine_error(path, err, "nothing was written") from err
        raise
    os.close(fd)
    try:
        yield Path(tmp)
        # Mode after the content: writers such as safetensors replace the file with their own private (0600) one.
        os.chmod(tmp, 0o666 & ~_umask())
        if durable:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except Exception as err:
        if not isinstance(err, MachineError) and os_errno(err) in MACHINE_ERRNOS:
            raise machine_error(path, err, f"the previous {path.name} is intact" if existed else "nothing was written") from err
        raise
    finally:
        # suppress: a failing disk may refuse this too, and the error that matters is already on its way.
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def check_run_name(name: str) -> str:
    """``name`` if it is one safe path component, else UsageError naming the rule it breaks."""
    if not name:
        problem = "is empty"
    elif any(c in name for c in "/\\"):
        problem = "contains a path separator"
    elif name in {".", ".."} or ".." in name:
        problem = "contains '..'"
    elif name.startswith("."):
        problem = "starts with '.' (a hidden directory)"
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        problem = "contains a control character"
    else:
        return name
    raise UsageError(f"run name {name!r} {problem}: a run name is one folder inside --out, without '/', '\\', '..', "
                     "a leading '.' or control characters")
