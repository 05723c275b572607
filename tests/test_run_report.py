"""`diffuse report RUN`: report.html shows the run's own facts, embeds every image, and bad input is one line."""

from __future__ import annotations

import base64
import io
import json
import shlex
import shutil
import statistics
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from test_cli import one_error_line
from typer.testing import CliRunner

from diffusers_cli.checkpoints.weights import load_weights, read_card, save_model
from diffusers_cli.cli import app

runner = CliRunner()

#: What `diffuse tune` writes (tuned_grids.write_entry): {"grids": [entries]}, rendered whatever the entries' fields.
SHA = "0123456789abcdef" * 4
GRIDS = {"grids": [
    {"sampler": "ei", "steps": 8, "options": {}, "times": [1.0, 0.6, 0.3, 0.1, 0.05, 0.02, 0.01, 0.005, 0.001],
     "weights_sha256": SHA, "date": "2025-01-02T10:00:00+00:00", "objective": "path", "cost": 0.125},
    {"sampler": "heun", "steps": 4, "options": {"order": 2}, "times": [1.0, 0.5, 0.1, 0.001], "weights_sha256": SHA,
     "date": "2025-01-03T10:00:00+00:00", "objective": "path", "cost": 0.5, "note": "extra field"},
]}


def invoke(*args: object) -> Any:
    return runner.invoke(app, [str(a) for a in args])


