"""Tuned time grids: explicit times in the engine, the tuner against exact scores, `diffuse tune` and `--grid tuned`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from diffusers_cli.cli import app
from diffusers_cli.config.defaults import DEFAULT_GUIDANCE
from diffusers_cli.engine.analytic import GaussianMixture, gaussian
from diffusers_cli.engine.grid_objectives import DEFAULT_OBJECTIVE, OBJECTIVES, Context, held_out
from diffusers_cli.engine.grid_tuning import evaluation_budget, tune
from diffusers_cli.engine.grid_tuning import tune_grid
from diffusers_cli.engine.grids import check_times, time_grid
from diffusers_cli.engine.options import OptionError
from diffusers_cli.engine.samplers import sample
from diffusers_cli.engine.schedules import LinearSchedule
from diffusers_cli.engine.sde import VPSDE

from conftest import engine_draw, grid_pixels, png_pixels

runner = CliRunner()
SDE = VPSDE(LinearSchedule(0.1, 20.0))
SHAPE = (1, 2, 2)


def _gaussian() -> GaussianMixture:
    # Variances over two decades, as in benchmarks/tuned_grids.py: no single fixed grid suits every scale.
    return gaussian(torch.linspace(-1.0, 1.0, 4, dtype=torch.float64).reshape(SHAPE),
                    torch.logspace(-2.0, 0.0, 4, dtype=torch.float64).reshape(SHAPE))


def _exact_transport(dist: GaussianMixture, x_T: torch.Tensor) -> torch.Tensor:
    """The probability-flow map of a Gaussian from T to 0, in closed form (then no reference solve is involved)."""
    mean, var = dist.means[0], dist.variances[0]
    m, s = SDE.marginal(torch.tensor(SDE.T, dtype=torch.float64))
    return mean + (x_T.double() - m * mean) * (var / (m * m * var + s * s)).sqrt()


def test_explicit_times_are_the_named_grid_bitwise_and_are_checked() -> None:
    score_fn = _gaussian().score_fn(SDE)
    ts = time_grid(SDE, 5, "logsnr")
    a = sample(SDE, score_fn, (8, *SHAPE), "ipndm", 5, torch.Generator().manual_seed(0))
    b = sample(SDE, score_fn, (8, *SHAPE), "ipndm", 5, torch.Generator().manual_seed(0), grid=ts.clone())
    assert torch.equal(a, b)
    with pytest.raises(OptionError, match="6 times"):
        check_times(SDE, ts[:-1], 5)
    with pytest.raises(OptionError, match="decrease strictly"):
        check_times(SDE, ts.flip(0), 5)
    with pytest.raises(OptionError, match=r"lie in \(0, 1"):
        check_times(SDE, torch.cat([ts[:1] * 2, ts[1:]]), 5)
    with pytest.raises(OptionError, match="do not apply to explicit times"):
        sample(SDE, score_fn, (8, *SHAPE), "heun", 5, grid=time_grid(SDE, 5, "karras"), rho=3.0)


def test_tuned_grid_beats_the_default_on_fresh_noise_and_is_deterministic() -> None:
    dist = _gaussian()
    score_fn = dist.score_fn(SDE)
    steps = 4
    res = tune(SDE, score_fn, (256, *SHAPE), "ipndm", steps, generator=torch.Generator().manual_seed(1), lattice=40,
               objective="path")
    again = tune(SDE, score_fn, (256, *SHAPE), "ipndm", steps, generator=torch.Generator().manual_seed(1), lattice=40,
                 objective="path")
    assert torch.equal(res.times, again.times)
    assert res.objective == "path" and res.error <= res.default_error
    # The winner also beat the default on 64 held-out draws, by more than the gap's standard error.
    held = res.held_out
    assert res.kept and held is not None and held.batch == 64 and held.default - held.tuned > held.se > 0
    assert res.evaluations <= evaluation_budget(steps, 40)
    default = time_grid(SDE, steps, "logsnr")
    assert res.times.shape == (steps + 1,) and float(res.times[0]) == float(default[0]) and float(res.times[-1]) == float(default[-1])
    assert bool((res.times[1:] < res.times[:-1]).all())
    # On 4096 fresh draws, against the exact transport: the tuned grid's RMS error is at least 2x lower.
    x_T = SDE.prior_sample((4096, *SHAPE), torch.Generator().manual_seed(7), dtype=torch.float64)
    exact = _exact_transport(dist, x_T)

    def rms(grid: torch.Tensor | None) -> float:
        x = sample(SDE, score_fn, x_T.shape, "ipndm", steps, None, grid=grid, x_init=x_T, dtype=torch.float64)
        return float((x - exact).pow(2).mean().sqrt())

    assert rms(res.times) * 2 < rms(None)
    assert torch.equal(tune_grid(SDE, score_fn, (256, *SHAPE), "ipndm", steps, generator=torch.Generator().manual_seed(1),
                                 lattice=40, objective="path"), res.times)


def test_stochastic_samplers_are_tuned_on_moments_and_bad_requests_are_refused() -> None:
    score_fn = _gaussian().score_fn(SDE)
    gen = torch.Generator().manual_seed(0)
    res = tune(SDE, score_fn, (128, *SHAPE), "ddim", 3, generator=gen, eta=1.0, lattice=0, rounds=1, objective="moments")
    assert res.objective == "moments" and res.error <= res.default_error
    # With no objective named, the default; a per-sample default would fall back to moments for a stochastic sampler.
    auto = tune(SDE, score_fn, (64, *SHAPE), "ddim", 2, generator=gen, eta=1.0, lattice=0, rounds=0, holdout=0)
    assert auto.objective == (DEFAULT_OBJECTIVE if not OBJECTIVES[DEFAULT_OBJECTIVE].per_sample else "moments")
    with pytest.raises(OptionError, match="compares image by image, which needs a deterministic sampler"):
        tune(SDE, score_fn, (16, *SHAPE), "em", 3, objective="path", lattice=0, rounds=0)
    with pytest.raises(OptionError, match="no grid to tune"):
        tune(SDE, score_fn, (16, *SHAPE), "ode", 3)
    with pytest.raises(OptionError, match="at least 1"):
        tune(SDE, score_fn, (16, *SHAPE), "ipndm", 0)
    with pytest.raises(OptionError, match="unknown sampler 'nope'; use one of em"):
        tune(SDE, score_fn, (16, *SHAPE), "nope", 3)
    # One step has no interior time: the default grid comes back, found at the cost of the first two runs.
    one = tune(SDE, score_fn, (16, *SHAPE), "ipndm", 1)
    assert torch.equal(one.times, time_grid(SDE, 1, "logsnr")) and one.evaluations == 2 + 3


def _tune(run: Path, *args: str) -> object:
    return runner.invoke(app, ["tune", str(run), "--sampler", "ipndm", "--batch-size", "4",
                               "--set", "lattice=12", "--set", "rounds=1", *args])


def test_cli_tune_writes_the_run_grid_and_sample_uses_it(tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    res = _tune(run, "--steps", "3", "--steps", "4", "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    data = json.loads((run / "grids.json").read_text())
    assert [e["steps"] for e in data["grids"]] == [3, 4] == [e["steps"] for e in summary["grids"]]
    entry = data["grids"][1]
    assert entry["error"] <= entry["default_error"] and len(entry["times"]) == 5
    assert entry["cost"]["evaluations"] <= evaluation_budget(4, 12, 1) and entry["cost"]["batch"] == 4
    assert not (run / "lock.json").exists()  # the run lock was held and released

    out = tmp_path / "tuned.png"
    res = runner.invoke(app, ["sample", "--model", str(run), "--sampler", "ipndm", "--steps", "4", "--grid", "tuned",
                              "-n", "4", "--out", str(out)])
    assert res.exit_code == 0, res.output
    from diffusers_cli.models import load_score_model

    model, card = load_score_model(run)
    times = torch.tensor(entry["times"], dtype=torch.float64)
    with torch.no_grad():
        want = engine_draw(model.sde, lambda x, t: model.score(x, t), card.image_shape, 4, "ipndm", 4, grid=times)
        default = engine_draw(model.sde, lambda x, t: model.score(x, t), card.image_shape, 4, "ipndm", 4)
    assert (png_pixels(out) == grid_pixels(want)).all()
    assert not (grid_pixels(default) == grid_pixels(want)).all()

    # --objective moments: the entry for (ipndm, 4) is replaced by the engine's moments-tuned grid, so named.
    res = _tune(run, "--steps", "4", "--objective", "moments", "--set", "lattice=0")
    assert res.exit_code == 0, res.output
    moments = [e for e in json.loads((run / "grids.json").read_text())["grids"] if e["steps"] == 4]
    from diffusers_cli.config.schema import SamplerConfig
    from diffusers_cli.parts.evaluation import tune_for

    engine = tune_for(model, card, SamplerConfig(name="ipndm", steps=4), torch.device("cpu"), 4, 0, objective="moments",
                      lattice=0, rounds=1)
    assert len(moments) == 1 and moments[0]["objective"] == "moments" == engine.objective
    # The times are the engine's exactly; the error only to 5 %: the job's model scores a few ulps apart (another load).
    assert moments[0]["times"] == engine.times.tolist() and moments[0]["error"] == pytest.approx(engine.error, rel=0.05)


def test_cli_tuned_grid_errors(tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    res = runner.invoke(app, ["sample", "--model", str(run), "--sampler", "ipndm", "--steps", "4", "--grid", "tuned",
                              "-n", "2", "--out", str(tmp_path / "x.png")])
    assert res.exit_code == 2
    assert "no tuned grid for ipndm at 4 steps" in res.output and f"diffuse tune {run} --sampler ipndm --steps 4" in res.output
    assert not (tmp_path / "x.png").exists()
    for args, words in ((["--steps", "0"], "steps"), (["--sampler", "nope"], "unknown sampler 'nope'"),
                        (["--objective", "fid"], f"objective: must be one of {', '.join(OBJECTIVES)}, got 'fid'"),
                        (["--sampler", "em", "--objective", "path"], "'path' objective compares image by image")):
        res = runner.invoke(app, ["tune", str(run), *args])
        assert res.exit_code == 2 and words in res.output and "Traceback" not in res.output, res.output
    assert not (run / "grids.json").exists()
    # A grids file of another model: the weights differ, so the grid is refused, naming both hashes.
    assert _tune(run, "--steps", "3").exit_code == 0
    other = tmp_path / "other"
    shutil.copytree(tiny_run, other)
    from safetensors.torch import load_file, save_file

    weights = other / "model.safetensors"
    tensors = load_file(weights)
    first = sorted(tensors)[0]
    tensors[first] = tensors[first] + 1e-3
    from diffusers_cli.checkpoints.weights import read_card

    save_file(tensors, weights, metadata=_metadata(weights))
    assert read_card(weights).kind == "score"
    res = runner.invoke(app, ["sample", "--model", str(other), "--grids", str(run / "grids.json"), "--sampler", "ipndm",
                              "--steps", "3", "--grid", "tuned", "-n", "2", "--out", str(tmp_path / "y.png")])
    assert res.exit_code == 2 and "tuned for another model" in res.output, res.output


def _metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return dict(f.metadata() or {})


def test_dc_tune_returns_what_it_wrote_and_dc_sample_uses_it(tiny_run: Path, tmp_path: Path) -> None:
    import diffusers_cli as dc

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    entries = dc.tune(str(run), steps=3, batch_size=4, lattice=12, rounds=1)
    assert entries == json.loads((run / "grids.json").read_text())["grids"]
    tuned = dc.sample(str(run), 2, sampler="ipndm", steps=3, grid="tuned", seed=1)
    from diffusers_cli.models import load_score_model

    model, card = load_score_model(run)
    with torch.no_grad():
        want = engine_draw(model.sde, lambda x, t: model.score(x, t), card.image_shape, 2, "ipndm", 3, seed=1,
                           grid=torch.tensor(entries[0]["times"], dtype=torch.float64))
    assert torch.equal(tuned, want.clamp(-1, 1))


def test_every_objective_is_zero_on_the_reference_and_grows_with_the_error() -> None:
    """Each objective is a distance: 0 for the reference itself, larger for a worse grid (1 step vs 8) of the same noise."""
    dist = _gaussian()
    score_fn = dist.score_fn(SDE)
    x_T = SDE.prior_sample((64, *SHAPE), torch.Generator().manual_seed(3), dtype=torch.float64)
    exact = _exact_transport(dist, x_T)
    rough = sample(SDE, score_fn, x_T.shape, "ipndm", 1, None, x_init=x_T, dtype=torch.float64)
    fine = sample(SDE, score_fn, x_T.shape, "ipndm", 8, None, x_init=x_T, dtype=torch.float64)
    ctx = Context(SDE, score_fn)
    for name, objective in OBJECTIVES.items():
        assert objective(exact, exact, ctx) == pytest.approx(0.0, abs=1e-12), name
        assert objective(rough, exact, ctx) > 2 * objective(fine, exact, ctx) > 0, name


def test_held_out_keeps_only_a_gap_larger_than_its_standard_error() -> None:
    gen = torch.Generator().manual_seed(0)
    ref = torch.randn(200, 1, 4, 4, generator=gen, dtype=torch.float64)
    noise = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    ctx = Context(SDE, _gaussian().score_fn(SDE))
    path = OBJECTIVES["path"]
    better = held_out(path, ref + 0.1 * noise, ref + 0.2 * noise, ref, ctx)
    # Per-sample RMS: 0.1 against 0.2 of unit noise; the bootstrap SE of the gap is near 0.1 / sqrt(2 * 200 * 16).
    assert better.tuned == pytest.approx(0.1, rel=0.05) and better.default == pytest.approx(0.2, rel=0.05)
    assert better.kept and 0 < better.se < 0.01
    same = held_out(path, ref + 0.2 * noise, ref + 0.2 * noise, ref, ctx)
    assert not same.kept and same.se == 0.0 and same.tuned == same.default
    # Two draws of the same noise level on 5 images: whichever comes out ahead, it is not ahead beyond its noise.
    for seed in range(5):
        other = torch.randn(ref.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        close = held_out(path, ref[:5] + 0.2 * other[:5], ref[:5] + 0.2 * noise[:5], ref[:5], ctx)
        assert not close.kept and close.default - close.tuned < close.se, seed


def test_a_search_that_overfits_its_batch_returns_the_default_grid() -> None:
    """Tuned on 1 draw of a two-mode mixture, the winner loses on 256 held-out draws: the default comes back, said so."""
    mix = GaussianMixture(torch.tensor([-1.0, 1.5], dtype=torch.float64).reshape(2, 1, 1, 1),
                          torch.tensor([0.05, 0.3], dtype=torch.float64).reshape(2, 1, 1, 1),
                          torch.tensor([0.3, 0.7], dtype=torch.float64))
    # Seed 7's one draw: most seeds' one-draw grids do generalise (and are kept); this one's does not.
    res = tune(SDE, mix.score_fn(SDE), (1, 1, 1, 1), "ipndm", 3, generator=torch.Generator().manual_seed(7),
               objective="path", holdout=256, lattice=40)
    assert res.error < 0.05 * res.default_error  # on its own draw the search found a far better grid ...
    held = res.held_out
    assert held is not None and held.tuned > held.default + held.se and not res.kept  # ... that loses on other noise,
    assert torch.equal(res.times, time_grid(SDE, 3, "logsnr"))  # so the default grid is what comes back


def test_a_kept_grid_is_used_when_no_grid_is_asked_and_the_output_says_so(tiny_run: Path, tmp_path: Path) -> None:
    from diffusers_cli.models import load_score_model
    from diffusers_cli.parts.tuned_grids import make_entry, weights_hash, write_entry

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    model, card = load_score_model(run)
    times = time_grid(model.sde, 4, "quadratic")  # any valid grid other than ipndm's default (logsnr)
    entry = make_entry("ipndm", 4, {}, times, weights_hash(model.net), objective="path", kept=True)
    write_entry(run / "grids.json", entry)
    with torch.no_grad():
        want = engine_draw(model.sde, lambda x, t: model.score(x, t), card.image_shape, 4, "ipndm", 4, grid=times)
        default = engine_draw(model.sde, lambda x, t: model.score(x, t), card.image_shape, 4, "ipndm", 4)

    def draw(*args: str) -> tuple[dict, Path]:
        out = tmp_path / f"{len(list(tmp_path.glob('*.png')))}.png"
        res = runner.invoke(app, ["sample", "--model", str(run), "--sampler", "ipndm", "--steps", "4", "-n", "4",
                                  "--out", str(out), "--json", *args])
        assert res.exit_code == 0, res.output
        return json.loads(res.stdout.strip().splitlines()[-1]), out

    summary, out = draw()
    assert summary["grid"] == "tuned" and (png_pixels(out) == grid_pixels(want)).all()
    summary, out = draw("--grid", "logsnr")  # a named grid always wins
    assert summary["grid"] == "logsnr" and (png_pixels(out) == grid_pixels(default)).all()
    human = runner.invoke(app, ["sample", "--model", str(run), "--sampler", "ipndm", "--steps", "4", "-n", "2",
                                "--out", str(tmp_path / "h.png")])
    assert human.exit_code == 0 and "ipndm, 4 steps, tuned grid," in human.output, human.output
    # A grid tuned at a classifier-free scale is another score field's: not used by default on this one.
    write_entry(run / "grids.json", {**entry, "guidance": 2.0})
    summary, out = draw()
    assert summary["grid"] == "logsnr" and (png_pixels(out) == grid_pixels(default)).all()
    # A grid the held-out check (or the judge) did not keep is reached by --grid tuned only.
    write_entry(run / "grids.json", {**entry, "kept": False})
    summary, out = draw()
    assert summary["grid"] == "logsnr" and (png_pixels(out) == grid_pixels(default)).all()
    summary, out = draw("--grid", "tuned")
    assert summary["grid"] == "tuned" and (png_pixels(out) == grid_pixels(want)).all()


def test_shipped_grids_fit_their_models_and_a_kept_one_never_lost_to_the_judge(tmp_path: Path) -> None:
    """The package's grids.json: each entry is for a ready-made model's weights as shipped; a kept one passed all checks."""
    from diffusers_cli.models import load_score_model
    from diffusers_cli.parts.judging import lost, wins
    from diffusers_cli.models.builtin import weights_dir
    from diffusers_cli.parts.tuned_grids import read_entries, weights_hash

    entries = read_entries(weights_dir() / "grids.json")
    assert entries, "the ready-made models ship tuned grids (examples/builtin_models.py grids)"
    hashes = {m: weights_hash(load_score_model(m)[0].net) for m in {e["model"] for e in entries}}
    for e in entries:
        assert e["weights_sha256"] == hashes[e["model"]] and e["sampler"] == "ei", e["model"]
        held = e["held_out"]
        if e["kept"]:
            j = e["judged"]
            assert held["default"] - held["tuned"] > held["se"]
            assert wins(e["judge_gate"]) and e["judge_gate"]["n"] == 256  # a clear win on noise of its own, ...
            assert not lost(j)  # ... and no loss on the evaluation's noise:
            assert j["default_recognised"] - j["recognised"] <= j["recognised_gap_se"]
            assert j["judge_fd"] - j["default_judge_fd"] <= j["judge_fd_gap_se"]
    kept = sorted(e["steps"] for e in entries if e["kept"] and e["model"] == "builtin:shapes")
    assert kept, "builtin:shapes has at least one grid that beat the default"
    # The command uses the kept grid when given only the steps, and the card's default grid elsewhere.
    # The shipped models are class-conditional; their grids are tuned at the default guidance scale and used only there.
    assert {e["guidance"] for e in entries} == {DEFAULT_GUIDANCE}
    for steps, grid, more in ((kept[0], "tuned", []), (max(e["steps"] for e in entries) + 1, "logsnr", []),
                              (kept[0], "logsnr", ["--guidance", str(DEFAULT_GUIDANCE + 1)]),
                              (kept[0], "logsnr", ["--no-denoise"]), (kept[0], "logsnr", ["--eps", "0.002"])):
        res = runner.invoke(app, ["sample", "--model", "builtin:shapes", "--steps", str(steps), "-n", "2",
                                  "--out", str(tmp_path / f"{steps}.png"), "--json", *more])
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout.strip().splitlines()[-1])["grid"] == grid


def test_the_judges_rules_keep_a_clear_win_and_call_a_loss_beyond_its_error() -> None:
    from diffusers_cli.parts.judging import lost, wins

    def gap(share: float, d_share: float, share_se: float, fd: float, d_fd: float, fd_se: float) -> dict:
        return {"recognised": share, "default_recognised": d_share, "recognised_gap_se": share_se,
                "judge_fd": fd, "default_judge_fd": d_fd, "judge_fd_gap_se": fd_se}

    fd_win = gap(0.91, 0.90, 0.02, 34.0, 57.7, 3.5)
    assert wins(fd_win) and not lost(fd_win)
    # The FD won by 5 SE and one image fewer was recognised, inside the share's SE: a win, nothing lost.
    assert wins(gap(0.98, 0.984, 0.005, 30.0, 40.0, 2.0)) and not lost(gap(0.98, 0.984, 0.005, 30.0, 40.0, 2.0))
    assert wins(gap(0.95, 0.90, 0.02, 41.9, 40.0, 2.0))  # the share by 2.5 SE, the FD worse inside its SE
    assert not wins(gap(0.95, 0.90, 0.02, 42.1, 40.0, 2.0))  # ... but not with the FD worse beyond it
    assert not wins(gap(0.90, 0.90, 0.02, 38.5, 40.0, 2.0))  # an FD gap inside its SE is no win
    assert not wins(gap(0.86, 0.90, 0.02, 30.0, 40.0, 2.0))  # a clear FD win with the share lost beyond its SE
    assert lost(gap(0.86, 0.90, 0.02, 30.0, 40.0, 2.0)) and lost(gap(0.90, 0.90, 0.02, 42.5, 40.0, 2.0))


def test_the_judge_has_the_last_word_on_a_grid_the_held_out_check_kept() -> None:
    """A winner that passes the held-out check is kept or dropped as the judge says, with its figures; a grid the
    held-out check drops never reaches the judge."""
    dist = _gaussian()
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def judge(verdict: bool):
        def check(tuned: torch.Tensor, default: torch.Tensor) -> tuple[bool, dict]:
            calls.append((tuned, default))
            return verdict, {"n": 7}
        return check

    kw = dict(objective="path", holdout=64, lattice=12, rounds=1)
    free = tune(SDE, dist.score_fn(SDE), (16, *SHAPE), "ipndm", 3, generator=torch.Generator().manual_seed(0), **kw)
    assert free.kept and free.judged is None  # on exact scores the tuned grid wins on held-out noise
    yes = tune(SDE, dist.score_fn(SDE), (16, *SHAPE), "ipndm", 3, generator=torch.Generator().manual_seed(0),
               judge=judge(True), **kw)
    assert yes.kept and yes.judged == {"n": 7} and torch.equal(yes.times, free.times)
    assert torch.equal(calls[0][0], free.times) and torch.equal(calls[0][1], time_grid(SDE, 3, "logsnr"))
    no = tune(SDE, dist.score_fn(SDE), (16, *SHAPE), "ipndm", 3, generator=torch.Generator().manual_seed(0),
              judge=judge(False), **kw)
    assert not no.kept and no.judged == {"n": 7} and torch.equal(no.times, time_grid(SDE, 3, "logsnr"))
    mix = GaussianMixture(torch.tensor([-1.0, 1.5], dtype=torch.float64).reshape(2, 1, 1, 1),
                          torch.tensor([0.05, 0.3], dtype=torch.float64).reshape(2, 1, 1, 1),
                          torch.tensor([0.3, 0.7], dtype=torch.float64))
    before = len(calls)
    over = tune(SDE, mix.score_fn(SDE), (1, 1, 1, 1), "ipndm", 3, generator=torch.Generator().manual_seed(7),
                objective="path", holdout=256, lattice=40, judge=judge(True))
    assert not over.kept and over.judged is None and len(calls) == before  # dropped on held-out noise, never judged


def _judge_card(path: Path, channels: int, size: int, classes: int) -> Path:
    from diffusers_cli.checkpoints.card import ModelCard
    from diffusers_cli.checkpoints.weights import save_model
    from diffusers_cli.config.sde import VPConfig
    from diffusers_cli.engine.networks.judge import Judge

    torch.manual_seed(0)
    net = Judge(in_channels=channels, num_classes=classes + 1, width=8)
    card = ModelCard(kind="judge", arch="judge", network=dict(net.config), sde=VPConfig(), image_shape=(channels, size, size),
                     class_names=(*(str(k) for k in range(classes)), "none"), dataset="shapes", step=1, ema_updates=1)
    save_model(path, {f"ema.{k}": v for k, v in net.state_dict().items()}, card)
    return path


def test_cli_tune_with_a_judge_records_its_verdict_and_refuses_a_judge_of_other_images(tiny_run: Path, tmp_path: Path) -> None:
    from diffusers_cli.config.schema import SamplerConfig
    from diffusers_cli.models import load_score_model
    from diffusers_cli.parts.judging import CHECK_SEED, grid_check, load_judge, real_images, wins

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    judge_file = _judge_card(tmp_path / "judge.safetensors", 3, 8, 5)
    # No held-out check, so the search's winner goes straight to the judge (a random-weight judge: its FD still differs).
    res = _tune(run, "--steps", "3", "--judge", str(judge_file), "--judge-batch", "16", "--set", "holdout=0", "--json")
    assert res.exit_code == 0, res.output
    entry = json.loads((run / "grids.json").read_text())["grids"][0]
    judged = entry["judge_gate"]
    assert judged["n"] == 16 and judged["seed"] == CHECK_SEED and judged["judge"] == str(judge_file)
    assert entry["kept"] == wins(judged)
    # The figures are parts.judging's on the same noise: draw both grids again and judge them here.
    model, card = load_score_model(run)
    net, _ = load_judge(judge_file)
    real = real_images("shapes", 8, 3, 16)
    default = time_grid(model.sde, 3, "logsnr")
    times = torch.tensor(entry["times"], dtype=torch.float64)
    if entry["kept"]:
        kept, again = grid_check(model, card, SamplerConfig(name="ipndm", steps=3), net, real, 16, 0, DEFAULT_GUIDANCE)(times, default)
        assert kept and again["judge_fd"] == pytest.approx(judged["judge_fd"], rel=1e-3)
        assert again["default_judge_fd"] == pytest.approx(judged["default_judge_fd"], rel=1e-3)
    # A judge of 28x28 digits cannot judge 8x8 shapes: one line, exit 2, nothing written.
    before = (run / "grids.json").read_text()
    res = _tune(run, "--steps", "4", "--judge", "builtin:mnist-judge")
    assert res.exit_code == 2 and "judges images [1, 28, 28], the model makes [3, 8, 8]" in res.output
    assert len(res.output.strip().splitlines()) == 1 and (run / "grids.json").read_text() == before
