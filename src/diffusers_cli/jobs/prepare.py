"""The prepare job: decode, crop and resize a dataset once, with the training transform, into a uint8 .safetensors file."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from diffusers_cli import __version__
from diffusers_cli.config.schema import PrepareConfig
from diffusers_cli.data import DATASETS, load_dataset, resolve_name
from diffusers_cli.data.base import TRANSFORM
from diffusers_cli.data.prepared import write_prepared
from diffusers_cli.data.prepared_file import SUFFIX, metadata, settings_sha256
from diffusers_cli.support.errors import UsageError
from diffusers_cli.support.files import check_writable
from diffusers_cli.support.progress import Reporter, SilentReporter


@dataclass
class PrepareResult:
    """What a prepare job wrote."""

    path: Path                      # the file
    source: str                     # canonical name of the dataset prepared
    count: int                      # examples
    channels: int
    image_hw: tuple[int, int]
    class_names: tuple[str, ...]
    bytes: int                      # the file's size
    settings_sha256: str
    seconds: float


def prepare(cfg: PrepareConfig, reporter: Reporter | None = None) -> PrepareResult:
    """Write ``cfg.out``: every example of the dataset, as training would see it, in one uint8 file."""
    reporter = reporter or SilentReporter()
    out = Path(cfg.out).expanduser()
    # Checked before any decoding: minutes of work must not end on a name that cannot be written.
    if out.is_dir() or out.name in ("", ".", ".."):
        raise UsageError(f"--out {out} is a folder; give a file in it, such as --out {out / ('data' + SUFFIX)}")
    if out.suffix.lower() != SUFFIX:
        raise UsageError(f"--out {out}: a prepared dataset is a {SUFFIX} file; use --out {out.with_suffix(SUFFIX)}")
    key, _ = resolve_name(cfg.dataset)
    if DATASETS[key].path_suffix is not None:
        raise UsageError(f"{cfg.dataset} is already prepared; prepare its source dataset again at the new --image-size")
    check_writable(out)
    t0 = time.perf_counter()
    dataset, info = load_dataset(cfg.dataset, cfg.image_size, cfg.data_dir, cfg.split, cfg.seed, cfg.num_examples,
                                 cfg.channels, cfg.download, cfg.crop_boxes)
    hw = dataset.image_hw  # type: ignore[attr-defined]
    # Everything that decides the pixels and their order; the folder's path is not among them, so a moved copy
    # of the same data hashes alike.
    settings = {
        "source": info.name,
        "split": cfg.split,
        "image_size": list(hw),
        "channels": info.channels,
        "num_examples": cfg.num_examples,
        "seed": cfg.seed,
        "crop_boxes": cfg.crop_boxes,
        "transform": TRANSFORM,
        "count": info.size,
    }
    meta = metadata(info.name, DATASETS[info.name].description, info.class_names, hw, info.channels, cfg.split,
                    info.size, settings, __version__)
    size = write_prepared(dataset, out, info.channels, hw, meta, cfg.num_workers, reporter)
    return PrepareResult(out, info.name, info.size, info.channels, hw, info.class_names, size, settings_sha256(settings),
                         time.perf_counter() - t0)
