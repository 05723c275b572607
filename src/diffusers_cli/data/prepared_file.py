"""The file `diffuse prepare` writes: safetensors (``labels`` int64 [N], ``images`` uint8 [N, C, H, W]) with JSON metadata.

Read and written here without torch, so that `diffuse datasets`, class names and every check of a file given to
training cost a header read. The tensors are plain safetensors (``safe_open(...).get_slice`` reads rows of them);
labels come first so that the int64 block starts 8-byte aligned, and the images follow, row after row, so that a
batch of rows is a few contiguous reads of a memory map. Nothing is pickled.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffusers_cli.data.spec import DataError

#: What the metadata's "format" says; a safetensors file without it (a model's weights) is refused by name.
FORMAT = "diffusers-cli prepared dataset"
#: Bumped when the layout changes; a reader refuses files of a newer version.
FORMAT_VERSION = 1
SUFFIX = ".safetensors"
#: The safetensors library's own limit on a header; a larger length is not a safetensors file.
MAX_HEADER_BYTES = 100_000_000
#: How to get a good file, said by every error about a bad one.
MAKE_ONE = "make one with `diffuse prepare DATASET --image-size S --out FILE.safetensors`"


@dataclass(frozen=True)
class PreparedHeader:
    """What a prepared file holds, read from its header and checked against its size."""

    path: Path                      # the file
    count: int                      # N examples
    channels: int                   # C: 1 or 3
    image_hw: tuple[int, int]       # (H, W) of every image
    class_names: tuple[str, ...]    # label index -> name
    source: str                     # the dataset it was prepared from (canonical name)
    description: str                # that dataset's one-line description
    split: str                      # the split asked for
    settings: dict[str, Any]        # everything that decides the pixels (hashed below)
    settings_sha256: str            # sha256 of ``settings`` as canonical JSON
    version: str                    # diffusers-cli version that wrote it
    labels_offset: int              # byte offset of the labels in the file
    images_offset: int              # byte offset of the images in the file


def settings_sha256(settings: dict[str, Any]) -> str:
    """sha256 of the settings as canonical JSON (sorted keys, no spaces): equal settings, equal hash."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def size_text(image_hw: tuple[int, int]) -> str:
    """An image size as --image-size takes it: "64" for a square, "32x48" otherwise."""
    return str(image_hw[0]) if image_hw[0] == image_hw[1] else f"{image_hw[0]}x{image_hw[1]}"


def encode_header(
    count: int,                     # N examples
    channels: int,                  # C
    image_hw: tuple[int, int],      # (H, W)
    metadata: dict[str, str],       # string values only (safetensors' rule)
) -> bytes:
    """The 8-byte length and JSON header of a prepared file; the tensors' bytes follow it (labels, then images)."""
    labels_end = 8 * count
    images_end = labels_end + count * channels * image_hw[0] * image_hw[1]
    header = {
        "__metadata__": metadata,
        "labels": {"dtype": "I64", "shape": [count], "data_offsets": [0, labels_end]},
        "images": {"dtype": "U8", "shape": [count, channels, *image_hw], "data_offsets": [labels_end, images_end]},
    }
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors pads with spaces so that the data starts 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw


def metadata(
    source: str,                    # canonical name of the dataset prepared
    description: str,               # its one-line description
    class_names: tuple[str, ...],   # label index -> name
    image_hw: tuple[int, int],      # (H, W)
    channels: int,                  # C
    split: str,                     # the split asked for
    count: int,                     # N
    settings: dict[str, Any],       # what decides the pixels
    version: str,                   # the package version writing it
) -> dict[str, str]:
    """The metadata of a prepared file, every value a string as safetensors requires (lists and dicts as JSON)."""
    return {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "source": source,
        "description": description,
        "class_names": json.dumps(list(class_names)),
        "image_size": f"{image_hw[0]}x{image_hw[1]}",
        "channels": str(channels),
        "split": split,
        "count": str(count),
        "settings": json.dumps(settings, sort_keys=True),
        "settings_sha256": settings_sha256(settings),
        "diffusers_cli_version": version,
    }


def _not_prepared(path: Path, why: str) -> DataError:
    return DataError(f"{path} is not a prepared dataset ({why}); {MAKE_ONE}")


def _damaged(path: Path, why: str) -> DataError:
    return DataError(f"{path} is a damaged prepared dataset ({why}); prepare it again with `diffuse prepare`")


def read_header(path: Path) -> PreparedHeader:
    """The checked header of a prepared file; DataError (one line) for a missing, foreign, damaged or cut-short one."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"prepared dataset {path} does not exist; {MAKE_ONE}")
    if not path.is_file():
        raise _not_prepared(path, "not a file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 2 <= length <= min(MAX_HEADER_BYTES, size - 8):
            raise _not_prepared(path, "no safetensors header")
        raw = f.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _not_prepared(path, "its header is not safetensors JSON") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise _not_prepared(path, "a safetensors file without `diffuse prepare` metadata, such as a model's weights")
    try:
        version = int(meta["format_version"])
        if version > FORMAT_VERSION:
            raise DataError(f"{path} is a prepared dataset of format {version}, newer than this diffusers-cli reads "
                            f"({FORMAT_VERSION}); upgrade diffusers-cli or prepare it again")
        count, channels = int(meta["count"]), int(meta["channels"])
        h, w = (int(s) for s in str(meta["image_size"]).split("x"))
        names = json.loads(meta["class_names"])
        settings = json.loads(meta["settings"])
        labels, images = header["labels"], header["images"]
        expected = {
            "labels": ("I64", [count], [0, 8 * count]),
            "images": ("U8", [count, channels, h, w], [8 * count, 8 * count + count * channels * h * w]),
        }
        for key, entry in (("labels", labels), ("images", images)):
            got = (entry["dtype"], entry["shape"], entry["data_offsets"])
            if got != expected[key]:
                raise _damaged(path, f"its {key} tensor is {got[0]} {got[1]} at bytes {got[2]}, "
                                     f"not {expected[key][0]} {expected[key][1]} at {expected[key][2]}")
        if set(header) != {"__metadata__", "labels", "images"}:
            raise _damaged(path, f"unexpected tensors {sorted(set(header) - {'__metadata__', 'labels', 'images'})}")
        if count < 1 or channels not in (1, 3) or h < 1 or w < 1:
            raise _damaged(path, f"{count} images of {channels} channels at {h}x{w}")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise _damaged(path, "its class names are not a list of names")
        if not isinstance(settings, dict) or settings_sha256(settings) != meta["settings_sha256"]:
            raise _damaged(path, "its settings do not match their sha256")
        header_info = PreparedHeader(
            path=path,
            count=count,
            channels=channels,
            image_hw=(h, w),
            class_names=tuple(names),
            source=str(meta["source"]),
            description=str(meta.get("description", "")),
            split=str(meta["split"]),
            settings=settings,
            settings_sha256=str(meta["settings_sha256"]),
            version=str(meta.get("diffusers_cli_version", "unknown")),
            labels_offset=8 + length,
            images_offset=8 + length + 8 * count,
        )
    except DataError:
        raise
    except (KeyError, ValueError, TypeError) as err:  # a missing key, a number that is not one, a wrong shape
        raise _damaged(path, f"its metadata is incomplete: {type(err).__name__} {err}") from None
    end = header_info.images_offset + count * channels * h * w
    if size < end:
        raise DataError(f"{path} is cut short: {size:,} of its {end:,} bytes (an interrupted copy?); "
                        f"copy it again or prepare it again with `diffuse prepare`")
    if size > end:
        raise _damaged(path, f"{size - end:,} bytes after its tensors")
    return header_info
