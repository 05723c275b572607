"""Snapshots (train --snapshot-every, --model RUN@STEP, evaluate --snapshots) and hostile model cards refused before allocation."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import png_pixels, tiny_train_config
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from diffusers_cli.checkpoints.weights import load_model, read_card, save_model
from diffusers_cli.cli import app
from diffusers_cli.engine.metrics import WEIGHTS_ENV, hub_weights_path
from diffusers_cli.jobs.train import train
from diffusers_cli.parts.opening import activation_bytes
from diffusers_cli.run.layout import REPORT_NAME, SNAPSHOT_SCORES_NAME, SNAPSHOTS_DIR

runner = CliRunner()


def one_error_line(result: Any, code: int = 2) -> str:
    """Assert the exit code and that stderr is exactly one 'diffuse: error:' line; return it."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("diffuse: error: "), result.stderr
    return lines[0]


def names(run: Path) -> list[str]:
    return sorted(p.name for p in (run / SNAPSHOTS_DIR).iterdir())


@pytest.fixture(scope="module")
def snap_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 steps of the tiny run with a snapshot every 2 steps."""
    tmp = tmp_path_factory.mktemp("snap")
    return train(tiny_train_config(tmp, steps=6, name="snap", snapshot_every="2")).run_dir


def test_a_snapshot_holds_the_ema_weights_of_its_step(snap_run: Path, tmp_path: Path) -> None:
    assert names(snap_run) == ["snapshot_0000002.safetensors", "snapshot_0000004.safetensors", "snapshot_0000006.safetensors"]
    # A plain run of 4 steps: its checkpoint's EMA is what the snapshot of step 4 must hold, bit for bit.
    plain = train(tiny_train_config(tmp_path, steps=4, name="plain")).run_dir
    want = {k: v for k, v in load_file(str(plain / "model.safetensors")).items() if k.startswith("ema.")}
    got, card = load_model(snap_run / SNAPSHOTS_DIR / "snapshot_0000004.safetensors")
    assert got.keys() == want.keys() and want
    for k in want:
        assert torch.equal(got[k], want[k]), k
    assert (card.step, card.ema_updates) == (4, read_card(plain / "model.safetensors").ema_updates)
    # The last one is the run's final EMA.
    final = load_file(str(snap_run / "model.safetensors"))
    last = load_file(str(snap_run / SNAPSHOTS_DIR / "snapshot_0000006.safetensors"))
    assert all(torch.equal(last[k], final[k]) for k in last)


def test_keep_snapshots_deletes_the_oldest_and_a_resumed_run_keeps_its_cadence(snap_run: Path, tmp_path: Path) -> None:
    kept = train(tiny_train_config(tmp_path / "k", steps=5, snapshot_every="1", keep_snapshots=2)).run_dir
    assert names(kept) == ["snapshot_0000004.safetensors", "snapshot_0000005.safetensors"]
    # 3 steps (a snapshot at 2 and at the end), then resumed to 6: 4 and 6 as in the uninterrupted run, with its weights.
    train(tiny_train_config(tmp_path / "r", steps=3, name="snap", snapshot_every="2"))
    stale = tmp_path / "r" / "snap" / SNAPSHOTS_DIR / "snapshot_0000008.safetensors"  # past the checkpoint: re-trained
    shutil.copy(tmp_path / "r" / "snap" / SNAPSHOTS_DIR / "snapshot_0000002.safetensors", stale)
    resumed = train(tiny_train_config(tmp_path / "r", steps=6, name="snap", snapshot_every="2", resume=True)).run_dir
    assert names(resumed) == ["snapshot_0000002.safetensors", "snapshot_0000003.safetensors", "snapshot_0000004.safetensors",
                              "snapshot_0000006.safetensors"]
    for name in names(snap_run):
        a, b = load_file(str(snap_run / SNAPSHOTS_DIR / name)), load_file(str(resumed / SNAPSHOTS_DIR / name))
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_snapshot_every_epochs_and_a_bad_cadence(tmp_path: Path) -> None:
    # 64 examples at batch 8: 8 steps an epoch, so 0.5e is every 4 steps (and the end).
    run = train(tiny_train_config(tmp_path, steps=10, snapshot_every="0.5e")).run_dir
    assert names(run) == ["snapshot_0000004.safetensors", "snapshot_0000008.safetensors", "snapshot_0000010.safetensors"]
    res = runner.invoke(app, ["train", "--snapshot-every", "2x", "--steps", "1", "--out", str(tmp_path / "bad")])
    assert one_error_line(res) == ("diffuse: error: invalid config: snapshot_every: must be a number of steps (500) or "
                                   "epochs (5e), got '2x'")


def test_model_at_step_samples_what_the_snapshot_file_samples(snap_run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.safetensors"
    shutil.copy(snap_run / SNAPSHOTS_DIR / "snapshot_0000004.safetensors", copy)
    common = ["-n", "3", "--sampler", "ddpm", "--steps", "3", "--device", "cpu", "--seed", "5"]
    for model, out in ((f"{snap_run}@4", "at.png"), (copy, "copy.png"), (snap_run, "final.png")):
        res = runner.invoke(app, ["sample", "--model", str(model), "--out", str(tmp_path / out), *common])
        assert res.exit_code == 0, res.stderr
    at = png_pixels(tmp_path / "at.png")
    assert (at == png_pixels(tmp_path / "copy.png")).all()
    assert (at != png_pixels(tmp_path / "final.png")).any()  # step 4 is not the final weights
    res = runner.invoke(app, ["sample", "--model", f"{snap_run}@5", "--out", str(tmp_path / "x.png"), *common])
    assert one_error_line(res) == (f"diffuse: error: {snap_run} has no snapshot of step 5; its snapshots are of steps 2, 4, 6 "
                                   f"(pass {snap_run}@STEP with one of them)")
    res = runner.invoke(app, ["sample", "--model", f"{snap_run}@4", "--no-ema", "--out", str(tmp_path / "x.png"), *common])
    assert one_error_line(res) == f"diffuse: error: {snap_run / SNAPSHOTS_DIR / 'snapshot_0000004.safetensors'} holds only EMA weights; drop --no-ema"


@pytest.fixture()
def inception(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Seeded random Inception weights (as tests/test_evaluate.py makes them), and no real ones to be found."""
    from test_evaluate import made_inception_state

    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    assert not hub_weights_path().exists()
    path = tmp_path / "inception.safetensors"
    save_file(made_inception_state(), str(path))
    return path


