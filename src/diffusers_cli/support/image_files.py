"""Reading a user's image file safely: a pixel limit before decoding, one-line errors for broken files, sound mode conversion."""

from __future__ import annotations

import os
import struct
import threading
import zlib
from pathlib import Path

from PIL import Image, ImageFile, UnidentifiedImageError

from diffusers_cli.support.errors import UsageError

#: The most pixels (width x height) an image may have unless DIFFUSE_MAX_PIXELS says otherwise: 8000x8000.
DEFAULT_MAX_PIXELS = 64_000_000
#: The environment variable that sets the pixel limit.
MAX_PIXELS_ENV = "DIFFUSE_MAX_PIXELS"
#: The modes ``open_image`` returns.
MODES = ("RGB", "L")
#: Modes holding one grey value per pixel (whatever the bit depth); converting them to RGB only replicates it.
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
#: Modes with a transparency channel (palette images may carry it in their info instead).
ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})

# PIL's decompression-bomb check and truncated-image switch are module globals, set for the duration of one
# read; the lock keeps two reads in threads from restoring each other's values half-way.
_PIL_GLOBALS = threading.Lock()
# What PIL raises for a file it cannot parse or decode: plain OSError (no errno) for truncated data, the rest
# from plugins meeting malformed headers or chunks.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error, zlib.error)
# OSErrors that are the user's path, not the file's content or the machine.
_PATH_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


class ImageError(UsageError):
    """A user's image file that cannot be used: missing, unreadable, corrupt, too large or of an unconvertible mode."""


