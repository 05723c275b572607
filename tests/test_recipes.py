"""Training recipes: min-SNR-gamma weighting, importance-sampled noise levels and EDM2's power-function EMA against their closed forms, end to end and resumed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import tiny_train_config
from diffusers_cli.cli import app
from diffusers_cli.engine.losses import dsm_loss
from diffusers_cli.engine.objectives import ScoreObjective, lognormal_importance_weights
from diffusers_cli.engine.networks.unet import UNet
from diffusers_cli.engine.score import ScoreModel
from diffusers_cli.engine.sde import DDPM, SDE, VESDE, VPSDE, SubVPSDE
from diffusers_cli.engine.training import EMA, power_gamma
from diffusers_cli.jobs.train import train


@pytest.mark.parametrize("sde", [VPSDE(), VESDE(), DDPM()], ids=["vp", "ve", "ddpm"])
@pytest.mark.parametrize("parameterization", ["eps", "x0", "v"])
def test_min_snr_weight_is_min_snr_gamma_over_snr_of_the_eps_error(sde: object, parameterization: str) -> None:
    torch.manual_seed(0)
    net = UNet(image_size=8, in_channels=1, base_channels=8, channel_mult=(1,), num_res_blocks=1, attn_resolutions=())
    model = ScoreModel(net, sde, parameterization)  # type: ignore[arg-type]
    x0 = torch.rand(6, 1, 8, 8) * 2 - 1
    lam = torch.tensor([-6.0, -2.0, 0.0, 1.0, 1.6, 4.0])  # log-SNR from noise to nearly clean: gamma 5 clamps the last two
    t = sde.t_from_log_snr(lam.double()).float() if sde.continuous_time else torch.tensor([0.999, 0.7, 0.4, 0.2, 0.1, 0.005])
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = dsm_loss(model, x0, None, "eps", t=t, eps=eps)
        weighted = dsm_loss(model, x0, None, "min-snr", t=t, eps=eps, min_snr_gamma=5.0)
    mean, std = sde.marginal(t)
    snr = (mean / std).double() ** 2
    want = torch.minimum(snr, torch.tensor(5.0, dtype=torch.float64)) / snr
    torch.testing.assert_close((weighted / plain).double(), want, rtol=1e-5, atol=0)
    assert bool((snr > 5).any()) and bool((snr < 5).any())  # both branches are exercised


@pytest.mark.parametrize("sde", [VPSDE(), VESDE(), SubVPSDE()], ids=["vp", "ve", "subvp"])
@pytest.mark.parametrize("widen", [1.5, 2.0])
def test_importance_weights_turn_the_wider_draws_into_the_lognormal_objective(sde: SDE, widen: float) -> None:
    # Drawn from N(m, (widen s)^2) in ln(sigma) and weighted by p / q, the moments are those of today's N(m, s^2),
    # clamped to [eps, T] as lognormal_times clamps: its own draws are the reference.
    m, s = -1.2, 1.2
    t = sde.lognormal_times(400_000, torch.Generator().manual_seed(0), "cpu", m, widen * s)
    w = lognormal_importance_weights(sde, t, m, s, widen).double()
    log_sigma = -sde.log_snr(t.double())
    ref = -sde.log_snr(sde.lognormal_times(400_000, torch.Generator().manual_seed(1), "cpu", m, s).double())
    # The draws really are wider: their quartiles are N(m, (widen s)^2)'s (a few % are clamped to [eps, T], far out).
    q1, q3 = (float(v) for v in torch.quantile(log_sigma[:100_000], torch.tensor([0.25, 0.75], dtype=torch.float64)))
    assert q3 - q1 == pytest.approx(1.34898 * widen * s, rel=0.02) and (q1 + q3) / 2 == pytest.approx(m, abs=0.02)
    assert float(w.mean()) == pytest.approx(1.0, abs=0.01)
    assert float((w * log_sigma).mean()) == pytest.approx(float(ref.mean()), abs=0.01)
    assert float((w * (log_sigma - m) ** 2).mean()) == pytest.approx(float(((ref - m) ** 2).mean()), rel=0.02)
    low = float(-sde.log_snr(torch.tensor(sde.eps, dtype=torch.float64))) + 1e-6  # the clamped lower tail's mass
    assert float((w * (log_sigma <= low)).mean()) == pytest.approx(float((ref <= low).double().mean()), abs=5e-4)
    # The density ratio in closed form: widen at the log-normal's mean, widen exp(-z^2 (1 - 1 / widen^2) / 2) at z.
    at = sde.t_from_log_snr(torch.tensor([-m, -(m + 2.5 * s)], dtype=torch.float64)).float()
    got = lognormal_importance_weights(sde, at, m, s, widen)
    assert float(got[0]) == pytest.approx(widen, rel=1e-4)
    assert float(got[1]) == pytest.approx(widen * math.exp(-0.5 * 2.5**2 * (1 - 1 / widen**2)), rel=1e-4)


def test_importance_objective_weights_each_loss_and_draws_like_a_wider_lognormal() -> None:
    sde = VPSDE()
    net = UNet(image_size=8, in_channels=1, base_channels=8, channel_mult=(1,), num_res_blocks=1, attn_resolutions=())
    obj = ScoreObjective(ScoreModel(net, sde, "edm"), "edm", "importance", -1.2, 1.2, importance_widen=2.0)
    x, y = torch.rand(5, 1, 8, 8) * 2 - 1, torch.zeros(5, dtype=torch.long)
    batch = obj.draw(x, y, torch.Generator().manual_seed(3))
    assert batch.keys() == {"x", "y", "t", "eps", "w"}
    assert torch.equal(batch["t"], sde.lognormal_times(5, torch.Generator().manual_seed(3), "cpu", -1.2, 2.4))
    torch.testing.assert_close(batch["w"], lognormal_importance_weights(sde, batch["t"], -1.2, 1.2, 2.0))
    with torch.no_grad():
        weighted, _ = obj(**batch)
        plain, _ = obj(**{k: v for k, v in batch.items() if k != "w"})
    torch.testing.assert_close(weighted, plain * batch["w"])
    assert "w" not in ScoreObjective(ScoreModel(net, DDPM(), "eps"), "eps", "importance").draw(x, y, None)  # DDPM keeps its steps


@pytest.mark.parametrize("sigma_rel", [0.05, 0.10, 0.20])
def test_power_ema_profile_has_the_asked_relative_width(sigma_rel: float) -> None:
    gamma = power_gamma(sigma_rel)
    # Its defining identity: the profile t^gamma on [0, 1] has this std.
    assert math.isclose(math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3))), sigma_rel, rel_tol=1e-9)
    # The weights the EMA gives update i after T updates, by linearity: w_i = (1 - b_i) prod_{j > i} b_j.
    ema = EMA(torch.nn.Linear(1, 1), profile="power", sigma_rel=sigma_rel)
    T = 20_000
    betas = []
    for _ in range(T):
        betas.append(ema.current_decay())
        ema.num_updates += 1
    b = torch.tensor(betas, dtype=torch.float64)
    tail = torch.cat([torch.flip(torch.cumprod(torch.flip(b[1:], [0]), 0), [0]), torch.ones(1, dtype=torch.float64)])
    w = (1 - b) * tail
    assert math.isclose(float(w.sum()), 1.0, rel_tol=1e-9)
    pos = torch.arange(1, T + 1, dtype=torch.float64) / T
    mean = float((w * pos).sum())
    std = math.sqrt(float((w * (pos - mean) ** 2).sum()))
    assert math.isclose(mean, (gamma + 1) / (gamma + 2), rel_tol=1e-3)
    assert math.isclose(std, sigma_rel, rel_tol=1e-2)


def test_power_ema_averages_a_sequence_as_its_weights_say() -> None:
    lin = torch.nn.Linear(1, 1, bias=False)
    ema = EMA(lin, profile="power", sigma_rel=0.2)
    values = torch.linspace(-1.0, 3.0, 50, dtype=torch.float64)
    gamma = power_gamma(0.2)
    for v in values:
        lin.weight.data.fill_(float(v))
        ema.update(lin)
    # For this profile the weight of update i is exactly prod form; with b_1 = 0 the first update is taken whole.
    b = torch.tensor([(1 - 1 / (n + 1)) ** (gamma + 1) for n in range(50)], dtype=torch.float64)
    acc = torch.tensor(0.0, dtype=torch.float64)
    for bi, v in zip(b, values):
        acc = bi * acc + (1 - bi) * v
    assert math.isclose(float(ema.module.weight), float(acc), rel_tol=1e-6)


@pytest.mark.parametrize("recipe", [
    {"loss_weighting": "min-snr", "min_snr_gamma": 2.0},
    {"optim.ema_profile": "power", "optim.ema_sigma_rel": 0.15},
    {"time_sampling": "uniform", "loss_weighting": "likelihood"},
    {"time_sampling": "importance", "importance_widen": 2.0},
])
def test_each_recipe_trains_and_resumes_bitwise(recipe: dict[str, object], tmp_path: Path) -> None:
    full = train(tiny_train_config(tmp_path / "a", steps=6, **recipe))
    train(tiny_train_config(tmp_path / "b", steps=3, **recipe))
    resumed = train(tiny_train_config(tmp_path / "b", steps=6, resume=True, **recipe))
    for name in ("model.safetensors", "state.safetensors"):
        wa, wb = load_file(str(full.run_dir / name)), load_file(str(resumed.run_dir / name))
        assert wa.keys() == wb.keys()
        for k in wa:
            assert torch.equal(wa[k], wb[k]), (name, k)
    plain = load_file(str(train(tiny_train_config(tmp_path / "c", steps=6)).run_dir / "model.safetensors"))
    assert any(not torch.equal(plain[k], load_file(str(full.run_dir / "model.safetensors"))[k]) for k in plain)


@pytest.mark.parametrize("setting, words", [
    ("min_snr_gamma=-1", "min_snr_gamma"),
    ("loss_weighting=nope", "'edm', 'eps', 'likelihood' or 'min-snr'"),
    ("lognormal_std=0", "lognormal_std"),
    ("importance_widen=0.5", "importance_widen"),
    ("time_sampling=nope", "'lognormal', 'uniform' or 'importance'"),
    ("optim.ema_profile=nope", "'exponential' or 'power'"),
    ("optim.ema_sigma_rel=0.3", "ema_sigma_rel"),
])
def test_bad_recipe_values_exit_2_naming_the_valid_ones(setting: str, words: str, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["train", "--steps", "1", "--image-size", "8", "--out", str(tmp_path), "--set", setting])
    assert res.exit_code == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("diffuse: error:")]
    assert len(lines) == 1 and words in lines[0], res.stderr
    assert not any(tmp_path.iterdir())


def test_recipe_flags_reach_the_config_and_the_run_records_them(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["train", "--steps", "2", "--image-size", "8", "--out", str(tmp_path), "--name", "r",
                                   "--loss-weighting", "min-snr", "--time-sampling", "importance", "--ema-profile", "power",
                                   "--set", "importance_widen=1.75", "--device", "cpu", "--sample-every", "0"])
    assert res.exit_code == 0, res.output
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert (saved["loss_weighting"], saved["time_sampling"], saved["importance_widen"]) == ("min-snr", "importance", 1.75)
    assert saved["optim"]["ema_profile"] == "power"
    res = CliRunner().invoke(app, ["train", "--steps", "1", "--image-size", "8", "--out", str(tmp_path / "bad"),
                                   "--time-sampling", "karras"])
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("diffuse: error:")]
    assert res.exit_code == 2 and len(lines) == 1 and "'lognormal', 'uniform' or 'importance'" in lines[0], res.stderr