def test_evaluate_snapshots_equals_each_snapshot_on_its_own(snap_run: Path, inception: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(snap_run, run)
    opts = ["--metrics", "fid,is,kid", "-n", "6", "--allow-few", "--sampler", "ddpm", "--steps", "3", "--reference-examples", "5",
            "--batch-size", "4", "--kid-subset-size", "3", "--kid-subsets", "4", "--inception-weights", str(inception),
            "--device", "cpu", "--json"]
    res = runner.invoke(app, ["evaluate", "--model", str(run), "--snapshots", *opts])
    assert res.exit_code == 0, res.stderr
    s = json.loads(res.stdout)
    assert s["run"] == str(run) and [r["step"] for r in s["snapshots"]] == [2, 4, 6]
    alone = []
    for row in s["snapshots"]:
        one = runner.invoke(app, ["evaluate", "--model", str(run / SNAPSHOTS_DIR / f"snapshot_{row['step']:07d}.safetensors"), *opts])
        assert one.exit_code == 0, one.stderr
        figures = {k: v for k, v in json.loads(one.stdout).items() if k != "provenance"}
        assert {k: v for k, v in row.items() if k not in ("step", "provenance")} == figures
        alone.append(figures["fid"]["fid"])
    assert len(set(alone)) == 3  # three different models, three different figures
    # The table in the run, and the report's section: one row per snapshot, the FID column as measured.
    table = json.loads((run / SNAPSHOT_SCORES_NAME).read_text())["snapshots"]
    assert [r["fid"]["fid"] for r in table] == alone
    page = (run / REPORT_NAME).read_text()
    section = re.search(r'<table id="snapshot-scores">(.*?)</table>', page)
    assert section is not None and len(re.findall("<tr>", section.group(1))) == 4
    assert f"<td class=\"num\">{alone[1]:.4g}" in section.group(1) and 'alt="metrics per snapshot"' in page
    # The terminal table: a header and one aligned line per snapshot, FID as measured.
    res = runner.invoke(app, ["evaluate", "--model", str(run), "--snapshots", *opts[:-1]])
    lines = res.stdout.splitlines()
    assert res.exit_code == 0 and lines[0].split() == ["step", "FID", "IS", "KID"] and len(lines) == 4
    assert [ln.split()[:2] for ln in lines[1:]] == [[str(st), f"{f:.4g}"] for st, f in zip((2, 4, 6), alone)]


def test_evaluate_snapshots_of_a_run_without_them(tiny_run: Path, inception: Path) -> None:
    res = runner.invoke(app, ["evaluate", "--model", str(tiny_run), "--snapshots", "--inception-weights", str(inception)])
    assert one_error_line(res) == (f"diffuse: error: {tiny_run} keeps no snapshots; train it with --snapshot-every N "
                                   "(steps, or Ne for epochs) first")


# ---- hostile cards ---------------------------------------------------------------------------------

#: Runs `diffuse sample` in a child whose address space, once torch and the job are imported, may grow by 1 GiB at most.
_CHILD = r"""
import json, resource, sys, time
import torch
from typer.testing import CliRunner
from diffusers_cli.cli import app
import diffusers_cli.jobs.sample, diffusers_cli.models, diffusers_cli.parts.opening as opening
opening.available_bytes = lambda device: 16 * 2**30  # the same line on every machine
with open("/proc/self/status") as f:
    vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (vm + 2**30, resource.getrlimit(resource.RLIMIT_AS)[1]))
t0 = time.perf_counter()
res = CliRunner().invoke(app, sys.argv[1:])
print(json.dumps({"code": res.exit_code, "stderr": res.stderr, "seconds": time.perf_counter() - t0}))
"""


def run_limited(*args: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", _CHILD, *args], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def test_hostile_cards_exit_2_before_any_allocation(snap_run: Path, tmp_path: Path) -> None:
    tensors, card = load_model(snap_run / "model.safetensors")
    huge = dataclasses.replace(card, image_shape=(3, 60000, 60000), network={**card.network, "image_size": 60000})
    wide = dataclasses.replace(card, network={**card.network, "base_channels": card.network["base_channels"] * 1000})
    save_model(tmp_path / "huge.safetensors", tensors, huge)
    save_model(tmp_path / "wide.safetensors", tensors, wide)
    args = ["-n", "1", "--steps", "2", "--sampler", "ddpm", "--device", "cpu"]
    need = activation_bytes(huge, 1)
    assert need == 60000 * 60000 * (2 * 3 + 16 * 2) * 4  # images and score, then the first level's skips
    res = run_limited("sample", "--model", str(tmp_path / "huge.safetensors"), "--out", str(tmp_path / "a.png"), *args)
    assert (res["code"], res["stderr"]) == (2, f"diffuse: error: {tmp_path / 'huge.safetensors'} makes 3x60000x60000 images: a "
                                               f"batch of 1 needs at least 509.6 GB but this machine has 16.0 GB "
                                               "available; no batch size fits: the card's image shape is not one this machine "
                                               "can sample; check where the file came from\n")
    assert res["seconds"] < 2
    res = run_limited("sample", "--model", str(tmp_path / "wide.safetensors"), "--out", str(tmp_path / "b.png"), *args)
    assert (res["code"], res["stderr"]) == (2, f"diffuse: error: weights in {tmp_path / 'wide.safetensors'} do not fit the network "
                                               "its metadata describes ('conv_in.bias' has shape (16,), expected (16000,))\n")
    assert res["seconds"] < 2
    assert not (tmp_path / "a.png").exists() and not (tmp_path / "b.png").exists()
    # The same child samples the honest file: the limit leaves room for a real job.
    res = run_limited("sample", "--model", str(snap_run / "model.safetensors"), "--out", str(tmp_path / "c.png"), *args)
    assert res["code"] == 0 and (tmp_path / "c.png").is_file()


def test_a_batch_that_cannot_fit_names_the_flag(snap_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusers_cli.parts import opening

    card = read_card(snap_run / "model.safetensors")
    one = activation_bytes(card, 1)
    monkeypatch.setattr(opening, "available_bytes", lambda device: 10 * one)
    res = runner.invoke(app, ["sample", "--model", str(snap_run), "-n", "11", "--batch-size", "11", "--out", str(tmp_path / "x.png"),
                              "--device", "cpu"])
    assert one == 8 * 8 * (2 * 3 + 16 * 2) * 4
    assert one_error_line(res) == (f"diffuse: error: {snap_run} makes 3x8x8 images: a batch of 11 needs at least "
                                   "104.5 kB but this machine has 95.0 kB available; lower --batch-size")
    res = runner.invoke(app, ["sample", "--model", str(snap_run), "-n", "11", "--batch-size", "10", "--out", str(tmp_path / "x.png"),
                              "--device", "cpu", "--steps", "2", "--sampler", "ddpm"])
    assert res.exit_code == 0, res.stderr


def test_every_command_that_opens_a_model_refuses_a_hostile_card_with_one_line(snap_run: Path, tmp_path: Path) -> None:
    from PIL import Image

    tensors, card = load_model(snap_run / "model.safetensors")
    wide = tmp_path / "wide.safetensors"
    save_model(wide, tensors, dataclasses.replace(card, network={**card.network, "base_channels": 16000}))
    Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / "in.png")
    line = (f"diffuse: error: weights in {wide} do not fit the network its metadata describes "
            "('conv_in.bias' has shape (16,), expected (16000,))")
    commands = {
        "sample": ["sample", "--out", str(tmp_path / "s.png")],
        "condition": ["condition", "--class", "0", "--out", str(tmp_path / "c.png")],
        "impute": ["impute", str(tmp_path / "in.png"), "--mask", "box", "--out", str(tmp_path / "i.png")],
        "evaluate": ["evaluate", "--metrics", "fid", "-n", "4", "--allow-few"],
        "tune": ["tune", str(wide), "--grids", str(tmp_path / "grids.json")],  # the model as its argument
    }
    for name, args in commands.items():
        res = runner.invoke(app, [*args, *(["--model", str(wide)] if name != "tune" else []), "--device", "cpu"])
        assert one_error_line(res) == line, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png", "wide.safetensors"]  # nothing half-written
