"""A stranger's run directory (issue 34): links out of it, damaged files, hostile values. `diffuse report`,
`sample --model RUN` and `train --resume` exit 0 or 2 with one line, never a traceback, and read nothing outside it.

The random part builds run directories from a list of damages (hypothesis picks a few per example) and watches
every file the commands open: Python's own opens through an audit hook, safetensors' (Rust, unaudited) through
its entry points. What it found is said at DAMAGES and in the module docstring of ``run.reader``.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import sys
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from test_cli import one_error_line
from typer.testing import CliRunner

from diffusers_cli.checkpoints.weights import load_weights, read_card, read_meta, save_model, save_weights
from diffusers_cli.cli import app

runner = CliRunner()


def invoke(*args: object) -> Any:
    return runner.invoke(app, [str(a) for a in args])


# ---- watching what is opened ---------------------------------------------------------------------------------

#: Paths opened while a watch is on (an audit hook cannot be removed, so one hook serves every test).
_OPENED: list[str] | None = None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _OPENED is not None and event in ("open", "os.scandir", "os.listdir") and args and isinstance(args[0], (str, bytes, Path)):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


@contextmanager
def watching(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every path Python or safetensors opens inside the block."""
    import safetensors

    import diffusers_cli.checkpoints.weights as weights

    global _OPENED
    seen: list[str] = []

    def recorded(fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(path: Any, *args: Any, **kwargs: Any) -> Any:
            seen.append(os.fsdecode(path))
            return fn(path, *args, **kwargs)
        return wrapper

    with monkeypatch.context() as m:
        m.setattr(weights, "safe_open", recorded(weights.safe_open))
        m.setattr(weights, "load_file", recorded(weights.load_file))
        m.setattr(safetensors, "safe_open", recorded(safetensors.safe_open))
        _OPENED = seen
        try:
            yield seen
        finally:
            _OPENED = None


def read_outside(opened: list[str], outside: Path) -> list[str]:
    """The opened paths that lead into ``outside`` (links resolved)."""
    return [p for p in opened if Path(p).resolve().is_relative_to(outside.resolve())]


# ---- the deterministic cases ---------------------------------------------------------------------------------


@pytest.fixture
def stranger(tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A copy of the tiny run under runs/, and a folder outside it with copies of its files (valid ones)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DIFFUSE_DEBUG", raising=False)
    run = tmp_path / "runs" / "tiny"
    shutil.copytree(tiny_run, run)
    outside = tmp_path / "outside"
    shutil.copytree(tiny_run, outside)
    return run, outside


def _link(run: Path, name: str, target: Path) -> None:
    path = run / name
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)


def test_sample_refuses_weights_that_link_out_of_the_run(stranger: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    run, outside = stranger
    _link(run, "model.safetensors", outside / "model.safetensors")  # a valid model: only the link gives it away
    with watching(monkeypatch) as opened:
        res = invoke("sample", "--model", run, "--sampler", "ddpm", "--steps", "2", "-n", "2", "--out", "out.png")
    assert one_error_line(res) == (
        f"diffuse: error: {run / 'model.safetensors'} links to {outside / 'model.safetensors'}, outside the run {run}; "
        "a run's files must lie inside it (replace the link with the file it names)")
    assert res.exit_code == 2 and read_outside(opened, outside) == [] and not Path("out.png").exists()
    # Named as a file, the same weights are the user's own choice: they sample.
    assert invoke("sample", "--model", outside / "model.safetensors", "--sampler", "ddpm", "--steps", "2", "-n", "2",
                  "--out", "out.png").exit_code == 0


def test_resume_refuses_a_run_with_a_link_out_of_it_and_writes_nothing_there(stranger: tuple[Path, Path],
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    run, outside = stranger
    _link(run, "metrics.jsonl", outside / "metrics.jsonl")  # resume would append its records to the outside file
    before = (outside / "metrics.jsonl").read_bytes()
    with watching(monkeypatch) as opened:
        res = invoke("train", "--resume", "--out", run.parent, "--name", run.name, "--steps", "22")
    assert one_error_line(res) == (
        f"diffuse: error: {run / 'metrics.jsonl'} links to {outside / 'metrics.jsonl'}, outside the run {run}; "
        "a run's files must lie inside it (replace the link with the file it names)")
    assert res.exit_code == 2 and read_outside(opened, outside) == []
    assert (outside / "metrics.jsonl").read_bytes() == before and not (run / "lock.json").exists()
    # The job refuses too when called without the command line (the Python face): the check is in both.
    from diffusers_cli.config.schema import TrainConfig
    from diffusers_cli.jobs.train import train
    from diffusers_cli.run.reader import RunFileError

    cfg = TrainConfig.model_validate({**json.loads((run / "config.json").read_text()), "out": str(run.parent), "resume": True,
                                      "steps": 22})
    with pytest.raises(RunFileError, match="metrics.jsonl links to"):
        train(cfg)
    assert (outside / "metrics.jsonl").read_bytes() == before


def test_resume_refuses_a_folder_it_would_write_into_that_links_out(stranger: tuple[Path, Path]) -> None:
    # Nothing of samples/ is read on resume, only written: the whole-run check is what keeps the writes inside.
    run, outside = stranger
    (outside / "grids").mkdir()
    _link(run, "samples", outside / "grids")
    res = invoke("train", "--resume", "--out", run.parent, "--name", run.name, "--steps", "22", "--sample-every", "1")
    assert res.exit_code == 2 and one_error_line(res) == (
        f"diffuse: error: {run / 'samples'} links to {outside / 'grids'}, outside the run {run}; "
        "a run's files must lie inside it (replace the link with the file it names)")
    assert list((outside / "grids").iterdir()) == []


def test_a_lock_file_that_links_out_is_not_read_and_a_hostile_one_is_one_line(stranger: tuple[Path, Path]) -> None:
    from diffusers_cli.run.lock import read_holder

    run, outside = stranger
    (outside / "lock.json").write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": 0}))
    _link(run, "lock.json", outside / "lock.json")
    assert read_holder(run) is None
    messages: list[str] = []
    from diffusers_cli.run.lock import hold_run

    (run / "lock.json").unlink()
    (run / "lock.json").write_text(json.dumps({"pid": "1\n2", "host": "h" * 500, "started": float("nan")}))
    with hold_run(run, "trained", messages.append):
        pass
    assert messages == [f"took over {run} from pid 1?2 on {'h' * 64} since an unknown time, which is gone"]


def test_evaluate_snapshots_refuses_a_snapshot_that_links_out_and_opens_nothing_outside(
        stranger: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    run, outside = stranger
    # A file of our format (the run's weights): only the link gives it away.
    _link(run, "snapshots/snapshot_00000010.safetensors", outside / "model.safetensors")
    line = (f"diffuse: error: {run / 'snapshots' / 'snapshot_00000010.safetensors'} links to {outside / 'model.safetensors'}, "
            f"outside the run {run}; a run's files must lie inside it (replace the link with the file it names)")
    for args in (("evaluate", "--model", run, "--snapshots", "--metrics", "fid", "-n", "4"),
                 ("sample", "--model", f"{run}@10", "--sampler", "ddpm", "--steps", "2", "-n", "2", "--out", "s.png")):
        with watching(monkeypatch) as opened:
            res = invoke(*args)
        assert one_error_line(res) == line and res.exit_code == 2, args
        assert read_outside(opened, outside) == [] and not (run / "snapshot_scores.json").exists()
    # A snapshots folder that is itself a link out of the run is refused the same way.
    _link(run, "snapshots", outside)
    res = invoke("evaluate", "--model", run, "--snapshots", "--metrics", "fid", "-n", "4")
    assert res.exit_code == 2 and one_error_line(res) == (
        f"diffuse: error: {run / 'snapshots'} links to {outside}, outside the run {run}; a run's files must lie inside it "
        "(replace the link with the file it names)")


# ---- the model card's SDE, typed -----------------------------------------------------------------------------


def test_the_cards_sde_is_typed_and_its_json_on_disk_is_unchanged(tiny_run: Path, tmp_path: Path) -> None:
    from diffusers_cli.config.sde import VPConfig

    card = read_card(tiny_run / "model.safetensors")
    assert isinstance(card.sde, VPConfig) and card.sde.beta_max == 20.0
    stored = read_meta(tiny_run / "model.safetensors")
    # The stored form: the SDE as its config's JSON, the keys in the card's field order, as before it was typed.
    assert stored["sde"] == {"schedule": "linear", "beta_min": 0.1, "beta_max": 20.0, "cosine_s": 0.008, "kind": "vp"}
    assert list(stored) == ["card_version", "kind", "arch", "network", "sde", "image_shape", "class_names", "dataset",
                            "parameterization", "step", "ema_updates", "source", "package_version", "extra"]
    assert json.loads(card.to_json()) == stored
    again = tmp_path / "again.safetensors"
    save_model(again, load_weights(tiny_run / "model.safetensors")[0], card)
    assert read_meta(again) == stored


@pytest.mark.parametrize(("sde", "why"), [
    ({"kind": "brownian"}, "an SDE config is an object whose kind is one of ve, vp, subvp, ddpm, got kind 'brownian'"),
    ({"kind": "vp", "beta_min": "x"}, "vp.beta_min: Input should be a valid number, unable to parse string as a number"),
    ({"kind": "ve", "sigma_min": 2.0, "sigma_max": 1.0}, "ve: Value error, sigma_min must be smaller than sigma_max"),
    ({"kind": "vp", "warp": 9}, "vp.warp: Extra inputs are not permitted"),
])
def test_a_foreign_or_damaged_sde_in_a_card_is_one_line(tiny_run: Path, tmp_path: Path, sde: dict[str, Any], why: str) -> None:
    tensors, meta = load_weights(tiny_run / "model.safetensors")
    path = tmp_path / "m.safetensors"
    save_weights(path, tensors, {**meta, "sde": sde})
    res = invoke("sample", "--model", path, "--sampler", "ddpm", "--steps", "2", "-n", "1", "--out", tmp_path / "o.png")
    assert res.exit_code == 2 and one_error_line(res) == (
        f"diffuse: error: {path} has a model card whose SDE is not one of ours ({why}); re-export it from its run, "
        "or upgrade diffusers-cli")


def test_a_card_whose_sde_is_not_an_object_is_one_line(tiny_run: Path, tmp_path: Path) -> None:
    tensors, meta = load_weights(tiny_run / "model.safetensors")
    path = tmp_path / "m.safetensors"
    save_weights(path, tensors, {**meta, "sde": "vp"})
    res = invoke("sample", "--model", path, "--sampler", "ddpm", "--steps", "2", "-n", "1", "--out", tmp_path / "o.png")
    assert one_error_line(res) == (f"diffuse: error: {path} has an invalid model card (its sde is not a config object); "
                                   "re-export it from its run")


# ---- random damage (hypothesis) ------------------------------------------------------------------------------

hypothesis = pytest.importorskip("hypothesis", reason="the test extra is not installed: pip install -e '.[test]'")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

LONG = os.environ.get("DIFFUSE_HYPOTHESIS", "") == "long"
PROFILE = settings(max_examples=60 if LONG else 8, deadline=timedelta(seconds=90), database=None, derandomize=not LONG,
                   suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _png_bytes(size: tuple[int, int] = (8, 8)) -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", size, (9, 99, 199)).save(buf, format="PNG")
    return buf.getvalue()


def _huge_png() -> bytes:
    """A PNG whose header says 30000x30000 (900 million pixels): the pixel limit must refuse it before decoding."""
    data = bytearray(_png_bytes())
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr:ihdr + 8] = struct.pack(">II", 30000, 30000)
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4:ihdr + 13])))
    return bytes(data)