class Page(HTMLParser):
    """Tags, image sources and table cells of an HTML page, with the tags left open (html.parser validates nothing)."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self, text: str) -> None:
        super().__init__()
        self.open: list[str] = []
        self.mismatched: list[str] = []
        self.images: list[str] = []
        self.alts: list[str] = []
        self.links: list[str] = []
        self.tags: set[str] = set()
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.add(tag)
        if tag not in self.VOID:
            self.open.append(tag)
        if tag == "img":
            self.images.append(str(a.get("src")))
            self.alts.append(str(a.get("alt")))
        if tag in ("a", "link", "script", "iframe") and (a.get("href") or a.get("src")):
            self.links.append(str(a.get("href") or a.get("src")))
        if tag == "table":
            self._table = a.get("id") or f"table{len(self.tables)}"
            self.tables[self._table] = []
        if tag == "tr" and self._table:
            self.tables[self._table].append([])
        if tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open[-1] != tag:
            self.mismatched.append(tag)
        else:
            self.open.pop()
        if tag in ("td", "th") and self._cell is not None and self._table:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        if tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def png_of(src: str) -> Image.Image:
    """The image a data URI embeds (fails for anything that is not an embedded PNG)."""
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix), src[:60]
    img = Image.open(io.BytesIO(base64.b64decode(src[len(prefix):], validate=True)))
    assert img.format == "PNG"
    return img


def card_table(page: Page) -> dict[str, str]:
    return {row[0]: row[1] for row in page.tables["table0"] if len(row) == 2}


@pytest.fixture()
def evaluated_run(tiny_run: Path, tmp_path: Path) -> Path:
    """A copy of the tiny run with three evaluations logged, a best checkpoint, a grid over training and grids.json."""
    run = tmp_path / "evaluated"
    shutil.copytree(tiny_run, run)
    evals = [{"step": 5, "epoch": 0.625, "eval": {"fid": {"fid": 812.5, "std": 41.25, "std_method": "bootstrap", "bootstrap": 20},
                                                  "kid": {"mean": 0.25, "std": 0.0125, "std_method": "subsets"}},
              "eval_samples": 6, "eval_nfe": 3, "eval_seconds": 2.5},
             {"step": 10, "epoch": 1.25, "eval": {"fid": {"fid": 95.75, "std": 12.5, "std_method": "bootstrap", "bootstrap": 20},
                                                  "kid": {"mean": 0.125, "std": 0.0625, "std_method": "subsets"}},
              "eval_samples": 6, "eval_nfe": 3, "eval_seconds": 3.5},
             {"step": 20, "epoch": 2.5, "eval": {"fid": {"fid": 101.0, "std": None, "std_method": None, "bootstrap": 0},
                                                 "kid": {"mean": 0.0625, "std": 0.03125, "std_method": "subsets"}},
              "eval_samples": 6, "eval_nfe": 3, "eval_seconds": 4.5}]
    with (run / "metrics.jsonl").open("a") as f:
        f.writelines(json.dumps(r) + "\n" for r in evals)
    tensors, card = load_weights(run / "model.safetensors")[0], read_card(run / "model.safetensors")
    save_model(run / "best.safetensors", tensors, type(card)(**{**card.__dict__, "step": 10,
                                                                "extra": {**card.extra, "best": {"metric": "fid", "value": 95.75, "step": 10}}}))
    (run / "samples").mkdir(exist_ok=True)
    shutil.copy(run / "samples.png", run / "samples" / "step_0000010.png")
    (run / "grids.json").write_text(json.dumps(GRIDS))
    return run


def test_report_shows_the_runs_own_facts_with_every_image_embedded(evaluated_run: Path) -> None:
    res = invoke("report", evaluated_run, "--json")
    assert res.exit_code == 0, res.stderr
    facts = json.loads(res.stdout)
    text = (evaluated_run / "report.html").read_text(encoding="utf-8")
    page = Page(text)
    assert text.startswith("<!DOCTYPE html>") and page.open == [] and page.mismatched == []  # every tag closed in order
    # Self-contained: no script, no external reference; every image is an embedded PNG.
    assert "script" not in page.tags and all(link.startswith("#") for link in page.links)
    assert "http://" not in text and "https://" not in text
    images = [png_of(src) for src in page.images]
    grid = Image.open(evaluated_run / "samples.png")
    assert [im.size for im in images] == [(800, 450), (800, 620), grid.size, grid.size]  # loss, FID + KID panels, 2 grids
    assert page.alts == ["training loss", "evaluation figures", "step 10", "final (step 20)"]

    # The evaluation table is metrics.jsonl's figures, the best row marked.
    rows = [json.loads(line) for line in (evaluated_run / "metrics.jsonl").read_text().splitlines()]
    table = page.tables["evaluations"]
    assert table[0] == ["step", "epoch", "FID", "KID", "samples", "NFE", "seconds", ""]
    assert table[1:] == [["5", "0.625", "812.5 ± 41.25", "0.25 ± 0.0125", "6", "3", "2.5", ""],
                         ["10", "1.25", "95.75 ± 12.5", "0.125 ± 0.0625", "6", "3", "3.5", "best fid"],
                         ["20", "2.5", "101", "0.0625 ± 0.03125", "6", "3", "4.5", ""]]
    assert text.count('<tr class="best">') == 1
    assert facts["evaluations"] == [{"step": r["step"], "epoch": r["epoch"], "samples": 6, "nfe": 3, "seconds": r["eval_seconds"],
                                     "figures": r["eval"]} for r in rows if "eval" in r]
    assert facts["best"] == {"metric": "fid", "value": 95.75, "step": 10}

    # The card: parameters counted from the EMA weights, the commit that trained it; timing from the log.
    weights, _ = load_weights(evaluated_run / "model.safetensors")
    params = sum(v.numel() for k, v in weights.items() if k.startswith("ema."))
    card = card_table(page)
    assert facts["model"]["parameters"] == params and card["parameters"] == f"{params:,}"
    commit = read_card(evaluated_run / "model.safetensors").extra.get("commit")  # None outside a git checkout
    assert facts["model"]["commit"] == commit and card["commit"] == (commit or card["commit"])
    assert card["commit"].startswith("not recorded") if commit is None else len(commit.split("+")[0]) >= 7
    assert card["classes"] == (", ".join(read_card(evaluated_run / "model.safetensors").class_names) or "none")
    assert facts["model"]["sde"]["kind"] in card["SDE"] and card["kind"] == "score"
    speeds = [r["it_per_s"] for r in rows if "it_per_s" in r]
    assert facts["training"]["it_per_s"] == pytest.approx(statistics.median(speeds), abs=1e-3)
    assert facts["training"]["seconds_per_evaluation"] == pytest.approx(3.5)
    assert facts["training"]["final_loss"] == [r for r in rows if "loss" in r][-1]["loss"]
    timing = card_table_of(page, "table1")
    assert timing["time per evaluation (mean)"] == "3.5 s" and timing["evaluations"] == "3"

    # Tuned grids: every entry, its known columns first, an unknown field kept, a long time grid shortened.
    grids = page.tables["grids"]
    assert grids[0] == ["sampler", "steps", "options", "objective", "cost", "date", "weights_sha256", "times", "note"]
    assert [r[:7] for r in grids[1:]] == [["ei", "8", "{}", "path", "0.125", "2025-01-02T10:00:00+00:00", SHA[:12] + "…"],
                                          ["heun", "4", "order 2", "path", "0.5", "2025-01-03T10:00:00+00:00", SHA[:12] + "…"]]
    assert grids[1][7] == "[1.0, 0.6, 0.3, ... 0.005, 0.001] (9 values)" and grids[2][7] == "[1.0, 0.5, 0.1, 0.001]"
    assert grids[2][8] == "extra field" and facts["grids"] == GRIDS["grids"]

    # The config, as saved.
    assert facts["config"] == json.loads((evaluated_run / "config.json").read_text())


def test_training_reuses_its_loss_plot_and_the_command_redraws_the_same(tiny_run: Path, tmp_path: Path) -> None:
    # The page written at the end of training embeds loss.png's own bytes (drawn once); `diffuse report` redraws
    # the curve from the log, pixel for pixel the same.
    loss = (tiny_run / "loss.png").read_bytes()
    trained = Page((tiny_run / "report.html").read_text(encoding="utf-8"))
    assert base64.b64decode(trained.images[0].split(",", 1)[1]) == loss
    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    res = invoke("report", run)
    assert res.exit_code == 0, res.stderr
    redrawn = png_of(Page((run / "report.html").read_text(encoding="utf-8")).images[0]).convert("RGBA")
    drawn = Image.open(io.BytesIO(loss)).convert("RGBA")
    assert redrawn.size == drawn.size and redrawn.tobytes() == drawn.tobytes()


def card_table_of(page: Page, name: str) -> dict[str, str]:
    return {row[0]: row[1] for row in page.tables[name] if len(row) == 2}


def test_the_reproduce_command_trains_the_same_weights(tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "runs" / "tiny"
    shutil.copytree(tiny_run, run)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "out": str(run.parent)}))
    res = invoke("report", run, "--json")
    assert res.exit_code == 0, res.stderr
    commands = json.loads(res.stdout)["commands"]
    args = shlex.split(commands["reproduce"])
    assert args[:2] == ["diffuse", "train"]
    res = invoke(*args[1:], "--json")
    assert res.exit_code == 0, res.stderr
    again = Path(json.loads(res.stdout)["run_dir"])
    assert again == run.parent / "tiny-again"
    a, _ = load_weights(run / "model.safetensors")
    b, _ = load_weights(again / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # The sample command names this run and the grids' sampler.
    sample = shlex.split(commands["sample"])
    assert sample[:4] == ["diffuse", "sample", "--model", str(run)]
    assert sample[sample.index("--sampler") + 1] == config["sampler"]["name"] and sample[sample.index("--steps") + 1] == str(config["sampler"]["steps"])
    # Training wrote the same page at its end: its loss is the log's.
    page = Page((again / "report.html").read_text(encoding="utf-8"))
    last = [json.loads(line) for line in (again / "metrics.jsonl").read_text().splitlines()][-1]
    assert card_table_of(page, "table1")["final loss (last record)"] == f"{last['loss']:.4g}"


def test_a_run_with_one_nan_record_and_no_evaluations_still_reports(tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "one"
    shutil.copytree(tiny_run, run)
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": float("nan"), "lr": 1e-4, "it_per_s": 2.0}) + "\n")
    (run / "samples.png").unlink()
    res = invoke("report", run)
    assert res.exit_code == 0, res.stderr
    assert res.stdout.strip() == f"wrote {run / 'report.html'} (1 steps, 0 sample grid(s))"
    text = (run / "report.html").read_text(encoding="utf-8")
    page = Page(text)
    assert [png_of(src).size for src in page.images] == [(800, 450)]  # the loss curve alone, drawn from one record
    assert "No evaluations in this run" in text and "No sample grids in this run yet" in text
    assert "No tuned grids (grids.json) in this run." in text
    assert "evaluations" not in page.tables  # no table without rows


def test_bad_input_exits_2_with_one_line(tiny_run: Path, tmp_path: Path) -> None:
    assert "does not exist" in one_error_line(invoke("report", tmp_path / "nowhere"))
    (tmp_path / "file").write_text("x")
    assert "is a file, not a folder" in one_error_line(invoke("report", tmp_path / "file"))
    assert "not a run directory of `diffuse train` (no config.json)" in one_error_line(invoke("report", tmp_path))
    run = tmp_path / "r"
    shutil.copytree(tiny_run, run)
    good = (run / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").unlink()
    assert "has no metrics.jsonl" in one_error_line(invoke("report", run))
    lines = good.splitlines()
    (run / "metrics.jsonl").write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n")
    assert "metrics.jsonl line 2 is not JSON" in one_error_line(invoke("report", run))
    (run / "metrics.jsonl").write_text("[1, 2]\n")
    assert "line 1 is not a record with a step" in one_error_line(invoke("report", run))
    (run / "metrics.jsonl").write_bytes(b"\xff\xfe\x00garbage")
    assert "is not a text file" in one_error_line(invoke("report", run))
    (run / "metrics.jsonl").write_text(good + '{"step": 21, "lo')  # a torn last line is what a crash leaves: skipped
    assert invoke("report", run).exit_code == 0
    (run / "config.json").write_text("{broken")
    assert "config.json is not valid JSON" in one_error_line(invoke("report", run))
    assert not (tmp_path / "report.html").exists()


def test_report_help_loads_nothing_heavy() -> None:
    code = ("import sys\nfrom diffusers_cli.cli import app\n"
            "try:\n    app(['report', '--help'], prog_name='diffuse')\nexcept SystemExit:\n    pass\n"
            "print('HEAVY', sorted(m for m in ('torch', 'matplotlib', 'PIL', 'numpy') if m in sys.modules))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "Write RUN/report.html" in res.stdout and res.stdout.rstrip().endswith("HEAVY []")


# ---- a stranger's run: what it holds comes out as text, and nothing from outside it is embedded ----------------

#: Strings a hostile run might carry; each would be an element or an attribute if the page did not escape it.
HOSTILE = ['<img src=x onerror="alert(1)">', "<script>alert(2)</script>", '"><svg onload=alert(3)>', "<b onmouseover=alert(4)>x"]
#: The tags and attributes the page is made of; anything else came from the run's data.
PAGE_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "nav", "a", "section", "table", "tr",
             "th", "td", "div", "figure", "img", "figcaption", "pre", "code"}
PAGE_ATTRS = {"lang", "charset", "http-equiv", "content", "href", "id", "class", "src", "alt"}


class Elements(HTMLParser):
    """Every element and attribute of a page, and its text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.metas: list[dict[str, str | None]] = []
        self.text: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += attrs
        if tag == "meta":
            self.metas.append(dict(attrs))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _card_with(run: Path, **fields: Any) -> None:
    tensors, card = load_weights(run / "model.safetensors")[0], read_card(run / "model.safetensors")
    save_model(run / "model.safetensors", tensors, type(card)(**{**card.__dict__, **fields}))


