"""`diffuse prepare` and the prepared dataset: pixels equal to the lazy datasets', exact training, bad files, the hint."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import tiny_train_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from diffusers_cli import __version__
from diffusers_cli.cli import app
from diffusers_cli.config.schema import PrepareConfig
from diffusers_cli.data import DATASETS, DataError, DatasetSpec, load_dataset, resolve_name
from diffusers_cli.data.base import TRANSFORM
from diffusers_cli.data.prepared import PreparedDataset
from diffusers_cli.data.prepared_file import read_header, settings_sha256
from diffusers_cli.jobs.prepare import prepare
from diffusers_cli.jobs.train import train

runner = CliRunner()


def invoke(*args: Any) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def one_error_line(result: Any, code: int = 2) -> str:
    """The exit code is ``code`` and stderr is exactly one 'diffuse: error:' line; returns the message after it."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("diffuse: error: "), result.stderr
    return lines[0].removeprefix("diffuse: error: ")


def photo_folder(root: Path, per_class: int = 6, seed: int = 0) -> Path:
    """JPEGs and PNGs of random sizes and modes in two class folders: the decoding, cropping and resizing all matter."""
    rng = np.random.default_rng(seed)
    for c in ("cats", "dogs"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            w, h = int(rng.integers(9, 40)), int(rng.integers(9, 40))
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            image = Image.fromarray(pixels).convert("L" if i % 3 == 2 else "RGB")
            image.save(root / c / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


def lazy_keep(folder: Path, n: int, seed: int) -> list[int]:
    """The indices of a seeded subset of a folder, as its loader picks them."""
    from diffusers_cli.data.base import subset_indices

    return subset_indices(len(load_dataset(folder, 8)[0]), n, seed, "x").tolist()


def prepare_cfg(dataset: str | Path, out: Path, image_size: Any, **kw: Any) -> PrepareConfig:
    return PrepareConfig(dataset=str(dataset), out=out, image_size=image_size, **kw)


# ---- the file holds what the lazy dataset yields --------------------------------------------------


@pytest.mark.parametrize("size, channels", [((8, 12), None), (8, 1)])
def test_prepared_pixels_equal_the_lazy_dataset(tmp_path: Path, size: Any, channels: int | None) -> None:
    folder = photo_folder(tmp_path / "photos")
    out = tmp_path / "p.safetensors"
    res = prepare(prepare_cfg(folder, out, size, channels=channels))
    lazy, info = load_dataset(folder, size, channels=channels)
    ready, ready_info = load_dataset(out, size, channels=channels)
    assert isinstance(ready, PreparedDataset) and len(ready) == len(lazy) == res.count == 12
    for i in range(len(lazy)):  # float items and uint8 rows alike, bit for bit
        (x, y), (u, v) = lazy[i], ready[i]
        assert torch.equal(x, u) and y == v
        assert torch.equal(lazy.uint8_item(i)[0], ready.images[i])
    assert ready_info.class_names == info.class_names == ("cats", "dogs") and ready_info.name == "prepared"
    assert ready_info.channels == info.channels == (channels or 3)
    # A plain safetensors file: the library reads it, in row slices too.
    tensors = load_file(out)
    assert torch.equal(tensors["images"], ready.images) and tensors["labels"].tolist() == [0] * 6 + [1] * 6
    with safe_open(out, "pt") as f:
        assert torch.equal(f.get_slice("images")[3:5], ready.images[3:5])
        meta = f.metadata()
    hw = [8, 12] if size == (8, 12) else [8, 8]
    settings = {"source": "folder", "split": "train", "image_size": hw, "channels": channels or 3, "num_examples": None,
                "seed": 0, "crop_boxes": False, "transform": TRANSFORM, "count": 12}
    assert json.loads(meta.pop("settings")) == settings
    assert meta == {
        "format": "diffusers-cli prepared dataset", "format_version": "1", "source": "folder",
        "description": DATASETS["folder"].description, "class_names": '["cats", "dogs"]',
        "image_size": f"{hw[0]}x{hw[1]}", "channels": str(channels or 3), "split": "train", "count": "12",
        "settings_sha256": settings_sha256(settings), "diffusers_cli_version": __version__,
    }
    assert res.settings_sha256 == settings_sha256(settings) and res.bytes == out.stat().st_size


def test_subset_and_workers_and_in_memory_datasets(tmp_path: Path) -> None:
    folder = photo_folder(tmp_path / "photos")
    # A seeded subset of the prepared file is the same subset of the folder (same count, same seed).
    prepare(prepare_cfg(folder, tmp_path / "all.safetensors", 8))
    lazy, _ = load_dataset(folder, 8, num_examples=5, seed=3)
    ready, _ = load_dataset(tmp_path / "all.safetensors", 8, num_examples=5, seed=3)
    assert torch.equal(torch.stack([lazy[i][0] for i in range(5)]), torch.stack([ready[i][0] for i in range(5)]))
    # What a spawned DataLoader worker gets: the header and the subset, reopened there as a memory map.
    state = ready.__getstate__()
    assert state["header"] == ready.header and state["keep"].tolist() == lazy_keep(folder, 5, 3)
    twin = copy.deepcopy(ready)
    assert torch.equal(twin.images, ready.images) and torch.equal(twin.labels, ready.labels)
    # Decoding in worker processes writes the same bytes.
    prepare(prepare_cfg(folder, tmp_path / "w.safetensors", 8, num_workers=2))
    assert (tmp_path / "w.safetensors").read_bytes() == (tmp_path / "all.safetensors").read_bytes()
    # An in-memory dataset (shapes): the stored rows are its preloaded uint8 images; "prepared:FILE" names the file.
    prepare(prepare_cfg("shapes", tmp_path / "s.safetensors", 8, num_examples=40, seed=5))
    shapes, _ = load_dataset("shapes", 8, num_examples=40, seed=5)
    ready, info = load_dataset(f"prepared:{tmp_path / 's.safetensors'}", 8)
    assert torch.equal(ready.images, shapes.images) and torch.equal(ready.labels, shapes.labels)
    assert info.class_names == DATASETS["shapes"].class_names


# ---- training on it --------------------------------------------------------------------------------


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "model.safetensors")


def test_training_on_the_file_equals_training_on_its_source(tmp_path: Path) -> None:
    # shapes are preloaded uint8: the prepared file must train to the same bits.
    prepare(prepare_cfg("shapes", tmp_path / "s.safetensors", 8, num_examples=64, seed=0))
    plain = train(tiny_train_config(tmp_path / "a", steps=4))
    ready = train(tiny_train_config(tmp_path / "b", steps=4, **{"data.dataset": str(tmp_path / "s.safetensors"),
                                                                  "data.num_examples": None}))
    a, b = weights(plain.run_dir), weights(ready.run_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # A folder read lazily, image by image, and its prepared file: the same transform, the same weights.
    folder = photo_folder(tmp_path / "photos")
    prepare(prepare_cfg(folder, tmp_path / "f.safetensors", 8))
    lazy = train(tiny_train_config(tmp_path / "c", steps=3, **{"data.dataset": str(folder), "data.num_examples": None}))
    ready = train(tiny_train_config(tmp_path / "d", steps=3, **{"data.dataset": str(tmp_path / "f.safetensors"),
                                                                  "data.num_examples": None}))
    c, d = weights(lazy.run_dir), weights(ready.run_dir)
    assert all(torch.equal(c[k], d[k]) for k in c)
    assert not all(torch.equal(a[k], c[k]) for k in a)  # other data, other weights: the comparison can fail


class Lines:
    """A reporter that keeps the messages."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def start(self, total: int, description: str) -> None:
        pass

    def advance(self, n: int = 1, **fields: Any) -> None:
        pass

    def finish(self) -> None:
        pass

    def message(self, text: str) -> None:
        self.lines.append(text)


def test_a_folder_says_once_how_much_prepare_would_save(tmp_path: Path) -> None:
    folder = photo_folder(tmp_path / "photos")
    said = Lines()
    train(tiny_train_config(tmp_path / "runs", steps=1, **{"data.dataset": str(folder), "data.num_examples": None}), said)
    hints = [line for line in said.lines if line.startswith("data:")]
    assert len(hints) == 1 and "\n" not in hints[0]
    pattern = (
        rf"data: {re.escape(str(folder))} is decoded at every step: the first batch of 8 took \d+ ms to decode in one "
        r"process and \d+\.\d\d ms to index as uint8 rows \([\d,]+(\.\d)?x faster\); decode it once with "
        rf"`diffuse prepare {re.escape(str(folder))} --image-size 8 --out photos-8\.safetensors` and train with "
        r"--dataset photos-8\.safetensors"
    )
    assert re.fullmatch(pattern, hints[0]), hints[0]
    # Datasets held in memory, prepared files included, have nothing to gain.
    prepare(prepare_cfg(folder, tmp_path / "f.safetensors", 8))
    for dataset in ("shapes", str(tmp_path / "f.safetensors")):
        quiet = Lines()
        train(tiny_train_config(tmp_path / dataset.replace("/", "_"), steps=1, **{"data.dataset": dataset,
                                                                                    "data.num_examples": None}), quiet)
        assert not [line for line in quiet.lines if line.startswith("data:")]


# ---- the command line and bad input ------------------------------------------------------------------


def test_cli_prepare_and_datasets_listing(tmp_path: Path) -> None:
    folder = photo_folder(tmp_path / "photos")
    out = tmp_path / "p.safetensors"
    res = invoke("prepare", folder, "--image-size", "8x12", "--out", out, "--json")
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert {k: summary[k] for k in ("path", "source", "count", "channels", "image_size", "class_names", "bytes")} == {
        "path": str(out), "source": "folder", "count": 12, "channels": 3, "image_size": [8, 12],
        "class_names": ["cats", "dogs"], "bytes": out.stat().st_size,
    }
    assert summary["settings_sha256"] == read_header(out).settings_sha256
    listed = json.loads(invoke("datasets", "--json").stdout)["datasets"]
    assert listed[-1] == {"name": "prepared", "description": DATASETS["prepared"].description, "channels": None,
                          "num_classes": None, "download": "not applicable", "aliases": []}
    assert f"prepared       {DATASETS['prepared'].description}" in invoke("datasets").stdout
    assert resolve_name(out) == ("prepared", out) and resolve_name(f"prepared:{out}") == ("prepared", out)
    assert resolve_name(f"folder:{folder}") == ("folder", folder)


def corrupt_files(tmp_path: Path) -> dict[str, Path]:
    """A good file and damaged, foreign and truncated copies of it."""
    good = tmp_path / "good.safetensors"
    prepare(prepare_cfg("shapes", good, 8, num_examples=10))
    raw = good.read_bytes()
    files = {"good": good}
    files["cut"] = tmp_path / "cut.safetensors"
    files["cut"].write_bytes(raw[:-7])
    files["long"] = tmp_path / "long.safetensors"
    files["long"].write_bytes(raw + b"\0" * 3)
    files["garbage"] = tmp_path / "garbage.safetensors"
    files["garbage"].write_bytes(b"\x89PNG not at all safetensors")
    files["weights"] = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(3)}, files["weights"], metadata={"card": "{}"})
    # Settings edited after the fact: their sha256 no longer matches.
    files["edited"] = tmp_path / "edited.safetensors"
    files["edited"].write_bytes(raw.replace(b'\\"seed\\": 0', b'\\"seed\\": 7'))
    # A label out of range (the last label's high byte is 0, the first image byte follows it).
    n = int.from_bytes(raw[:8], "little")
    files["label"] = tmp_path / "label.safetensors"
    bad = bytearray(raw)
    bad[8 + n + 8 * 9] = 99
    files["label"].write_bytes(bytes(bad))
    return files


def test_bad_files_given_to_training_exit_2_with_one_line(tmp_path: Path) -> None:
    files = corrupt_files(tmp_path)
    n = files["good"].stat().st_size
    make = "make one with `diffuse prepare DATASET --image-size S --out FILE.safetensors`"
    expected = {
        "cut": f"{files['cut']} is cut short: {n - 7:,} of its {n:,} bytes (an interrupted copy?); copy it again or "
               "prepare it again with `diffuse prepare`",
        "long": f"{files['long']} is a damaged prepared dataset (3 bytes after its tensors); prepare it again with "
                "`diffuse prepare`",
        "garbage": f"{files['garbage']} is not a prepared dataset (no safetensors header); {make}",
        "weights": f"{files['weights']} is not a prepared dataset (a safetensors file without `diffuse prepare` "
                   f"metadata, such as a model's weights); {make}",
        "edited": f"{files['edited']} is a damaged prepared dataset (its settings do not match their sha256); prepare "
                  "it again with `diffuse prepare`",
        "label": f"{files['label']} is a damaged prepared dataset (example 9 has label 99 of 5 classes); prepare it "
                 "again with `diffuse prepare`",
        "missing": f"prepared dataset {tmp_path / 'missing.safetensors'} does not exist; {make}",
    }
    files["missing"] = tmp_path / "missing.safetensors"
    for key, message in expected.items():
        res = invoke("train", "--dataset", files[key], "--image-size", "8", "--steps", "1", "--out", tmp_path / "runs")
        assert one_error_line(res) == message, key
    assert not (tmp_path / "runs").exists()  # nothing half-written
    good = files["good"]
    wrong_size = invoke("train", "--dataset", good, "--image-size", "16", "--steps", "1", "--out", tmp_path / "runs")
    assert one_error_line(wrong_size) == (
        f"{good} holds 8x8 images but --image-size is 16; train with --image-size 8, or prepare its source (shapes) "
        "again with `diffuse prepare ... --image-size 16`"
    )
    with pytest.raises(DataError) as info:
        load_dataset(good, 8, channels=1)
    assert str(info.value) == f"{good} holds 3-channel images but --channels is 1; drop --channels, or prepare it again with --channels 1"
    assert load_dataset(good, 8)[1].size == 10  # the good one loads


def test_bad_prepare_input_exits_2_with_one_line(tmp_path: Path) -> None:
    folder = photo_folder(tmp_path / "photos")
    good = tmp_path / "good.safetensors"
    assert invoke("prepare", "shapes", "--image-size", "8", "--num-examples", "4", "--out", good).exit_code == 0
    cases = {
        ("shapes", "--image-size", "8", "--out", tmp_path / "x.bin"):
            f"--out {tmp_path / 'x.bin'}: a prepared dataset is a .safetensors file; use --out {tmp_path / 'x.safetensors'}",
        ("--image-size", "8"): "diffuse prepare needs a DATASET: shapes, mnist, fashion-mnist, cifar10, cars, folder, "
                               "or a folder of images",
        ("shapes", "--image-size", "8", "--out", tmp_path):
            f"--out {tmp_path} is a folder; give a file in it, such as --out {tmp_path / 'data.safetensors'}",
        ("shapes", "--image-size", "8"): "diffuse prepare needs --out FILE.safetensors: the file to write",
        ("shapes", "--out", tmp_path / "x.safetensors"):
            "diffuse prepare needs --image-size: the resolution training will use (e.g. --image-size 64)",
        ("nope", "--image-size", "8", "--out", tmp_path / "x.safetensors"):
            "unknown dataset 'nope': use one of shapes, mnist, fashion-mnist, cifar10, cars, folder, prepared, or a path "
            "to a folder of images or to a file of `diffuse prepare` (.safetensors)",
        (good, "--image-size", "16", "--out", tmp_path / "x.safetensors"):
            f"{good} is already prepared; prepare its source dataset again at the new --image-size",
        ("shapes", "--image-size", "8", "--channels", "2", "--out", tmp_path / "x.safetensors"):
            "invalid config: channels: Input should be 1 or 3 (got 2)",
        (folder, "--image-size", "8", "--num-examples", "50", "--out", tmp_path / "x.safetensors"):
            "asked for 50 examples but the folder has only 12; lower --num-examples",
    }
    for args, message in cases.items():
        assert one_error_line(invoke("prepare", *args)) == message, args
    # A file that decodes badly half-way: one line, and neither the output nor a temporary file is left.
    jpeg = folder / "dogs" / "0.jpg"
    jpeg.write_bytes(jpeg.read_bytes()[:200])
    line = one_error_line(invoke("prepare", folder, "--image-size", "8", "--out", tmp_path / "y.safetensors"))
    assert line == f"dataset image {jpeg} is not a readable image (truncated or corrupt): Truncated File Read; remove or replace the file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.safetensors", "photos"]


def test_path_suffix_needs_from_path() -> None:
    with pytest.raises(ValueError) as info:
        DatasetSpec(name="x", description="d", channels=1, class_names=("a",), download="not needed",
                    loader=DATASETS["shapes"].loader, path_suffix=".x")
    assert str(info.value) == "dataset spec 'x': path_suffix needs from_path=True and a leading '.', got '.x'"


def test_a_prepared_file_is_an_evaluation_reference(tmp_path: Path) -> None:
    from diffusers_cli.parts.evaluation import ReferenceRequest, resolve_reference

    out = tmp_path / "s.safetensors"
    prepare(prepare_cfg("shapes", out, 8, num_examples=10, seed=2))
    shapes, _ = load_dataset("shapes", 8, num_examples=10, seed=2)
    for name in (str(out), f"prepared:{out}"):  # read as training reads it, not as a statistics file
        ref = resolve_reference(ReferenceRequest(name, 8, batch_size=4), None, None)
        assert ref.description == f"prepared {out} train at 8x8 (10)" and ref.num_samples == 10
        assert torch.equal(torch.cat(list(ref.batches())), shapes.images)


# Words for the text flags; the integer flags get integers (click itself answers a non-integer, as for every command).
_WORDS = ["", "0", "-1", "1", "2", "x", "nan", "..", ".", "a/b", "x.safetensors", "test", "all", "3x5", " "]
_FLAGS = st.one_of(
    st.sampled_from(["--image-size", "--out", "--split", "--data-dir"]).flatmap(
        lambda flag: st.sampled_from(_WORDS).map(lambda v: [flag, v])),
    st.sampled_from(["--channels", "--num-examples", "--seed", "--num-workers"]).flatmap(
        lambda flag: st.integers(-2, 3 if flag != "--num-workers" else 1).map(lambda v: [flag, str(v)])),
)


@settings(max_examples=15, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(extra=st.lists(_FLAGS, min_size=1, max_size=3))
def test_random_prepare_flags_exit_0_or_2_with_one_line(extra: list[list[str]], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / f"w{len(list(tmp_path.iterdir()))}"
    work.mkdir()
    monkeypatch.chdir(work)
    argv = ["prepare", "shapes", "--image-size", "8", "--num-examples", "4", "--out", "p.safetensors",
            *[w for pair in extra for w in pair]]
    res = invoke(*argv)
    assert res.exit_code in (0, 2), (argv, res.exit_code, res.stderr)
    if res.exit_code == 2:
        one_error_line(res)
        assert not any(p.is_file() for p in work.rglob("*")), argv  # nothing half-written
    else:  # the file written loads, at the size the last --image-size asked for
        out = work / [argv[i + 1] for i, w in enumerate(argv) if w == "--out"][-1]
        assert load_dataset(out, read_header(out).image_hw)[1].size >= 1


def test_cars_with_boxes_split_and_the_cars_hint(tmp_path: Path) -> None:
    from test_data import fake_cars

    fake_cars(tmp_path / "stanford_cars")
    out = tmp_path / "cars.safetensors"
    res = invoke("prepare", "cars", "--data-dir", tmp_path, "--split", "all", "--crop-boxes", "--image-size", 8,
                 "--out", out)
    assert res.exit_code == 0, res.stderr
    boxed, info = load_dataset("cars", 8, data_dir=tmp_path, split="all", crop_boxes=True)
    ready, ready_info = load_dataset(out, 8)
    assert torch.equal(torch.stack([boxed[i][0] for i in range(3)]), torch.stack([ready[i][0] for i in range(3)]))
    assert ready.labels.tolist() == [1, 2, 0] and ready_info.class_names == ("AM General", "Audi", "BMW")
    header = read_header(out)
    assert (header.source, header.split, header.settings["crop_boxes"]) == ("cars", "all", True)
    assert header.description == DATASETS["cars"].description
    # Cars decodes files too: training on it says so, with a command that names its --data-dir and split.
    said = Lines()
    train(tiny_train_config(tmp_path / "runs", steps=1, batch_size=2, **{
        "data.dataset": "cars", "data.data_dir": str(tmp_path), "data.split": "all", "data.num_examples": None}), said)
    hint = [line for line in said.lines if line.startswith("data:")]
    assert len(hint) == 1 and hint[0].endswith(
        f"decode it once with `diffuse prepare cars --data-dir {tmp_path} --split all --image-size 8 --out "
        "cars-8.safetensors` and train with --dataset cars-8.safetensors")