def _write(run: Path, name: str, data: bytes) -> None:
    path = run / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(path):
        path.unlink()
    path.write_bytes(data)


def _edit_json(run: Path, file: str, **values: Any) -> None:
    data = json.loads((run / file).read_text())
    for key, value in values.items():
        node = data
        *parents, last = key.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    (run / file).write_text(json.dumps(data))


def _card(run: Path, **values: Any) -> None:
    tensors, meta = load_weights(run / "model.safetensors")
    save_weights(run / "model.safetensors", tensors, {**meta, **values})


NAN = float("nan")
#: What a stranger's run may hold: name -> (the file it damages, how, on (run, outside)); one damage per file in an
#: example. ``outside`` holds valid copies of the run's files, so a link to one is given away by nothing but the link.
#: Found by this test, and fixed: a config.json (or any --config) that is not UTF-8 was a traceback (exit 1); so was a
#: metrics.jsonl that is not UTF-8 on resume; safetensors cannot open a path whose name is not UTF-8 (now one line
#: saying so, where it blamed the file). Fixed while writing the damages, before the test ran: a lock.json "started"
#: of NaN or a string (time.localtime raised), a holder field with a newline (two lines), a card that is a JSON list or
#: has card_version "x" (AttributeError, ValueError), an image_shape of 1e999 (OverflowError), a step of NaN or true.
DAMAGES: dict[str, tuple[str, Callable[[Path, Path], Any]]] = {
    "sample grid links out": ("samples/2", lambda r, o: _link(r, "samples/step_0000002.png", o / "samples.png")),
    "final grid links out": ("samples.png", lambda r, o: _link(r, "samples.png", o / "samples.png")),
    "samples folder links out": ("samples", lambda r, o: (_write(o, "samples/step_0000003.png", _png_bytes()), _link(r, "samples", o / "samples"))),
    "config links out": ("config", lambda r, o: _link(r, "config.json", o / "config.json")),
    "log links out": ("log", lambda r, o: _link(r, "metrics.jsonl", o / "metrics.jsonl")),
    "weights link out": ("weights", lambda r, o: _link(r, "model.safetensors", o / "model.safetensors")),
    "state links out": ("state", lambda r, o: _link(r, "state.safetensors", o / "state.safetensors")),
    "grids link out": ("grids", lambda r, o: (_write(o, "grids.json", b'{"grids": []}'), _link(r, "grids.json", o / "grids.json"))),
    "lock links out": ("lock", lambda r, o: (_write(o, "lock.json", b'{"pid": 1}'), _link(r, "lock.json", o / "lock.json"))),
    "link to a missing file outside": ("samples/5", lambda r, o: _link(r, "samples/step_0000005.png", o / "nothing.png")),
    "truncated grid": ("samples/6", lambda r, o: _write(r, "samples/step_0000006.png", _png_bytes()[:40])),
    "huge grid": ("samples/7", lambda r, o: _write(r, "samples/step_0000007.png", _huge_png())),
    "text named .png": ("samples/8", lambda r, o: _write(r, "samples/step_0000008.png", b"<script>alert(1)</script>")),
    "grid is a FIFO": ("samples/9", lambda r, o: (r / "samples").mkdir(exist_ok=True) or os.mkfifo(r / "samples" / "step_0000009.png")),
    "non-UTF-8 sample name": ("samples/1", lambda r, o: _write(r, os.fsdecode(b"samples/step_00000\xff1.png"), _png_bytes())),
    "non-UTF-8 file in the run": ("other", lambda r, o: _write(r, os.fsdecode(b"\xfe\xff.png"), _png_bytes())),
    "truncated weights": ("weights", lambda r, o: _write(r, "model.safetensors", (r / "model.safetensors").read_bytes()[:300])),
    "truncated state": ("state", lambda r, o: _write(r, "state.safetensors", (r / "state.safetensors").read_bytes()[:300])),
    "log: NaN and strings for numbers": ("log", lambda r, o: (r / "metrics.jsonl").open("a").write(
        '{"step": 21, "loss": NaN, "it_per_s": "fast", "lr": "x"}\n{"step": 22, "loss": "low", "eval": {"fid": {"fid": NaN}}}\n')),
    "log: a step of NaN": ("log", lambda r, o: (r / "metrics.jsonl").open("a").write('{"step": NaN, "loss": 1.0}\n')),
    "log: a step of true": ("log", lambda r, o: (r / "metrics.jsonl").open("a").write('{"step": true, "loss": 1.0}\n')),
    "log: a lone surrogate": ("log", lambda r, o: (r / "metrics.jsonl").open("a").write(
        '{"step": 20, "eval": {"\\udc80": {"mean": 1.0}}, "eval_samples": "\\ud800"}\n')),
    "log: not UTF-8": ("log", lambda r, o: _write(r, "metrics.jsonl", b"\xff\xfe{}")),
    "config: a string for steps": ("config", lambda r, o: _edit_json(r, "config.json", steps="x")),
    "config: NaN for the rate": ("config", lambda r, o: _edit_json(r, "config.json", optim__lr=NAN)),
    "config: an SDE of NaN": ("config", lambda r, o: _edit_json(r, "config.json", sde__beta_max=NAN)),
    "config: out and name elsewhere": ("config", lambda r, o: _edit_json(r, "config.json", out=str(o), name="../outside")),
    "config: not an object": ("config", lambda r, o: _write(r, "config.json", b"[1, 2]")),
    "config: not UTF-8": ("config", lambda r, o: _write(r, "config.json", b"\xff\xfe")),
    "grids: strings and NaN": ("grids", lambda r, o: _write(r, "grids.json", b'{"grids": [{"sampler": NaN, "steps": "x", "times": "y"}]}')),
    "grids: not JSON": ("grids", lambda r, o: _write(r, "grids.json", b"\xff{")),
    "lock: hostile holder": ("lock", lambda r, o: _write(r, "lock.json", b'{"pid": "1\\n2", "host": [1], "started": "x"}')),
    "lock: NaN start": ("lock", lambda r, o: _write(r, "lock.json", b'{"pid": 1, "started": NaN}')),
    "card: SDE of a foreign kind": ("weights", lambda r, o: _card(r, sde={"kind": "brownian"})),
    "card: SDE with a string": ("weights", lambda r, o: _card(r, sde={"kind": "vp", "beta_min": "x"})),
    "card: image shape of infinities": ("weights", lambda r, o: _card(r, image_shape=[1e999, 8, 8])),
    "card: version x": ("weights", lambda r, o: _card(r, card_version="x")),
    "card: a list": ("weights", lambda r, o: save_weights(r / "model.safetensors", load_weights(r / "model.safetensors")[0], [])),  # type: ignore[arg-type]
}
#: Run names: plain, hostile HTML, non-UTF-8 bytes.
NAMES = ["tiny", '<img src=x onerror="alert(1)">', os.fsdecode(b"r\xffn")]