def max_pixels() -> int:
    """The pixel limit: DIFFUSE_MAX_PIXELS if set (a whole number above 0), else DEFAULT_MAX_PIXELS."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw.replace(",", ""))  # "100,000,000" and "100_000_000" read as written
    except ValueError:
        value = 0
    if value < 1:
        raise UsageError(f"{MAX_PIXELS_ENV} must be a whole number of pixels above 0 (e.g. {MAX_PIXELS_ENV}=100000000), "
                         f"got {raw!r}")
    return value


def check_size(size: tuple[int, int], path: Path, *, what: str, limit: int | None = None) -> None:
    """Raise ImageError if an image of ``size`` (width, height) has more pixels than the limit."""
    limit = max_pixels() if limit is None else limit
    width, height = size
    if width * height > limit:
        raise ImageError(f"{what} {path} is {width}x{height} ({width * height:,} pixels), over the limit of {limit:,}; "
                         f"shrink it, or raise {MAX_PIXELS_ENV}")


def _unreadable(path: Path, what: str, err: BaseException) -> BaseException:
    """The one-line error for a file whose header or pixel data PIL cannot read (a machine's OSError as it is)."""
    if isinstance(err, OSError) and err.errno is not None and not isinstance(err, _PATH_ERRORS):
        return err  # a failing disk (EIO, ...) is the machine's, not the file's: the CLI says so, exit 1
    if isinstance(err, Image.DecompressionBombError):  # only if PIL's check ran despite ours (see _Guard)
        return ImageError(f"{what} {path} is too large: {err}; shrink it, or raise {MAX_PIXELS_ENV}")
    if isinstance(err, _PATH_ERRORS):
        return ImageError(f"cannot read {what} {path}: {err.strerror or type(err).__name__}")
    if isinstance(err, UnidentifiedImageError):
        reason = "not in any image format PIL knows"  # PIL's own message repeats the path
    else:
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        # PIL's OSErrors say it plainly ("image file is truncated"); other types are a parser failing on bad bytes.
        reason = text if isinstance(err, OSError) else f"{type(err).__name__}: {text}"
    return ImageError(f"{what} {path} is not a readable image (truncated or corrupt): {reason}")


class _Guard:
    """PIL's globals set for one read: its bomb check off (ours ran on the header), truncated images refused."""

    def __enter__(self) -> None:
        _PIL_GLOBALS.acquire()
        self.saved = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
        # Our limit is checked on the header before any pixel is decoded, with a message naming the file and
        # the fix; PIL's own check would warn (a stray stderr line) or raise at other, fixed thresholds.
        Image.MAX_IMAGE_PIXELS = None
        # Another library may have switched this on; a truncated file would then decode silently half grey.
        ImageFile.LOAD_TRUNCATED_IMAGES = False

    def __exit__(self, *exc: object) -> None:
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = self.saved
        _PIL_GLOBALS.release()


def image_size(path: Path, *, what: str) -> tuple[int, int]:
    """An image file's (width, height) from its header alone, checked against the pixel limit."""
    limit = max_pixels()  # an invalid DIFFUSE_MAX_PIXELS fails first, whatever the file
    with _Guard():
        try:
            with Image.open(path) as img:
                size = img.size
        except (*_DECODE_ERRORS, Image.DecompressionBombError) as err:
            raise _unreadable(path, what, err) from None
    check_size(size, path, what=what, limit=limit)
    return size


def decode_image(path: Path, *, what: str, draft: tuple[int, int] | None = None,
                 formats: tuple[str, ...] | None = None) -> Image.Image:
    """An image file fully decoded in its own mode, or ImageError; ``draft`` (width, height) lets a JPEG decode smaller,
    ``formats`` (PIL's names, e.g. ("PNG",)) keeps every other format's parser away from the file."""
    limit = max_pixels()
    with _Guard():
        try:
            # Image.open is lazy: it reads the header only. Leaving the block closes the file (multi-frame files
            # included) and keeps the pixels decoded by load().
            with Image.open(path, formats=list(formats) if formats is not None else None) as img:
                check_size(img.size, path, what=what, limit=limit)  # before a single pixel is decoded
                if draft is not None and img.format == "JPEG":
                    # JPEG decodes at 1/2, 1/4 or 1/8 scale on request; draft keeps both sides >= the asked ones.
                    img.draft(None, draft)
                img.load()  # the full decode, so a truncated file fails here and not later
        except ImageError:  # over the limit: a UsageError, hence a ValueError, but already the right message
            raise
        except (*_DECODE_ERRORS, Image.DecompressionBombError) as err:
            raise _unreadable(path, what, err) from None
    return img


def _grey_to_8bit(img: Image.Image) -> Image.Image:
    """16- and 32-bit grey ("I;16*", "I", "F") -> "L", scaling 0..65535 to 0..255 (rounded; outside that range clips)."""
    # PIL's convert("L") clips these to 0..255, so a 16-bit image turns almost white; scale the range instead.
    # "I" and "F" files are read as 16-bit ranges too: that is what PIL decodes 16-bit PNG and TIFF data into.
    src = img if img.mode == "F" else img.convert("I")
    # The +0.5 rounds: the conversion to "L" truncates (after clipping to 0..255).
    return src.point(lambda v: v / 257 + 0.5).convert("L")


def _flatten(img: Image.Image, background: int) -> Image.Image:
    """An image with alpha ("RGBA", "LA") composited over a grey level (0 black, 255 white): "RGB" or "L"."""
    # Transparent pixels have no colour of their own (what lies under them is arbitrary), so one fixed rule:
    # images go over white, as a viewer shows them (and as this project always read them); masks go over black,
    # so the unpainted, transparent part of a mask drawn on a transparent layer means "keep".
    base = "L" if img.mode == "LA" else "RGB"
    out = Image.new(base, img.size, background if base == "L" else (background,) * 3)
    out.paste(img.convert(base), mask=img.getchannel("A"))
    return out


def convert_image(img: Image.Image, mode: str, *, what: str, path: Path) -> Image.Image:
    """A decoded image in ``mode`` ("RGB" or "L"): palettes expanded, alpha over white (a mask's over black), 16-bit grey
    scaled, CMYK to RGB."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if img.mode == mode:
        return img
    try:
        if img.mode == "P":  # a palette's transparency (a tRNS index or table) lives in info
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        elif img.mode in ("PA", "RGBa"):
            img = img.convert("RGBA")
        elif img.mode == "La":
            img = img.convert("LA")
        if img.mode in ("RGBA", "LA"):
            img = _flatten(img, 0 if what == "mask" else 255)
        elif img.mode in GREY_MODES - {"1", "L"}:
            img = _grey_to_8bit(img)
        elif img.mode == "1":
            img = img.convert("L")
        # RGB <-> L, and CMYK, YCbCr, HSV, ... -> RGB by PIL's own formulas (L is ITU-R 601 luma).
        return img if img.mode == mode else img.convert(mode)
    except ValueError as err:  # a mode PIL cannot convert (e.g. LAB to L)
        raise ImageError(f"{what} {path} is a {img.mode} image, which cannot be converted to {mode} ({err}); "
                         f"save it as RGB or greyscale") from None


def open_image(path: Path, mode: str, *, what: str, draft: tuple[int, int] | None = None) -> Image.Image:
    """A user's image file decoded and converted to ``mode`` ("RGB" or "L"); ImageError (exit 2) with one line otherwise."""
    return convert_image(decode_image(path, what=what, draft=draft), mode, what=what, path=path)
