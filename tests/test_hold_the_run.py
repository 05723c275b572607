"""One writer per run (two real processes), run names that stay inside --out, divergence, and checks before creating."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from diffusers_cli.checkpoints.weights import load_model, read_meta
from diffusers_cli.cli import app
from diffusers_cli.support.errors import UsageError
from diffusers_cli.run.lock import HOLDER_FILE, hold_run, read_holder

runner = CliRunner()
TINY = ["--image-size", "8", "--batch-size", "8", "--set", "data.num_examples=64", "--set", "network.base_channels=16",
        "--set", "sampler.name=ddpm", "--set", "sampler.steps=3", "--set", "sample_n=4", "--sample-every", "0", "--device", "cpu"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def invoke(*args: object) -> Result:
    return runner.invoke(app, [str(a) for a in args])


def wait_for(cond: object, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline and not cond():  # type: ignore[operator]
        time.sleep(0.1)
    assert cond(), "timed out"  # type: ignore[operator]


def one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.startswith("diffuse: error: ")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_a_second_writer_is_refused_a_reader_sees_whole_checkpoints_and_a_dead_holder_is_taken_over(tmp_path: Path) -> None:
    run = tmp_path / "same"
    first = subprocess.Popen([sys.executable, "-m", "diffusers_cli", "train", "--steps", "100000", "--out", str(tmp_path),
                              "--name", "same", "--set", "checkpoint_every=1", *TINY],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        wait_for(lambda: (run / "model.safetensors").is_file() and read_holder(run) is not None)
        holder = read_holder(run)
        assert holder is not None and holder["pid"] == first.pid and holder["host"] == socket.gethostname()
        # A second `diffuse train` of the same run, and a --resume of it, here: the holder is the other process.
        for extra in ([], ["--resume"]):
            second = invoke("train", "--steps", "3", "--out", tmp_path, "--name", "same", *extra, *TINY)
            assert second.exit_code == 2
            since = time.strftime("%H:%M", time.localtime(holder["started"]))
            assert one_error_line(second.stderr) == (
                f"diffuse: error: {run} is being trained by pid {first.pid} on {socket.gethostname()} since {since}; "
                "wait for it or choose another --name")
        # A reader while the run writes a checkpoint every step: every read is a whole file, steps never go back.
        # At least 30 reads, and on until the writer has moved on (a loaded machine may write more slowly than we read).
        steps: list[int] = []
        deadline = time.time() + 120
        while len(steps) < 30 or (steps[-1] == steps[0] and time.time() < deadline):
            tensors, card = load_model(run / "model.safetensors")
            assert {k.split(".")[0] for k in tensors} == {"online", "ema"}
            steps.append(card.step)
        assert steps == sorted(steps) and steps[-1] > steps[0] >= 1
    finally:
        first.send_signal(signal.SIGKILL)  # no clean exit: lock.json stays, the OS lock goes with the process
        first.wait(timeout=60)
    assert read_holder(run)["pid"] == first.pid  # type: ignore[index]
    stopped = read_meta(run / "model.safetensors")["step"]
    res = invoke("train", "--resume", "--out", tmp_path, "--name", "same", "--steps", stopped + 1, "--json")
    assert res.exit_code == 0, res.stderr
    assert f"took over {run} from pid {first.pid} on {socket.gethostname()}" in res.stderr and "which is gone" in res.stderr
    assert json.loads(res.stdout)["start_step"] == stopped and not (run / HOLDER_FILE).exists()


def test_the_lock_is_the_os_lock_not_the_file(tmp_path: Path) -> None:
    # A holder in another process that never wrote lock.json is still a holder; once it exits, the run is free.
    code = ("import sys, time, fcntl, os; fd = os.open(sys.argv[1], os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX); "
            "print('held', flush=True); sys.stdin.readline()")
    tmp_path.joinpath("r").mkdir()
    other = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "r")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "held"
        with pytest.raises(UsageError, match=f"^{tmp_path / 'r'} is being written by another process; wait for it"):
            with hold_run(tmp_path / "r", "trained"):
                pass
    finally:
        other.communicate("\n", timeout=30)
    heard: list[str] = []
    with hold_run(tmp_path / "r", "tuned", heard.append):
        assert read_holder(tmp_path / "r")["job"] == "tuned"  # type: ignore[index]
    assert heard == [] and not (tmp_path / "r" / HOLDER_FILE).exists()


@pytest.mark.parametrize("name, rule", [("../escaped", "contains a path separator"), ("a/b", "contains a path separator"),
                                        ("a\\b", "contains a path separator"), ("..", "contains '..'"),
                                        (".hidden", "starts with '.'"), ("tab\there", "contains a control character")])
def test_a_run_name_is_one_folder_inside_out(name: str, rule: str, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    for extra in ([], ["--resume"]):
        res = invoke("train", "--steps", "1", "--out", out, "--name", name, *extra, *TINY)
        assert res.exit_code == 2
        line = one_error_line(res.stderr)
        assert rule in line and "a run name is one folder inside --out" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing made, not even --out


def test_a_run_that_resolves_outside_out_is_refused(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "runs" / "link").symlink_to(tmp_path / "elsewhere")
    res = invoke("train", "--steps", "1", "--out", tmp_path / "runs", "--name", "link", *TINY)
    assert res.exit_code == 2 and "outside --out" in one_error_line(res.stderr)
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_divergence_stops_with_one_line_and_the_last_checkpoint_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DIFFUSE_DEBUG", raising=False)
    res = invoke("train", "--steps", "4", "--out", tmp_path, "--name", "d", *TINY)
    assert res.exit_code == 0, res.stderr
    weights = (tmp_path / "d" / "model.safetensors").read_bytes()
    # lr 1e6 on the resumed run: the loss overflows within a few steps.
    res = invoke("train", "--resume", "--out", tmp_path, "--name", "d", "--steps", "40", "--lr", "1e6", "--set", "optim.grad_clip=0")
    assert res.exit_code == 1
    line = one_error_line(res.stderr)
    assert line.startswith("diffuse: error: training diverged: the ") and "unexpected" not in line
    assert (f"the last checkpoint (step 4) in {tmp_path / 'd'} is intact: resume it with --resume --name d --out {tmp_path}"
            in line and "lower" in line and "--precision fp32" in line and "on_nonfinite=skip" in line)
    assert (tmp_path / "d" / "model.safetensors").read_bytes() == weights  # the checkpoint was not touched
    assert invoke("train", "--resume", "--out", tmp_path, "--name", "d", "--steps", "5").exit_code == 0
    monkeypatch.setenv("DIFFUSE_DEBUG", "1")
    res = invoke("train", "--resume", "--out", tmp_path, "--name", "d", "--steps", "40", "--lr", "1e6", "--set", "optim.grad_clip=0")
    assert res.exit_code == 1 and "Traceback" in res.stderr and "NonFiniteError" in res.stderr


def test_skip_mode_counts_skipped_steps_and_stops_after_max_skips(tmp_path: Path) -> None:
    res = invoke("train", "--steps", "40", "--out", tmp_path, "--name", "s", "--lr", "1e6", "--set", "optim.grad_clip=0",
                 "--set", "on_nonfinite=skip", "--set", "max_skips=3", "--set", "log_every=1", *TINY)
    assert res.exit_code == 1
    line = one_error_line(res.stderr)
    assert "(4 non-finite steps in a row; max_skips 3)" in line and "--set max_skips=K" in line
    rows = [json.loads(r) for r in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["skipped"] for r in rows) == 3 and all(r["skipped"] in (0, 1) for r in rows)
    assert all("loss" not in r for r in rows if r["skipped"])  # a skipped step has no loss to report
    assert invoke("train", "--steps", "1", "--out", tmp_path, "--name", "s2", "--set", "max_skips=0", *TINY).exit_code == 2


@pytest.mark.parametrize("args", [
    ["--eval-every", "1", "--eval-metrics", "bpd"],
    ["--eval-every", "1", "--eval-metrics", "nope"],
    ["--eval-every", "1", "--eval-metrics", "fid", "--keep-best", "is"],
    ["--eval-every", "1", "--eval-metrics", "fid", "--set", "eval.inception_weights=/nonexistent/pt_inception.pth"],
    ["--dataset", "mnist", "--data-dir", "/nonexistent"],
    ["--init", "/nonexistent/model.safetensors"],
    ["--set", "task=classifier", "--class-conditional"],
])
def test_bad_training_input_leaves_nothing_behind(args: list[str], tmp_path: Path) -> None:
    res = invoke("train", "--steps", "2", "--out", tmp_path / "runs", "--name", "bad", *TINY, *args)
    assert res.exit_code == 2, res.stderr
    one_error_line(res.stderr)
    assert not (tmp_path / "runs").exists()  # neither the run nor the --out folder this job would have made


M = ["--model", "builtin:shapes"]
FAST = ["--sampler", "ei", "--steps", "2", "-n", "2"]


@pytest.mark.parametrize("argv", [
    ["sample", *M, *FAST, "--out", "o/x.png", "--sampler", "nope"],
    ["sample", *M, *FAST, "--out", "x.png", "--grid", "tuned"],
    ["sample", *M, *FAST, "--out", "x.png", "--class", "nope"],
    ["sample", *M, *FAST, "--individual", "--out", "ind/x.png", "-o", "nope=1"],
    ["sample", *M, *FAST, "--out", "x.png", "--trajectory", "t.png", "--device", "ve"],
    ["condition", *M, *FAST, "--out", "x.png", "--class", "nope"],
    ["condition", *M, *FAST, "--out", "x.png", "--classifier", "builtin:shapes"],
    ["impute", "in.png", "--mask", "nope.png", *M, "--steps", "2", "-n", "1", "--out", "x.png"],
    ["impute", "in.png", "--mask", "half", *M, "--method", "nope", "-n", "1", "--out", "x.png"],
    ["evaluate", *M, "--metrics", "fid", "-n", "2", "--save-reference-stats", "stats.npz", "--inception-weights", "none.pth"],
    ["evaluate", *M, "--metrics", "bpd", "--bpd-dataset", "nope", "--bpd-examples", "1"],
    ["evaluate", "--images", "nope", "--metrics", "toy"],
    ["tune", "builtin:shapes", "--steps", "0", "--grids", "g/grids.json"],
    ["tune", "builtin:shapes", "--sampler", "ode", "--grids", "g/grids.json"],
])
def test_bad_input_of_every_command_leaves_nothing_behind(argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # a tuned grid or statistics cache would go here
    Image.new("RGB", (16, 16), (200, 40, 40)).save(tmp_path / "in.png")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    res = invoke(*argv)
    assert res.exit_code == 2, res.stderr
    one_error_line(res.stderr)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
