"""The error families a user sees: bad input (UsageError, exit 2), a failing machine (MachineError, exit 1), a failed run (RunFailed, exit 1).

Everything else that escapes a job is a bug: exit 1, one line, the traceback under DIFFUSE_DEBUG=1.
This module imports nothing, so every layer (the engine included) may raise these.
"""

from __future__ import annotations


class UsageError(ValueError):
    """Bad input: config, flag, data, checkpoint, mask, metric, output path. One line saying what and how to fix it."""


class MachineError(OSError):
    """The machine failed under a correct run (disk full, read-only file system, I/O error): one line naming the file."""


class RunFailed(RuntimeError):
    """A correct run that cannot go on (training diverged): one line saying where, what was kept and what to try."""