def test_hostile_names_values_and_metric_names_come_out_as_text(tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / HOSTILE[0]  # the run's own name
    shutil.copytree(tiny_run, run)
    _card_with(run, class_names=tuple(HOSTILE), dataset=HOSTILE[1], extra={"commit": HOSTILE[2], "init_from": HOSTILE[3]})
    config = json.loads((run / "config.json").read_text())
    config.update(init=HOSTILE[1], eval={**config["eval"], "reference": HOSTILE[2]})
    (run / "config.json").write_text(json.dumps(config))
    evaluation = {"step": 20, "eval": {HOSTILE[3]: {"mean": 1.0, HOSTILE[0]: HOSTILE[1]}}, "eval_samples": HOSTILE[2]}
    with (run / "metrics.jsonl").open("a") as f:
        f.write(json.dumps(evaluation) + "\n")
    (run / "grids.json").write_text(json.dumps({"grids": [{HOSTILE[0]: HOSTILE[1], "sampler": HOSTILE[2], "times": [1.0]}]}))
    res = invoke("report", run)
    assert res.exit_code == 0, res.stderr
    page = Elements((run / "report.html").read_text(encoding="utf-8"))
    assert set(page.tags) <= PAGE_TAGS and {name for name, _ in page.attrs} <= PAGE_ATTRS
    text = "".join(page.text)
    for hostile in HOSTILE:  # each shown, as the text it is
        assert hostile in text or hostile.upper() in text, hostile
    assert f"<title>{html_escape(HOSTILE[0])}: diffusers-cli run report</title>" in (run / "report.html").read_text()


def html_escape(text: str) -> str:
    import html

    return html.escape(text, quote=True)


def test_the_page_carries_a_content_security_policy_that_allows_no_script_and_no_network(tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "r"
    shutil.copytree(tiny_run, run)
    assert invoke("report", run).exit_code == 0
    text = (run / "report.html").read_text(encoding="utf-8")
    page = Elements(text)
    csp = [m["content"] for m in page.metas if (m.get("http-equiv") or "").lower() == "content-security-policy"]
    assert csp == ["default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"]
    # Before anything the policy must govern: the charset, then the policy, then the rest of the head.
    assert text.index("Content-Security-Policy") < text.index("<title>") < text.index("<style>")


def _png(path: Path, size: tuple[int, int], colour: tuple[int, int, int], **save: Any) -> bytes:
    Image.new("RGB", size, colour).save(path, format=save.pop("format", "PNG"), **save)
    return path.read_bytes()


def _embedded(page_text: str) -> list[Image.Image]:
    return [png_of(src) for src in Page(page_text).images]


def test_a_sample_grid_or_plot_linked_outside_the_run_is_left_out_and_said_so(tiny_run: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    secret_png = _png(outside / "secret.png", (13, 7), (1, 2, 3))  # a real PNG: only the link's target gives it away
    secret_text = b"-----BEGIN OPENSSH PRIVATE KEY----- not for sharing\n"
    (outside / "id_rsa").write_bytes(secret_text)
    run = tmp_path / "evil"
    shutil.copytree(tiny_run, run)
    (run / "samples").mkdir(exist_ok=True)
    (run / "samples" / "step_0000002.png").symlink_to(outside / "secret.png")
    (run / "samples" / "step_0000004.png").symlink_to(outside / "id_rsa")
    (run / "samples.png").unlink()
    (run / "samples.png").symlink_to(outside / "secret.png")
    (run / "loss.png").unlink()
    (run / "loss.png").symlink_to(outside / "id_rsa")
    res = invoke("report", run)
    assert res.exit_code == 0, res.stderr
    assert res.stdout.strip() == f"wrote {run / 'report.html'} (20 steps, 3 sample grid(s), 3 file(s) left out)"
    assert res.stderr.splitlines() == [  # one line per file, naming it and where it leads
        f"diffuse: warning: {run / name} links to {outside / target}, outside the run {run}; a run's files must "
        "lie inside it (replace the link with the file it names); left out of the report"
        for name, target in (("samples/step_0000002.png", "secret.png"), ("samples/step_0000004.png", "id_rsa"),
                             ("samples.png", "secret.png"))]
    text = (run / "report.html").read_text(encoding="utf-8")
    for secret in (secret_png, secret_text):
        assert base64.b64encode(secret).decode() not in text and secret.decode("latin-1") not in text
    assert [im.size for im in _embedded(text)] == [(800, 450)]  # the loss curve, drawn from the log; no grid at all
    notes = [n for n in Elements(text).text if "was left out" in n]
    assert notes == ["samples/step_0000002.png was left out: it links outside the run.",
                     "samples/step_0000004.png was left out: it links outside the run.",
                     "samples.png was left out: it links outside the run."]
    assert str(outside) not in text  # the page names no target of a link


def test_a_file_that_is_not_a_png_of_the_run_is_not_embedded(tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "r"
    shutil.copytree(tiny_run, run)
    samples = run / "samples"
    samples.mkdir(exist_ok=True)
    jpeg = _png(samples / "step_0000001.png", (9, 9), (200, 10, 10), format="JPEG")  # an image, but not a PNG
    (samples / "step_0000002.png").write_bytes(b"<script>alert(1)</script>")
    whole = _png(tmp_path / "whole.png", (11, 5), (10, 200, 10))
    (samples / "step_0000003.png").write_bytes(whole[: len(whole) // 2])  # truncated
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Comment", "MARKER-IN-A-CHUNK")
    chunked = _png(samples / "step_0000004.png", (6, 6), (5, 5, 250), pnginfo=info)
    assert b"MARKER-IN-A-CHUNK" in chunked
    res = invoke("report", run)
    assert res.exit_code == 0, res.stderr
    text = (run / "report.html").read_text(encoding="utf-8")
    images = _embedded(text)
    grid = Image.open(run / "samples.png")
    # The loss curve, the PNG with a chunk (its pixels alone) and the final grid; nothing of the other three.
    assert [im.size for im in images] == [(800, 450), (6, 6), grid.size]
    assert images[1].info == {} and images[1].convert("RGB").getpixel((3, 3)) == (5, 5, 250)
    assert images[2].tobytes() == grid.tobytes()
    assert base64.b64encode(jpeg).decode() not in text and "alert(1)" not in text
    assert "MARKER-IN-A-CHUNK" not in text and all(b"MARKER" not in base64.b64decode(s.split(",", 1)[1]) for s in Page(text).images)
    notes = [n for n in Elements(text).text if "was left out" in n]
    assert notes == ["samples/step_0000001.png was left out: it is not a PNG file.",
                     "samples/step_0000002.png was left out: it is not a PNG file.",
                     "samples/step_0000003.png was left out: it is not a readable image (truncated, corrupt or over the pixel limit)."]
    assert len(res.stderr.splitlines()) == 3 and "step_0000003.png is not a readable image (truncated or corrupt)" in res.stderr


def test_a_grids_file_or_snapshot_table_linked_outside_the_run_is_left_out_and_said_so(tiny_run: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    # Files of the right shape (a grids file, a snapshot table) whose values are secrets: only the link gives them away.
    (outside / "g.json").write_text(json.dumps({"grids": [{"sampler": "SECRET-GRID", "steps": 3, "times": [1, 0.5, 0]}]}))
    (outside / "s.json").write_text(json.dumps({"snapshots": [{"step": 7, "SECRET-METRIC": {"mean": 1.0}}]}))
    run = tmp_path / "evil"
    shutil.copytree(tiny_run, run)
    for name, target in (("grids.json", "g.json"), ("snapshot_scores.json", "s.json")):
        (run / name).unlink(missing_ok=True)
        (run / name).symlink_to(outside / target)
    res = invoke("report", run)
    assert res.exit_code == 0, res.stderr
    assert res.stdout.strip().endswith("2 file(s) left out)")
    assert res.stderr.splitlines() == [
        f"diffuse: warning: {run / name} links to {outside / target}, outside the run {run}; a run's files must "
        "lie inside it (replace the link with the file it names); left out of the report"
        for name, target in (("grids.json", "g.json"), ("snapshot_scores.json", "s.json"))]
    text = (run / "report.html").read_text(encoding="utf-8")
    assert "SECRET" not in text and str(outside) not in text  # neither the values nor where the links lead
    notes = [n for n in Elements(text).text if "was left out" in n or "was not read" in n]
    assert notes == ["grids.json was left out: it links outside the run.",
                     "snapshot_scores.json was left out: it links outside the run.",
                     "grids.json was not read: it links outside the run."]


def test_a_sample_grid_over_the_pixel_limit_is_left_out(tiny_run: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "r"
    shutil.copytree(tiny_run, run)
    (run / "samples").mkdir(exist_ok=True)
    _png(run / "samples" / "step_0000001.png", (30, 20), (9, 9, 9))  # 600 pixels
    monkeypatch.setenv("DIFFUSE_MAX_PIXELS", "500")
    res = invoke("report", run)
    assert res.exit_code == 0, res.stderr
    text = (run / "report.html").read_text(encoding="utf-8")
    assert (30, 20) not in [im.size for im in _embedded(text)]
    assert "samples/step_0000001.png was left out: it is not a readable image (truncated, corrupt or over the pixel limit)." \
        in Elements(text).text
    assert "step_0000001.png" in res.stderr and "600 pixels" in res.stderr and len(res.stderr.splitlines()) >= 1


def test_the_sample_command_of_the_report_takes_the_configs_own_defaults(tiny_run: Path, tmp_path: Path) -> None:
    from diffusers_cli.config.schema import TrainConfig

    run = tmp_path / "r"
    shutil.copytree(tiny_run, run)
    config = json.loads((run / "config.json").read_text())
    del config["sampler"], config["seed"]  # an older or hand-written config: the defaults are TrainConfig's
    (run / "config.json").write_text(json.dumps(config))
    res = invoke("report", run, "--json")
    assert res.exit_code == 0, res.stderr
    sample = shlex.split(json.loads(res.stdout)["commands"]["sample"])
    preview = TrainConfig().sampler
    assert (preview.name, preview.steps) == ("ei", 30)  # the preview grid's sampler, not the evaluation's (ei, 20)
    assert sample[sample.index("--sampler") + 1] == "ei" and sample[sample.index("--steps") + 1] == "30"
    assert sample[sample.index("--seed") + 1] == "0"
    config["steps"] = "many"
    (run / "config.json").write_text(json.dumps(config))
    assert one_error_line(invoke("report", run)) == (
        f"diffuse: error: {run / 'config.json'} is not a training config (steps: Input should be a valid integer, unable to "
        "parse string as an integer); the run is damaged or from another diffusers-cli (restore the file)")
