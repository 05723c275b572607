"""`diffuse prepare`: a dataset decoded, cropped and resized once into a uint8 file that training reads without decoding."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from diffusers_cli.data.registry import DATASETS  # torch-free: the names for the help text
from diffusers_cli.data.spec import Split
from diffusers_cli.engine.choices import listed

from diffusers_cli.cli.common import JsonOpt, emit_json, make_reporter, run_job

_SOURCES = ", ".join(name for name, spec in DATASETS.items() if spec.path_suffix is None)


def prepare_command(
    dataset: Annotated[Optional[str], typer.Argument(help=f"{_SOURCES}, or a folder path (`diffuse datasets` describes them).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="The .safetensors file to write (train with --dataset FILE).")] = None,
    image_size: Annotated[Optional[str], typer.Option(help="The resolution training will use: a side (64) or HEIGHTxWIDTH (32x48).")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="Where the dataset's files are.")] = None,
    split: Annotated[Optional[str], typer.Option(help=f"Dataset split: {listed(Split)} (default train).")] = None,
    channels: Annotated[Optional[int], typer.Option(help="1 (greyscale) or 3 (RGB); default: the dataset's own.")] = None,
    num_examples: Annotated[Optional[int], typer.Option(help="A seeded random subset of this many examples (default: all).")] = None,
    crop_boxes: Annotated[bool, typer.Option("--crop-boxes", help="Crop Stanford Cars to its annotated boxes first.")] = False,
    num_workers: Annotated[Optional[int], typer.Option(help="Processes that decode the images (default 0: this one).")] = None,
    download: Annotated[bool, typer.Option("--download", help=f"Let torchvision download a missing {', '.join(s.name for s in DATASETS.values() if s.download == '--download')}.")] = False,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed of the shapes' images and of a --num-examples subset (default 0); train with the same.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Decode, crop and resize a dataset once (training's own transform) into a uint8 .safetensors file.

    Training on the file (`diffuse train --dataset FILE.safetensors --image-size S`) indexes its rows instead of
    decoding images at every step; the file is read as a memory map, so it may be larger than memory.
    """

    def job() -> None:
        from diffusers_cli.config.schema import PrepareConfig, build_config
        from diffusers_cli.support.errors import UsageError

        if dataset is None:
            raise UsageError(f"diffuse prepare needs a DATASET: {_SOURCES}, or a folder of images")
        if out is None:
            raise UsageError("diffuse prepare needs --out FILE.safetensors: the file to write")
        if image_size is None:
            raise UsageError("diffuse prepare needs --image-size: the resolution training will use (e.g. --image-size 64)")
        overrides: dict[str, object] = {
            "dataset": dataset, "out": str(out), "image_size": image_size,
            "data_dir": str(data_dir) if data_dir else None, "split": split, "channels": channels,
            "num_examples": num_examples, "crop_boxes": True if crop_boxes else None, "seed": seed,
            "download": True if download else None, "num_workers": num_workers,
        }
        cfg = build_config(PrepareConfig, None, overrides)
        from diffusers_cli.data.prepared_file import size_text
        from diffusers_cli.jobs.prepare import prepare

        res = prepare(cfg, make_reporter(json_))
        if json_:
            emit_json({"path": str(res.path), "source": res.source, "count": res.count, "channels": res.channels,
                       "image_size": list(res.image_hw), "class_names": list(res.class_names), "bytes": res.bytes,
                       "settings_sha256": res.settings_sha256, "seconds": round(res.seconds, 3)})
            return
        print(f"wrote {res.path}: {res.count:,} {res.source} images at {res.image_hw[0]}x{res.image_hw[1]} "
              f"({res.bytes / 1e6:,.1f} MB) in {res.seconds:.1f}s; train on it with --dataset {res.path} "
              f"--image-size {size_text(res.image_hw)}")

    run_job(job)