def _commands(run: Path) -> list[list[str]]:
    return [["report", str(run)],
            ["sample", "--model", str(run), "--sampler", "ddpm", "--steps", "2", "-n", "2", "--out", "out.png"],
            ["train", "--resume", "--out", str(run.parent), "--name", run.name, "--steps", "21"]]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_damaged_and_hostile_runs_exit_0_or_2_with_one_line_and_read_nothing_outside(
        tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DIFFUSE_DEBUG", raising=False)

    @PROFILE
    @given(name=st.sampled_from(NAMES), damages=st.lists(st.sampled_from(sorted(DAMAGES)), min_size=1, max_size=3,
                                                                unique_by=lambda d: DAMAGES[d][0]))
    def run(name: str, damages: list[str]) -> None:
        for p in tmp_path.iterdir():
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        outside = tmp_path / "outside"
        shutil.copytree(tiny_run, outside)
        secret = b"SECRET-OUTSIDE-THE-RUN"
        (outside / "secret.txt").write_bytes(secret)
        made = tmp_path / "runs" / "made"  # damaged under a plain name (safetensors opens UTF-8 paths only), then named
        shutil.copytree(tiny_run, made)
        for d in damages:
            DAMAGES[d][1](made, outside)
        run_dir = made.rename(tmp_path / "runs" / name)
        for argv in _commands(run_dir):
            with watching(monkeypatch) as opened:
                res = runner.invoke(app, argv)
            out = res.stderr
            assert res.exit_code in (0, 2), (damages, argv, res.exit_code, out)
            assert "Traceback" not in out and "unexpected failure" not in out, (damages, argv, out)
            errors = [ln for ln in out.splitlines() if ln.startswith("diffuse: error: ")]
            if res.exit_code == 2:
                assert len(errors) == 1 and out.strip().splitlines()[-1] == errors[0], (damages, argv, out)
            assert read_outside(opened, outside) == [], (damages, argv, read_outside(opened, outside))
            if argv[0] == "report" and res.exit_code == 0:
                page = (run_dir / "report.html").read_bytes()
                assert secret not in page
        assert (outside / "metrics.jsonl").read_bytes() == (tiny_run / "metrics.jsonl").read_bytes()  # nothing written there

    run()


@pytest.mark.parametrize(("file", "line"), [
    ("config.json", "config file {run}/config.json is not UTF-8 text (byte 0 is not); pass a YAML, JSON or TOML file to --config"),
    ("metrics.jsonl", "{run}/metrics.jsonl is not UTF-8 text; the log is damaged (restore it, or remove it to go on without its "
                      "records)"),
])
def test_resume_of_a_run_with_a_file_of_bytes_is_one_line(stranger: tuple[Path, Path], file: str, line: str) -> None:
    # Found by the random profile above (the long one): both were a UnicodeDecodeError, exit 1.
    run, _ = stranger
    (run / file).write_bytes(b"\xff\xfe{}")
    res = invoke("train", "--resume", "--out", run.parent, "--name", run.name, "--steps", "21")
    assert one_error_line(res) == "diffuse: error: " + line.format(run=run)
