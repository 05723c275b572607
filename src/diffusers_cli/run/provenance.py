"""Where the code that made a model came from: the git commit of this package's source, when it is a checkout."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

#: The package's source folder (src/diffusers_cli in a checkout, site-packages/diffusers_cli when installed).
_SOURCE = Path(__file__).resolve().parent


@functools.lru_cache(maxsize=1)
def source_commit() -> str | None:
    """The short commit of the checkout this package runs from, '+changes' when its source has uncommitted edits.

    None when the package is not in a git checkout (an installed wheel) or git is missing: a run
    then says "not recorded" rather than guessing. Asked once per process.
    """
    # src/diffusers_cli beside our pyproject.toml: a wheel installed into a venv inside some other repository
    # would otherwise report that repository's commit.
    pyproject = _SOURCE.parent.parent / "pyproject.toml"
    try:
        if 'name = "diffusers-cli"' not in pyproject.read_text(encoding="utf-8"):
            return None
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=_SOURCE, capture_output=True, text=True, timeout=10)
        if head.returncode != 0 or not head.stdout.strip():
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=_SOURCE, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")
