"""The command surface under random input (hypothesis): exit 0 or 2, never a traceback, one line, nothing left behind.

Every command's flags are read from the typer app itself, so a new flag is exercised without touching this file.
The suite runs a bounded profile; ``DIFFUSE_HYPOTHESIS=long python -m pytest tests/test_command_surface.py`` runs
the long one. What it found is said where it is kept out: the comments at SKIP, COST_PATHS and COST_WORDS.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from diffusers_cli.cli import app

hypothesis = pytest.importorskip("hypothesis", reason="the test extra is not installed: pip install -e '.[test]'")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

LONG = os.environ.get("DIFFUSE_HYPOTHESIS", "") == "long"
PROFILE = settings(max_examples=150 if LONG else 10, deadline=None, database=None, derandomize=not LONG,
                   suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
runner = CliRunner()

# Valid, fast invocations that the random flag is added to (a later flag overrides the same earlier one).
BASE: dict[str, list[str]] = {
    "sample": ["--model", "builtin:shapes", "--sampler", "ei", "--steps", "2", "-n", "2", "--out", "out.png"],
    "condition": ["--model", "builtin:shapes", "--class", "ring", "--sampler", "ei", "--steps", "2", "-n", "2", "--out", "out.png"],
    "impute": ["in.png", "--mask", "half", "--model", "builtin:shapes", "--method", "repaint", "--steps", "2", "-n", "1",
               "--out", "out.png"],
    "evaluate": ["--model", "builtin:shapes", "--metrics", "bpd", "--bpd-examples", "1", "--bpd-rtol", "1e-2", "--bpd-atol", "1e-2"],
    "train": ["--image-size", "8", "--steps", "1", "--batch-size", "4", "--set", "sample_n=2", "--set", "sampler.steps=2",
              "--set", "data.num_examples=16", "--set", "network.base_channels=16", "--sample-every", "0", "--out", "runs",
              "--name", "r"],
}
# Flags that would leave the sandbox or the time bound, not the input space: a download, the compiler, where
# outputs go (fixed by BASE), --epochs (a float of epochs over 10,000 shapes is hours) and the adaptive solvers'
# tolerances (a valid 1e-9 makes an ODE solve take hours: found by this test, and not a bug).
SKIP = {"download", "compile", "out", "help", "json", "epochs", "name", "config", "rtol", "atol", "bpd_rtol", "bpd_atol"}
# --set paths per command: real ones (with random values) and a few that do not exist.
SET_PATHS = {
    "sample": ["n", "seed", "batch_size", "sampler.name", "sampler.steps", "sampler.grid", "sampler.options.snr", "guidance"],
    "condition": ["scale", "n", "sampler.steps", "sampler.name", "classifier", "class"],
    "impute": ["method", "steps", "n", "mask_fraction", "options.particles", "sampler.name"],
    "evaluate": ["bpd_examples", "bpd_runs", "bpd_rtol", "metrics", "n", "batch_size"],
    "train": ["optim.lr", "optim.grad_clip", "network.base_channels", "network.preset", "sde.kind", "lognormal_std",
              "label_dropout", "max_skips", "on_nonfinite", "data.num_examples", "eval.every", "steps"],
}
# Paths whose valid values set how much work a run does: 1e9 of them is hours of valid work, not bad input,
# so they get small or invalid values only (found by this test: bpd_runs=1e9 solved bits/dim for hours).
COST_PATHS = {"n", "steps", "sampler.steps", "bpd_examples", "bpd_runs", "batch_size", "data.num_examples",
              "network.base_channels", "eval.every", "mask_fraction", "options.particles"}
# Neither "null" nor "" among them: either sets bpd_examples to None, the whole split (found by this test: a
# derandomized evaluate example solved bits/dim of every held-out image for minutes).
COST_WORDS = ["0", "-1", "1", "2", "x", "nan", "inf"]
WORDS = ["", "0", "-1", "1", "2", "nan", "inf", "1e9", "x", "ring", "..", "../x", "a/b", "pc", "ei", "vp", "ve", "auto",
         "fid", "bpd", "cpu", "cuda", "half", "é", "a=b", "1,2", " ", "null", "[]", "{}"]
FLOATS = [-1.0, 0.0, 1e-9, 0.5, 1.0, 2.0, 1e30, math.nan, math.inf, -math.inf]


def params(command: str) -> list[Any]:
    """The command's options as click sees them (the typer app is the one source of its flags)."""
    group: Any = typer.main.get_command(app)
    return [p for p in group.commands[command].params if p.param_type_name == "option" and p.name not in SKIP]


