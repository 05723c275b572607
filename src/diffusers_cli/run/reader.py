"""The one reader of a run directory's files: every path kept inside the run, every embedded image re-made as a PNG.

Run directories travel (a colleague's ``runs/x``, an archive from a paper, a CI artifact), so nothing in one is
trusted. Everything that reads a run's files goes through ``RunFiles``: the report (``run.facts``,
``run.report``), ``train --resume``, ``--model runs/x`` and ``runs/x@STEP``, the snapshot list and table of
``evaluate --snapshots`` (``run.snapshots``), tuned grids beside a model (``parts.tuned_grids``) and the lock file
(``run.lock``). It
- resolves each path and refuses one that leaves the run (a symbolic link to ``~/.ssh/id_rsa``) or that is not a
  plain file (a FIFO would block the reader for ever, a device would never end): ``RunFileError``, one line naming
  the file;
- refuses a text file larger than a run ever writes before reading a byte of it;
- decodes an image to embed through ``support.image_files`` (the pixel limit read from the header, truncated data
  refused), after checking that it is a PNG, and re-encodes its pixels alone, so what a page embeds is a PNG this
  package made (no chunk, profile or trailing byte of the file travels with it).
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from diffusers_cli.support.errors import UsageError

#: The most bytes a text file of a run (config, metrics log, grids, lock) may have: far above what training writes.
MAX_TEXT_BYTES = 256 * 2**20
#: The eight bytes every PNG file starts with.
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class RunFileError(UsageError):
    """A file of a run that may not be read: it leaves the run directory, is not a plain file, or is too large.

    ``reason`` says why without naming any path, for a page that is shared (the message names both ends of a link).
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def shown(path: Path | str) -> str:
    """A path as text that any terminal and any UTF-8 page can carry (a name's undecodable bytes as U+FFFD)."""
    # A name of bytes that are not UTF-8 reaches Python as lone surrogates, which no strict encoder writes.
    return os.fsencode(path).decode("utf-8", "replace")


@dataclass(frozen=True)
class RunFiles:
    """A run directory's files, read only from inside it (see the module's docstring)."""

    root: Path  # the run directory as the user named it (messages name files under it)
    real: Path  # the same directory resolved: every file must resolve to a path under it

    @classmethod
    def of(cls, root: Path | str) -> "RunFiles":
        """The reader of ``root`` (the directory itself may be a link: a run is where it resolves to)."""
        root = Path(root)
        return cls(root, root.resolve())

    def _outside(self, path: Path, real: Path) -> RunFileError:
        return RunFileError(f"{shown(path)} links to {shown(real)}, outside the run {shown(self.root)}; a run's files "
                            "must lie inside it (replace the link with the file it names)", "it links outside the run")

    def locate(self, name: str | Path) -> Path | None:
        """``root/name`` resolved, if something is there: None if nothing is; RunFileError if it leaves the run.

        A link that stays inside the run is followed; one whose target is missing counts as nothing there.
        """
        path = self.root / name
        if not os.path.lexists(path):
            return None
        real = path.resolve()
        if not real.is_relative_to(self.real):
            raise self._outside(path, real)
        return real if real.exists() else None

    def file(self, name: str | Path) -> Path | None:
        """``root/name``, checked to be a plain file inside the run; None if there is none; RunFileError if it leads
        out of the run or is something else (a folder, a FIFO, a device). Messages name it as the user named the run."""
        real = self.locate(name)
        if real is None:
            return None
        mode = real.stat().st_mode
        if not stat.S_ISREG(mode):
            what = "a folder" if stat.S_ISDIR(mode) else "not a plain file (a FIFO, socket or device)"
            raise RunFileError(f"{shown(self.root / name)} is {what}; a run's files are plain files (remove it)",
                               f"it is {what}")
        return self.root / name

    def folder(self, name: str | Path) -> Path | None:
        """The resolved path of the folder ``root/name``, None if there is no folder; RunFileError if it leaves the run."""
        real = self.locate(name)
        return real if real is not None and real.is_dir() else None

    def names(self, folder: str | Path, pattern: str) -> list[str]:
        """Names (relative to the run, sorted) in ``folder`` that match ``pattern``; each is checked when it is read."""
        real = self.folder(folder)
        if real is None:
            return []
        return sorted(str(Path(folder) / p.name) for p in real.glob(pattern))

    def read_bytes(self, name: str | Path, limit: int = MAX_TEXT_BYTES) -> bytes | None:
        """The bytes of a plain file of the run, None if it does not exist; RunFileError if it is over ``limit``."""
        found = self.file(name)
        if found is None:
            return None
        with found.open("rb") as f:
            # Never more than the limit in memory, whatever the file says its size is; and no buffer of the limit's
            # size up front (read(n) allocates n bytes first: 256 MiB for a 2 KiB log under a memory limit).
            size = os.fstat(f.fileno()).st_size
            data = f.read(min(size, limit) + 1)
            if len(data) > size:  # it grew while read: take the rest in pieces, up to the limit
                data += f.read(max(0, limit + 1 - len(data)))
        if len(data) > limit:
            raise RunFileError(f"{shown(self.root / name)} is larger than {limit:,} bytes, more than a run ever writes; "
                               "it is damaged (restore it, or remove it)", f"it is larger than {limit:,} bytes")
        return data

    def read_text(self, name: str | Path, limit: int = MAX_TEXT_BYTES) -> str | None:
        """A UTF-8 text file of the run (None if it does not exist); UnicodeDecodeError is left to the caller's words."""
        data = self.read_bytes(name, limit)
        return None if data is None else data.decode("utf-8")

    def png(self, name: str | Path) -> bytes:
        """A PNG of the run, decoded with the pixel limit and re-encoded: bytes this package made, ready to embed.

        RunFileError or ImageError (one line naming the file) for a link out of the run, a file that is not a PNG,
        a truncated or corrupt one, or one over the pixel limit.
        """
        from PIL import Image

        from diffusers_cli.support.image_files import GREY_MODES, convert_image, decode_image

        path = self.file(name)
        if path is None:
            raise RunFileError(f"{shown(self.root / name)} does not exist", "it does not exist")
        with path.open("rb") as f:
            head = f.read(len(PNG_SIGNATURE))
        if head != PNG_SIGNATURE:
            raise RunFileError(f"{shown(path)} is not a PNG file (it does not start as one); it is damaged or not ours",
                               "it is not a PNG file")
        img = decode_image(path, what="image", formats=("PNG",))
        img = convert_image(img, "L" if img.mode in GREY_MODES else "RGB", what="image", path=path)
        clean = Image.frombytes(img.mode, img.size, img.tobytes())  # the pixels alone: no chunk of the file's own
        buf = io.BytesIO()
        clean.save(buf, format="PNG")
        return buf.getvalue()

    def links_out(self) -> Iterator[tuple[Path, Path]]:
        """Every link in the run (at any depth) that resolves outside it, as (link, where it leads)."""
        for top, dirs, files in os.walk(self.real):  # links to folders are listed in dirs, and not descended
            for entry in (*dirs, *files):
                path = Path(top) / entry
                if path.is_symlink():
                    real = path.resolve()
                    if not real.is_relative_to(self.real):
                        yield self.root / path.relative_to(self.real), real

    def check_inside(self) -> None:
        """RunFileError naming the first link that leads out of the run, for a job about to read and write all of it
        (``train --resume`` appends to its log and writes into its folders: a link would carry that outside)."""
        for path, real in self.links_out():
            raise self._outside(path, real)

