"""The command line: wiring on tiny real runs, --json summaries, reproducibility, exit codes and one-line errors."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import engine_draw, png_pixels
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from diffusers_cli.cli import app
from diffusers_cli.data import DATASETS
from diffusers_cli.support.errors import MachineError, UsageError

runner = CliRunner()
TINY = ["--image-size", "8", "--batch-size", "8", "--set", "data.num_examples=64", "--set", "network.base_channels=16",
        "--set", "sampler.name=ddpm", "--set", "sampler.steps=3", "--set", "sample_n=4", "--device", "cpu"]


def invoke(*args: str) -> "object":
    return runner.invoke(app, [str(a) for a in args])


def one_error_line(result: object, code: int = 2) -> str:
    """Assert the exit code and that stderr is exactly one 'diffuse: error:' line (no traceback); return it."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("diffuse: error: ")
    assert "Traceback" not in result.stderr
    return lines[0]


def test_version() -> None:
    res = invoke("--version")
    assert res.exit_code == 0 and res.stdout.startswith("diffusers-cli ")


def test_train_with_config_file_and_override(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("steps: 50\nseed: 3\noptim:\n  lr: 0.001\n")
    res = invoke("train", "--config", cfg, "--steps", "2", "--out", tmp_path / "runs", "--name", "r", "--json", *TINY)
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["steps"] == 2 and summary["interrupted"] is False
    saved = json.loads((tmp_path / "runs" / "r" / "config.json").read_text())
    assert saved["steps"] == 2 and saved["seed"] == 3 and saved["optim"]["lr"] == 0.001  # flag beats file
    assert (tmp_path / "runs" / "r" / "model.safetensors").is_file()
    assert (tmp_path / "runs" / "r" / "loss.png").is_file()
    # --resume with more steps continues from step 2.
    res = invoke("train", "--resume", "--out", tmp_path / "runs", "--name", "r", "--steps", "3", "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["start_step"] == 2 and json.loads(res.stdout)["steps"] == 3


def test_sample_grid_json_and_reproducible(tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "g.png"
    res = invoke("sample", "--model", tiny_run, "--sampler", "ddpm", "--steps", "5", "-n", "4", "--out", out, "--seed", "1", "--json")
    assert res.exit_code == 0, res.stderr
    s = json.loads(res.stdout)
    assert s["n"] == 4 and s["nfe"] == 6 and s["sampler"] == "ddpm"  # 5 steps + the final denoising step
    assert Image.open(out).size == (22, 22)  # 2 x 2 tiles of 8 px with 2 px padding
    first = out.read_bytes()
    res = invoke("sample", "--model", tiny_run, "--sampler", "ddpm", "--steps", "5", "-n", "4", "--out", out, "--seed", "1")
    assert res.exit_code == 0 and out.read_bytes() == first
    res = invoke("sample", "--model", tiny_run, "--sampler", "ddpm", "--steps", "5", "-n", "4", "--out", out, "--seed", "2")
    assert out.read_bytes() != first


def test_sample_individual_and_trajectory(tiny_run: Path, tmp_path: Path) -> None:
    res = invoke("sample", "--model", tiny_run / "model.safetensors", "--sampler", "em", "--steps", "10", "-n", "3",
                 "--out", tmp_path / "img.png", "--individual", "--trajectory", tmp_path / "traj.png")
    assert res.exit_code == 0, res.stderr
    assert sorted(p.name for p in tmp_path.glob("img_*.png")) == ["img_00000.png", "img_00001.png", "img_00002.png"]
    assert Image.open(tmp_path / "img_00000.png").size == (8, 8)
    w, h = Image.open(tmp_path / "traj.png").size
    assert h == 3 * 10 + 2 and w == 11 * 10 + 2  # 3 samples x (10 frames + result)
    strip = png_pixels(tmp_path / "traj.png")
    tile = lambda r, c: strip[2 + 10 * r : 10 + 10 * r, 2 + 10 * c : 10 + 10 * c]  # noqa: E731  8x8 tiles, 2 px apart
    for r in range(3):
        assert np.array_equal(tile(r, 10), png_pixels(tmp_path / f"img_{r:05d}.png"))  # the last column is the result
        frames = [tile(r, c).astype(int) for c in range(10)]
        assert all(np.abs(a - b).mean() > 10.0 for a, b in zip(frames, frames[1:]))  # each x_t column a later step's
    # The strip is the engine's x_t at steps 0, 1, ..., 9 of the same per-image draws, then the result.
    from diffusers_cli.models import load_score_model
    from diffusers_cli.engine.score import make_score_fn
    from diffusers_cli.parts.drawing import Trajectory

    model, _ = load_score_model(tiny_run)
    traj = Trajectory(10)
    images = engine_draw(model.sde, make_score_fn(model), (3, 8, 8), 3, "em", 10, callback=traj)
    assert len(traj.frames) == 10 and np.array_equal(strip, traj.strip(images).permute(1, 2, 0).numpy())


def test_sample_pc_predictor_option_via_set(tiny_run: Path, tmp_path: Path) -> None:
    res = invoke("sample", "--model", tiny_run, "--sampler", "pc", "--steps", "3", "-n", "2", "--out", tmp_path / "a.png",
                 "--set", "sampler.predictor=ancestral", "--snr", "0.1", "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["nfe"] == 7  # 3 x (corrector + predictor) + denoise


@pytest.mark.parametrize(
    "args, needle",
    [
        (["sample", "--sampler", "nope"], "unknown sampler 'nope'"),
        (["sample", "--sampler", "em", "--snr", "0.2"], "sampler 'em' (grid 'uniform') has no option 'snr'; its options are: none"),
        (["sample", "--sampler", "ei", "-o", "nosuch=1"], "sampler 'ei' (grid 'logsnr') has no option 'nosuch'; its options are: order"),
        (["sample", "--sampler", "ei", "-o", "order=4"], "sampler 'ei' option order must be one of 1, 2, 3, got 4"),
        (["sample", "-o", "order"], "-o expects KEY=VALUE"),
        (["sample", "--grid", "cubic"], "unknown time grid 'cubic'"),
        (["train", "--dataset", "nope", "--steps", "1"], f"unknown dataset 'nope': use one of {', '.join(DATASETS)}, or a path to a folder of images"),
        (["train", "--steps", "-5"], "invalid config: steps: Input should be greater than 0 (got -5)"),
        (["train", "--sde", "vq"], "sde.kind must be one of ve, vp, subvp, ddpm"),
        (["train", "--dataset", "mnist", "--data-dir", "/nonexistent/mnist", "--steps", "1"],
         "mnist train split not found: put train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz] (from "),
        (["train", "--dataset", "mnist", "--data-dir", "/nonexistent/mnist", "--steps", "1"], ") in /nonexistent/mnist/mnist; or pass --download"),
        (["train", "--set", "optim.lrr=1"], "unknown key 'optim.lrr'"),
        (["train", "--preset", "huge"], "unknown network preset 'huge'"),
        (["train", "--lr-decay", "step"], "optim.decay: Input should be 'none', 'cosine' or 'linear' (got 'step')"),
        (["sample", "--model", "/nonexistent/run"], "model /nonexistent/run does not exist; pass a run directory, a .safetensors file"),
        (["train", "--device", "cuda:7", "--steps", "1"], "CUDA is not available"),
    ],
)
def test_bad_input_exits_2_with_one_line(args: list[str], needle: str, tmp_path: Path, tiny_run: Path) -> None:
    if args[0] == "sample" and "--model" not in args:
        args = [*args, "--model", str(tiny_run), "--out", str(tmp_path / "x.png")]
    if args[0] == "train":
        args = [*args, "--out", str(tmp_path / "runs")]
    line = one_error_line(invoke(*args))
    assert needle in line
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.safetensors"))


def test_bad_config_files(tmp_path: Path) -> None:
    bad_key = tmp_path / "k.json"
    bad_key.write_text(json.dumps({"stepz": 3}))
    assert "unknown key 'stepz'" in one_error_line(invoke("train", "--config", bad_key))
    bad_val = tmp_path / "v.toml"
    bad_val.write_text('batch_size = "many"\n')
    line = one_error_line(invoke("train", "--config", bad_val))
    assert line.endswith("batch_size: Input should be a valid integer, unable to parse string as an integer (got 'many')")
    broken = tmp_path / "b.yaml"
    broken.write_text("steps: [1, 2\n")
    assert "is not valid YAML" in one_error_line(invoke("train", "--config", broken))
    assert one_error_line(invoke("train", "--config", tmp_path / "missing.yaml")).endswith(
        f"config file {tmp_path / 'missing.yaml'} does not exist; pass an existing YAML, JSON or TOML file to --config")


def test_corrupt_and_foreign_checkpoints(tmp_path: Path) -> None:
    corrupt = tmp_path / "c.safetensors"
    corrupt.write_bytes(os.urandom(64))
    assert "not a readable safetensors file" in one_error_line(invoke("sample", "--model", corrupt, "--out", tmp_path / "o.png"))
    foreign = tmp_path / "f.safetensors"
    save_file({"unet.conv.weight": torch.zeros(1)}, str(foreign))
    assert "not a diffusers-cli checkpoint" in one_error_line(invoke("sample", "--model", foreign, "--out", tmp_path / "o.png"))
    assert not (tmp_path / "o.png").exists()


def test_unwritable_output(tiny_run: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    line = one_error_line(invoke("sample", "--model", tiny_run, "--steps", "2", "--out", blocker / "sub" / "x.png"))
    assert "cannot create the folder" in line
    line = one_error_line(invoke("sample", "--model", tiny_run, "--steps", "2", "--out", tmp_path))
    assert "is a directory" in line


def _tensors_of(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Every tensor of a run's weights and training state (metadata aside: it records times and the asked-for steps)."""
    from safetensors.torch import load_file

    return {name: load_file(str(run / name)) for name in ("model.safetensors", "state.safetensors")}


def _same_tensors(a: dict[str, dict[str, torch.Tensor]], b: dict[str, dict[str, torch.Tensor]]) -> bool:
    return all(a[f].keys() == b[f].keys() and all(torch.equal(a[f][k], b[f][k]) for k in a[f]) for f in a)


def _losses(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_ctrl_c_saves_and_resumes(tmp_path: Path) -> None:
    """A real SIGINT mid-run: exit 130, the state of exactly the steps done, and --resume continues as if never stopped."""
    tiny = [*TINY, "--set", "log_every=1"]
    cmd = [sys.executable, "-m", "diffusers_cli", "train", "--steps", "100000", "--out", str(tmp_path), "--name", "c", *tiny]
    # One thread, as in this process (conftest): the reference runs below must do the same arithmetic, bit for bit.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    log = tmp_path / "c" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.is_file() and log.read_text().count("\n") >= 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted at step" in err and "Traceback" not in err
    from diffusers_cli.checkpoints.weights import read_meta

    stopped = read_meta(tmp_path / "c" / "model.safetensors")["step"]
    assert 3 <= stopped < 100000 and f"interrupted at step {stopped}" in err
    # What was saved at the interrupt is a plain run of exactly that many steps: weights, EMA, optimizer, generator.
    ref = invoke("train", *tiny, "--steps", stopped, "--out", tmp_path / "ref", "--name", "c")
    assert ref.exit_code == 0, ref.stderr
    assert _same_tensors(_tensors_of(tmp_path / "c"), _tensors_of(tmp_path / "ref" / "c"))
    assert _losses(tmp_path / "c") == _losses(tmp_path / "ref" / "c") and len(_losses(tmp_path / "c")) == stopped
    # Resumed for two more steps, it is the uninterrupted run of stopped + 2 steps, bit for bit.
    res = invoke("train", "--resume", "--out", tmp_path, "--name", "c", "--steps", str(stopped + 2), "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["start_step"] == stopped
    whole = invoke("train", *tiny, "--steps", stopped + 2, "--out", tmp_path / "whole", "--name", "c")
    assert whole.exit_code == 0, whole.stderr
    assert _same_tensors(_tensors_of(tmp_path / "c"), _tensors_of(tmp_path / "whole" / "c"))
    assert _losses(tmp_path / "c") == _losses(tmp_path / "whole" / "c")


def test_train_download_flag_reaches_the_loader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # With --download the loader tries to fetch (here: offline) instead of asking for --download.
    import urllib.error

    from diffusers_cli.data import idx

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(idx, "fetch_file", offline)
    args = ["train", "--dataset", "mnist", "--data-dir", tmp_path, "--split", "test", "--out", tmp_path / "runs"]
    assert "pass --download" in one_error_line(invoke(*args, "--steps", "1"))
    assert "could not download mnist" in one_error_line(invoke(*args, "--download", "--steps", "1"))


# --- The error policy: bad input 2, a failing machine 1, a bug 1 (traceback only with DIFFUSE_DEBUG=1) ---


def _raising_env(monkeypatch: pytest.MonkeyPatch, err: BaseException) -> None:
    """Make `diffuse env` (the cheapest job) raise ``err`` from inside its job."""
    import platform

    def boom() -> str:
        raise err

    monkeypatch.setattr(platform, "platform", boom)


def test_a_bug_exits_1_with_one_line_and_a_traceback_only_when_debugging(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DIFFUSE_DEBUG", raising=False)
    _raising_env(monkeypatch, ValueError("operands could not be broadcast\nsecond line"))
    line = one_error_line(invoke("env"), code=1)
    assert line == ("diffuse: error: unexpected failure: ValueError: operands could not be broadcast "
                    "(set DIFFUSE_DEBUG=1 for the traceback)")
    monkeypatch.setenv("DIFFUSE_DEBUG", "1")
    res = invoke("env")
    assert res.exit_code == 1
    assert "Traceback (most recent call last)" in res.stderr and "in boom" in res.stderr
    assert res.stderr.strip().splitlines()[-1] == "diffuse: error: unexpected failure: ValueError: operands could not be broadcast"


@pytest.mark.parametrize(
    "err, code, needle",
    [
        (UsageError("--foo must be positive; pass --foo 3\nmore detail"), 2, "diffuse: error: --foo must be positive; pass --foo 3"),
        (MachineError("cannot write runs/r/model.safetensors: Input/output error"), 1,
         "diffuse: error: cannot write runs/r/model.safetensors: Input/output error"),
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "in/x.png"), 2, "diffuse: error: in/x.png: No such file or directory"),
        (PermissionError(errno.EACCES, "Permission denied", "/root/x"), 2, "diffuse: error: /root/x: Permission denied"),
        (OSError(errno.ENOSPC, "No space left on device", "runs/r/metrics.jsonl"), 1,
         "diffuse: error: runs/r/metrics.jsonl: No space left on device; free some space and run again"),
        (OSError(errno.EROFS, "Read-only file system", "/ro/x"), 1, "diffuse: error: /ro/x: Read-only file system; write somewhere else"),
        (OSError(errno.ECONNRESET, "Connection reset by peer"), 1, "diffuse: error: unexpected failure: ConnectionResetError: [Errno 104]"),
        (RuntimeError("CUDA error: device-side assert"), 1, "diffuse: error: unexpected failure: RuntimeError: CUDA error: device-side assert"),
    ],
)
def test_each_error_family_exits_with_its_code_and_one_line(err: BaseException, code: int, needle: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DIFFUSE_DEBUG", raising=False)
    _raising_env(monkeypatch, err)
    assert one_error_line(invoke("env"), code=code).startswith(needle)


def test_ctrl_c_inside_a_job_exits_130(monkeypatch: pytest.MonkeyPatch) -> None:
    _raising_env(monkeypatch, KeyboardInterrupt())
    assert invoke("env").exit_code == 130


def _full_disk_error(kind: str) -> BaseException:
    """What a full disk looks like from save_file: a plain OSError, or safetensors' own error (which is no OSError)."""
    if kind == "oserror":
        return OSError(errno.ENOSPC, "No space left on device")
    from safetensors import SafetensorError

    # The exact text safetensors 0.8 raises when a tmpfs fills up mid-write.
    return SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


@pytest.mark.parametrize("kind", ["oserror", "safetensors"])
def test_full_disk_at_a_checkpoint_keeps_the_previous_one(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusers_cli.checkpoints import weights as checkpoints
    from diffusers_cli.checkpoints.weights import read_meta

    monkeypatch.delenv("DIFFUSE_DEBUG", raising=False)
    res = invoke("train", *TINY, "--steps", "2", "--out", tmp_path, "--name", "r", "--json")
    assert res.exit_code == 0, res.stderr
    run = tmp_path / "r"
    before = {name: (run / name).read_bytes() for name in ("model.safetensors", "state.safetensors")}
    # A plain open() under the umask decides the mode, not safetensors' private temporary file.
    umask = os.umask(0o022)
    os.umask(umask)
    assert (run / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask

    def full_disk(tensors: object, filename: str, metadata: object = None) -> None:
        Path(filename).write_bytes(b"half a checkpoint")  # what a real full disk leaves behind
        raise _full_disk_error(kind)

    with monkeypatch.context() as m:
        m.setattr(checkpoints, "save_file", full_disk)
        res = invoke("train", "--resume", "--out", tmp_path, "--name", "r", "--steps", "4")
    assert res.exit_code == 1, res.stderr
    # Progress lines come first; then exactly one error line and no traceback.
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("diffuse: error: ")]
    assert len(errors) == 1 and res.stderr.strip().splitlines()[-1] == errors[0] and "Traceback" not in res.stderr
    line = errors[0]
    assert line == (f"diffuse: error: cannot write {run / 'model.safetensors'}: No space left on device "
                    "(the previous model.safetensors is intact); free some space and run again")
    assert {name: (run / name).read_bytes() for name in before} == before
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]  # no temporary file left behind
    assert read_meta(run / "model.safetensors")["step"] == 2
    res = invoke("train", "--resume", "--out", tmp_path, "--name", "r", "--steps", "4", "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["start_step"] == 2 and json.loads(res.stdout)["steps"] == 4


@pytest.mark.parametrize("flag, name", [("--out", "grid.xyz"), ("--out", "grid"), ("--trajectory", "traj.jpg")])
def test_unknown_image_extension_exits_2_before_sampling(flag: str, name: str, tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    args = ["--out", out / "ok.png", "--trajectory", out / name] if flag == "--trajectory" else ["--out", out / name]
    line = one_error_line(invoke("sample", "--model", tiny_run, "--steps", "2", "-n", "1", *args))
    suffix = Path(name).suffix
    assert line.startswith(f"diffuse: error: {flag} {out / name}: ")
    assert (f"unknown image extension '{suffix}'; use .png" if suffix else f"no image extension; use {name}.png") in line
    assert not out.exists() or not any(out.iterdir())


def test_png_extension_is_case_insensitive_and_a_stem_is_fine_with_individual(tiny_run: Path, tmp_path: Path) -> None:
    res = invoke("sample", "--model", tiny_run, "--sampler", "ddpm", "--steps", "2", "-n", "1", "--out", tmp_path / "G.PNG")
    assert res.exit_code == 0, res.stderr
    assert Image.open(tmp_path / "G.PNG").format == "PNG"
    res = invoke("sample", "--model", tiny_run, "--sampler", "ddpm", "--steps", "2", "-n", "2", "--individual", "--out", tmp_path / "s")
    assert res.exit_code == 0, res.stderr
    assert sorted(p.name for p in tmp_path.glob("s_*.png")) == ["s_00000.png", "s_00001.png"]


# --- A fast shell: nothing heavy is imported until a job runs ---

HEAVY = ("torch", "torchvision", "scipy", "numpy", "diffusers", "PIL", "safetensors", "sklearn", "pandas", "matplotlib")


def test_the_cli_imports_nothing_heavy() -> None:
    """`diffuse --help`, `diffuse sample --help` and a usage error load none of torch, numpy, PIL, ..."""
    code = (
        "import json, sys\n"
        "import diffusers_cli.cli\n"
        "loaded = {'import': sorted(m for m in sys.modules if m.split('.')[0] in HEAVY)}\n"
        "from diffusers_cli.cli import app\n"
        "for args in (['--help'], ['sample', '--help'], ['train', '--help'], ['sample', '--nosuch-flag']):\n"
        "    try:\n"
        "        app(args, prog_name='diffuse')\n"
        "    except SystemExit:\n"
        "        pass\n"
        "    loaded[' '.join(args)] = sorted(m for m in sys.modules if m.split('.')[0] in HEAVY)\n"
        "print('RESULT', json.dumps(loaded))\n"
    )
    res = subprocess.run([sys.executable, "-c", f"HEAVY = {HEAVY!r}\n{code}"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    loaded = json.loads(res.stdout.rsplit("RESULT ", 1)[1])
    assert loaded == {k: [] for k in loaded}, loaded