def value_for(param: Any) -> st.SearchStrategy[list[str]]:
    """Random argv words for one option, by its click type."""
    flag = max(param.opts, key=len)
    if param.is_flag:
        return st.just([flag])
    kind = param.type_descriptor.annotation  # the Python type of the command function's parameter
    if kind is int:
        values: st.SearchStrategy[Any] = st.integers(-2, 4)
    elif kind is float:
        values = st.sampled_from(FLOATS)
    else:  # strings and paths: relative words only, so any file written stays in the sandbox
        values = (st.sampled_from(WORDS) | st.text(alphabet="abcxyz019.-_/=,:", min_size=0, max_size=8)).map(
            lambda v: v.lstrip("/"))  # never an absolute path: outputs stay in the sandbox
    return values.map(lambda v: [flag, str(v)])


def mutation(command: str) -> st.SearchStrategy[list[list[str]]]:
    """One random change to a valid invocation: a flag, an -o option, a --set path, or a config file."""
    flags = st.one_of(*[value_for(p) for p in params(command)])
    paths = st.sampled_from(SET_PATHS[command] + ["nope", "sampler.nope", ""])
    sets = paths.flatmap(lambda k: st.sampled_from(COST_WORDS if k in COST_PATHS else WORDS).map(
        lambda v: ["--set", f"{k}={v}"]))
    options = st.tuples(st.sampled_from(["snr", "order", "eta", "rho", "particles", "resample", "nope", ""]),
                        st.sampled_from(WORDS)).map(lambda kv: ["-o", f"{kv[0]}={kv[1]}"])
    config = st.sampled_from(["{", "[1, 2]", "steps: -1", "nope: 1", json.dumps({"sampler": {"steps": "x"}}), "\x00", ""]).map(
        lambda text: ["--config", "@" + text])  # written to a file by the test
    has_o = any("-o" in p.opts for p in params(command))
    return st.lists(st.one_of(flags, sets, options, config) if has_o else st.one_of(flags, sets, config), min_size=1, max_size=3)


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def check(command: str, extra: list[str], sandbox: Path) -> None:
    """Run one invocation in the sandbox and hold it to the error policy."""
    argv = [command, *BASE[command]]
    for i, word in enumerate(extra):
        if i and extra[i - 1] == "--config" and word.startswith("@"):
            (sandbox / "cfg.yaml").write_text(word[1:], encoding="utf-8")
            word = "cfg.yaml"
        argv.append(word)
    before = tree(sandbox)
    res = runner.invoke(app, argv)
    out = res.stderr
    assert res.exit_code in (0, 1, 2), (argv, res.exit_code, out)
    assert "Traceback" not in out and "unexpected failure" not in out, (argv, out)
    errors = [ln for ln in out.splitlines() if ln.startswith("diffuse: error: ")]
    if res.exit_code == 1:  # a correct run that cannot go on: only a diverged training run, said in one line
        assert command == "train" and len(errors) == 1 and errors[0].startswith("diffuse: error: training diverged"), (argv, out)
    if res.exit_code == 2:
        assert len(errors) == 1 and out.strip().splitlines()[-1] == errors[0], (argv, out)
        assert tree(sandbox) - before <= {"cfg.yaml"}, (argv, tree(sandbox) - before)


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DIFFUSE_DEBUG", raising=False)
    Image.new("RGB", (16, 16), (200, 40, 40)).save(tmp_path / "in.png")
    return tmp_path


def _clean(sandbox: Path) -> None:
    """Back to the sandbox's starting files between examples (outputs of successful runs go)."""
    import shutil

    for p in sandbox.iterdir():
        if p.name != "in.png":
            shutil.rmtree(p) if p.is_dir() else p.unlink()


@pytest.mark.parametrize("command", list(BASE))
def test_the_base_invocations_are_valid(command: str, sandbox: Path) -> None:
    res = runner.invoke(app, [command, *BASE[command]])
    assert res.exit_code == 0, res.stderr


RANDOM = list(BASE)


@pytest.mark.slow
@pytest.mark.parametrize("command", RANDOM)
def test_random_input_exits_0_or_2_with_one_line_and_leaves_nothing_on_2(command: str, sandbox: Path) -> None:
    @PROFILE
    @given(extra=mutation(command))
    def run(extra: list[list[str]]) -> None:
        _clean(sandbox)
        check(command, [word for part in extra for word in part], sandbox)

    run()
