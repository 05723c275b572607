"""Training: EMA, warm-up, data order, objectives, the loop and its hooks, checkpoint round trip and exact resume."""

from __future__ import annotations

import json
import math
import os
import re
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import tiny_train_config
from safetensors.torch import load_file, save_file

from diffusers_cli.models import load_score_model
from diffusers_cli.checkpoints.card import CheckpointError
from diffusers_cli.checkpoints.weights import load_weights, read_meta, save_weights
from diffusers_cli.engine.losses import dsm_loss
from diffusers_cli.engine.networks.unet import UNet
from diffusers_cli.engine.objectives import ClassifierObjective, Objective, ScoreObjective
from diffusers_cli.engine.score import ScoreModel
from diffusers_cli.engine.sde import DDPM, SDE, VESDE, VPSDE, SubVPSDE
from diffusers_cli.engine.training import EMA, Hook, LoopResult, NonFiniteError, batch_indices, train_loop, warmup_lr
from diffusers_cli.jobs.train import train


def test_ema_warmup_and_average() -> None:
    lin = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(lin.weight)
    ema = EMA(lin, decay=0.9, warmup=True)
    assert ema.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    ema.update(lin)
    assert ema.module.weight.item() == pytest.approx(0.9)  # moved 1 - 0.1 of the way
    ema.warmup = False
    ema.update(lin)
    assert ema.module.weight.item() == pytest.approx(0.9 + 0.1 * 0.1)


def test_warmup_lr() -> None:
    assert warmup_lr(0, 1.0, 10) == pytest.approx(0.1)
    assert warmup_lr(9, 1.0, 10) == 1.0
    assert warmup_lr(50, 1.0, 10) == 1.0
    assert warmup_lr(0, 1.0, 0) == 1.0


def test_lr_decay_anneals_to_zero_after_warmup() -> None:
    # Warm-up 10 of 110 steps: the decay runs over the last 100, so step 60 is its midpoint.
    assert warmup_lr(4, 2.0, 10, "cosine", 110) == pytest.approx(1.0)  # still warming up
    assert warmup_lr(10, 2.0, 10, "cosine", 110) == pytest.approx(2.0)
    assert warmup_lr(60, 2.0, 10, "cosine", 110) == pytest.approx(1.0)
    assert warmup_lr(35, 2.0, 10, "cosine", 110) == pytest.approx(1.0 + math.cos(math.pi / 4))
    assert warmup_lr(60, 2.0, 10, "linear", 110) == pytest.approx(1.0)
    assert warmup_lr(85, 2.0, 10, "linear", 110) == pytest.approx(0.5)
    assert warmup_lr(110, 2.0, 10, "linear", 110) == 0.0
    assert warmup_lr(60, 2.0, 10, "none", 110) == 2.0
    with pytest.raises(ValueError, match="cosine"):
        warmup_lr(60, 2.0, 10, "step", 110)


def test_batch_indices_cover_each_epoch_once() -> None:
    seen = torch.cat([batch_indices(10, 5, 3, s) for s in range(2)])
    assert sorted(seen.tolist()) == list(range(10))
    assert torch.equal(batch_indices(10, 5, 3, 7), batch_indices(10, 5, 3, 7))
    assert not torch.equal(batch_indices(10, 5, 3, 0), batch_indices(10, 5, 4, 0))
    assert len(batch_indices(10, 4, 0, 2)) == 4  # wraps across the epoch boundary


def test_loss_decreases_on_a_tiny_problem() -> None:
    torch.manual_seed(0)
    net = UNet(image_size=8, in_channels=1, base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0)
    model = ScoreModel(net, VPSDE(), "eps")
    # Data: two fixed 8x8 images (a memorisable distribution).
    data = torch.stack([torch.ones(1, 8, 8) * 0.8, -torch.ones(1, 8, 8) * 0.8])
    batch = data.repeat(16, 1, 1, 1)

    def eval_loss() -> float:
        with torch.no_grad():
            return dsm_loss(model, batch.repeat(4, 1, 1, 1), torch.Generator().manual_seed(123), "eps").mean().item()

    before = eval_loss()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(80):
        loss = dsm_loss(model, batch, g, "eps").mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert before > 0.9  # an untrained eps-model predicts ~0: the loss is E||eps||^2 / D = 1
    assert after < 0.6 * before


def test_checkpoint_round_trip(tiny_run: Path) -> None:
    model, card = load_score_model(tiny_run / "model.safetensors")
    assert card.kind == "score" and card.image_shape == (3, 8, 8) and card.channels == 3
    assert card.class_names[:3] == ("circle", "square", "triangle")
    assert card.network == model.net.config  # the card holds the network's own config
    tensors, _ = load_weights(tiny_run / "model.safetensors")
    ema = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
    for k, v in model.net.state_dict().items():
        assert torch.equal(v, ema[k])
    online, _ = load_score_model(tiny_run, use_ema=False)
    diff = sum((a - b).abs().sum().item() for a, b in zip(online.net.parameters(), model.net.parameters()))
    assert diff > 0  # EMA and online weights are both stored, and differ after training


def test_foreign_and_corrupt_checkpoints(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="not a diffusers-cli checkpoint"):
        read_meta(foreign)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        read_meta(corrupt)
    pth = tmp_path / "model.pt"
    pth.write_bytes(b"PK\x03\x04 this would be a pickle zip")
    with pytest.raises(CheckpointError):
        read_meta(pth)


def test_weights_are_written_atomically_with_metadata(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_weights(path, {"a": torch.arange(3.0)}, {"kind": "score", "step": 3})
    assert read_meta(path) == {"kind": "score", "step": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]  # no temp file left
    assert torch.equal(load_file(str(path))["a"], torch.arange(3.0))


@pytest.mark.parametrize("conditional", [False, True])
def test_resume_gives_the_same_weights(tmp_path: Path, conditional: bool) -> None:
    # A class-conditional run also draws its label dropout from the saved generator.
    full = train(tiny_train_config(tmp_path / "a", steps=6, class_conditional=conditional, label_dropout=0.5))
    train(tiny_train_config(tmp_path / "b", steps=3, class_conditional=conditional, label_dropout=0.5))
    resumed = train(tiny_train_config(tmp_path / "b", steps=6, resume=True, class_conditional=conditional, label_dropout=0.5))
    assert resumed.start_step == 3 and resumed.step == 6
    wa, _ = load_weights(full.run_dir / "model.safetensors")
    wb, _ = load_weights(resumed.run_dir / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    log = [json.loads(line) for line in (resumed.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]


def test_existing_run_needs_resume(tmp_path: Path) -> None:
    from diffusers_cli.config.base import ConfigError

    train(tiny_train_config(tmp_path, steps=1))
    with pytest.raises(ConfigError, match="already exists; pass --resume"):
        train(tiny_train_config(tmp_path, steps=1))


# ---- objectives: their draws, their losses, their statistics ------------------------------------


def _tiny_score_model(sde: SDE, num_classes: int | None = None) -> ScoreModel:
    torch.manual_seed(0)
    net = UNet(image_size=8, in_channels=1, base_channels=8, channel_mult=(1,), num_res_blocks=1, attn_resolutions=(),
               dropout=0.0, num_classes=num_classes)
    return ScoreModel(net, sde, "eps")


def test_score_objective_draws_t_then_eps_then_dropout_from_the_generator_alone() -> None:
    sde = VPSDE()
    obj = ScoreObjective(_tiny_score_model(sde, 3), "edm", "lognormal", -1.0, 1.5, conditional=True, label_dropout=0.5)
    x, y = torch.rand(6, 1, 8, 8) * 2 - 1, torch.tensor([0, 1, 2, 0, 1, 2])
    torch.manual_seed(1)  # the global generator plays no part
    a = obj.draw(x, y, torch.Generator().manual_seed(7))
    torch.manual_seed(2)
    b = obj.draw(x, y, torch.Generator().manual_seed(7))
    assert a.keys() == {"x", "y", "t", "eps"}
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # The same numbers, drawn by hand in the order a saved run replays: t, eps, then the label coins.
    g = torch.Generator().manual_seed(7)
    t = sde.lognormal_times(6, g, "cpu", -1.0, 1.5)
    eps = torch.randn(x.shape, generator=g)
    drop = torch.rand(6, generator=g) < 0.5
    assert torch.equal(a["t"], t) and torch.equal(a["eps"], eps) and torch.equal(a["x"], x)
    assert torch.equal(a["y"], torch.where(drop, -1, y))
    c = obj.draw(x, y, torch.Generator().manual_seed(8))
    assert not torch.equal(a["t"], c["t"]) and not torch.equal(a["eps"], c["eps"])


def test_unconditional_objective_spends_no_draws_on_labels() -> None:
    obj = ScoreObjective(_tiny_score_model(VPSDE()), "eps", "uniform")
    x, y = torch.zeros(5, 1, 8, 8), torch.arange(5)
    g = torch.Generator().manual_seed(3)
    out = obj.draw(x, y, g)
    h = torch.Generator().manual_seed(3)
    assert torch.equal(out["t"], VPSDE().train_times(5, h, "cpu"))
    torch.randn(x.shape, generator=h)
    assert torch.equal(g.get_state(), h.get_state())  # nothing more was drawn
    assert torch.equal(out["y"], y)


def test_time_sampling_follows_what_the_sde_says() -> None:
    assert VPSDE().continuous_time and SubVPSDE().continuous_time and VESDE().continuous_time
    assert not DDPM().continuous_time
    x = torch.zeros(4096, 1, 8, 8)
    for sde in (VPSDE(), DDPM(num_steps=100)):
        obj = ScoreObjective(_tiny_score_model(sde), "eps", "lognormal")
        t = obj.draw(x, torch.zeros(4096, dtype=torch.long), torch.Generator().manual_seed(0))["t"]
        on_steps = torch.allclose(t * 100, (t * 100).round(), atol=1e-4)
        assert on_steps == (not sde.continuous_time)  # DDPM keeps its integer steps even when asked for log-normal times
        if sde.continuous_time:
            # ln(sigma) ~ N(-1.2, 1.2^2) with sigma = std / mean (clamped at the ends, which the median is far from).
            mean, std = sde.marginal(t)
            assert torch.log(std / mean).median().item() == pytest.approx(-1.2, abs=0.08)
    with pytest.raises(ValueError, match="lognormal, uniform, importance"):
        ScoreObjective(_tiny_score_model(VPSDE()), "eps", "karras")


def test_label_dropout_rate() -> None:
    obj = ScoreObjective(_tiny_score_model(VPSDE(), 10), "eps", "uniform", conditional=True, label_dropout=0.3)
    y = torch.randint(0, 10, (20_000,), generator=torch.Generator().manual_seed(0))
    out = obj.draw(torch.zeros(20_000, 1, 1, 1), y, torch.Generator().manual_seed(1))["y"]
    dropped = out == -1
    assert dropped.float().mean().item() == pytest.approx(0.3, abs=0.01)  # 7 standard errors
    assert torch.equal(out[~dropped], y[~dropped])


def test_score_objective_forward_is_dsm_loss() -> None:
    model = _tiny_score_model(VESDE(), 3)
    obj = ScoreObjective(model, "likelihood", conditional=True, label_dropout=0.5)
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    batch = obj.draw(x, torch.tensor([0, 1, 2, 1]), torch.Generator().manual_seed(0))
    loss, stats = obj(**batch)
    want = dsm_loss(model, x, None, "likelihood", batch["y"], batch["t"], batch["eps"])
    assert loss.shape == (4,) and stats == {}
    assert torch.equal(loss, want)


class _ZeroNet(torch.nn.Module):
    """Predicts eps = 0 everywhere: its score is 0, so the per-example DSM error is mean(eps^2) exactly."""

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return torch.zeros_like(x)


@pytest.mark.parametrize("sde_name", ["ve", "vp"])
def test_likelihood_weighting_is_g_squared_over_sigma_squared(sde_name: str) -> None:
    # lambda(t) = g(t)^2 on ||s - grad log p||^2 = ||std s + eps||^2 / std^2: with s = 0 the loss is mean(eps^2) g^2 / std^2,
    # in closed form: VE 2 ln(sigma_max / sigma_min) at every t; VP beta(t) / (1 - exp(-int_0^t beta)).
    sde = VESDE() if sde_name == "ve" else VPSDE()
    obj = ScoreObjective(ScoreModel(_ZeroNet(), sde, "eps"), "likelihood")
    x = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    batch = obj.draw(x, torch.zeros(5, dtype=torch.long), torch.Generator().manual_seed(1))
    loss, _ = obj(**batch)
    t, eps = batch["t"].double(), batch["eps"].double()
    if sde_name == "ve":
        weight = torch.full_like(t, 2 * math.log(50.0 / 0.01))
    else:
        beta, integral = 0.1 + 19.9 * t, 0.1 * t + 9.95 * t**2
        weight = beta / -torch.expm1(-integral)
    want = eps.pow(2).flatten(1).mean(1) * weight
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=0)
    if sde_name == "vp":
        assert float(weight.max() / weight.min()) > 2.0  # the drawn times span a range where the weight really varies


def test_classifier_objective_uniform_times_and_accuracy_bins() -> None:
    sde = VPSDE()
    obj = ClassifierObjective(torch.nn.Identity(), sde)
    g = torch.Generator().manual_seed(0)
    t = obj.draw(torch.zeros(3, 1, 2, 2), torch.zeros(3, dtype=torch.long), g)["t"]
    assert torch.equal(t, sde.train_times(3, torch.Generator().manual_seed(0), "cpu"))
    obj.observe({"t": torch.tensor([0.1, 0.2, 0.3, 0.6, 0.9, 0.95, 1.0])},
                {"correct": torch.tensor([True, False, True, True, False, False, True])})
    obj.observe({"t": torch.tensor([0.2])}, {"correct": torch.tensor([True])})
    assert obj.report() == {"accuracy_by_t": {"0.00-0.25": round(2 / 3, 4), "0.25-0.50": 1.0, "0.50-0.75": 1.0, "0.75-1.00": round(1 / 3, 4)}}
    assert obj.report()["accuracy_by_t"] == {"0.00-0.25": 0.0, "0.25-0.50": 0.0, "0.50-0.75": 0.0, "0.75-1.00": 0.0}  # reset


# ---- the loop, driven by a toy objective ---------------------------------------------------------


class _Toy(Objective):
    """Least squares of a linear map on the batch, plus a drawn offset: a loss the loop can drive to a known point."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.sizes: list[tuple[int, int]] = []  # (global batch drawn on, slice computed on)

    def draw(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        self._drawn = x.shape[0]
        return {"x": x, "target": 1.0 + 0.0 * torch.rand(x.shape[0], generator=generator)}

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self.sizes.append((self._drawn, x.shape[0]))
        return (self.net(x).squeeze(1) - target) ** 2, {}


def _toy_loop(steps: int, start: int = 0, batches: list | None = None, **kwargs: Any) -> tuple[LoopResult, _Toy, torch.nn.Module]:
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    obj = _Toy(net)
    g = torch.Generator().manual_seed(0)
    if batches is None:
        batches = [(torch.ones(4, 3), torch.zeros(4, dtype=torch.long)) for _ in range(start, steps)]
    res = train_loop(net, EMA(net, 0.5, warmup=False), torch.optim.SGD(net.parameters(), lr=0.0), obj, batches, g,
                     steps=steps, start=start, lr=lambda s: 0.05, device=torch.device("cpu"), **kwargs)
    return res, obj, net


def test_loop_calls_hooks_at_exactly_the_steps_asked() -> None:
    calls: dict[str, list[int]] = {"a": [], "b": [], "never": [], "end": []}
    logs: list[dict[str, Any]] = []
    losses: list[float] = []
    hooks = [Hook(3, calls["a"].append), Hook(2, calls["b"].append, final=True), Hook(0, calls["never"].append),
             Hook(0, calls["end"].append, final=True)]
    res, _, net = _toy_loop(7, log_every=3, on_log=lambda s, r: logs.append(r), on_step=lambda s, l: losses.append(l), hooks=hooks)
    assert calls == {"a": [3, 6], "b": [2, 4, 6, 7], "never": [], "end": [7]}
    assert [r["step"] for r in logs] == [3, 6, 7]
    assert len(losses) == 7 and losses[-1] < 0.5 * losses[0]  # lr 0.05 from the schedule, not the optimizer's 0
    assert logs[0]["loss"] == pytest.approx(sum(losses[:3]) / 3) and logs[2]["loss"] == pytest.approx(losses[6])
    assert logs[0]["lr"] == 0.05 and logs[0]["it_per_s"] > 0 and list(logs[0]) == ["step", "loss", "lr", "it_per_s", "time"]
    assert res == LoopResult(7, losses[-1], False)
    # Resumed at step 4, the cadence is still counted from step 0.
    calls["a"].clear()
    res, _, _ = _toy_loop(7, start=4, hooks=[Hook(3, calls["a"].append)])
    assert calls["a"] == [6] and res.step == 7


def test_loop_draws_on_the_global_batch_and_computes_the_local_slice() -> None:
    order: list[str] = []

    def augment(x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
        order.append("augment")
        return x

    _, obj, _ = _toy_loop(2, local=slice(2, 4), augment=augment)
    assert obj.sizes == [(4, 2), (4, 2)] and order == ["augment", "augment"]


def test_loop_raises_on_a_non_finite_loss() -> None:
    # Steps are counted from 1, as the log and the checkpoints count them: batch 2 is the third step.
    batches = [(torch.ones(4, 3), torch.zeros(4, dtype=torch.long)) for _ in range(4)]
    batches[2] = (torch.full((4, 3), math.nan), batches[2][1])
    with pytest.raises(NonFiniteError, match="loss became nan at step 3") as err:
        _toy_loop(4, batches=batches)
    assert err.value.step == 3 and isinstance(err.value, FloatingPointError)


def test_loop_stops_on_a_non_finite_gradient_before_the_weights_take_it() -> None:
    # A finite loss whose gradient overflows float32: with x = 3e19 the loss is about 1e38, its gradient about 1e39.
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    before = [p.detach().clone() for p in net.parameters()]
    batches = [(torch.full((4, 3), 3e19), torch.zeros(4, dtype=torch.long))]
    with pytest.raises(NonFiniteError, match="the gradient norm became inf at step 1"):
        train_loop(net, EMA(net, 0.5, warmup=False), torch.optim.SGD(net.parameters(), lr=0.0), _Toy(net), batches, None,
                   steps=1, lr=lambda s: 0.05, device=torch.device("cpu"), grad_clip=0.0)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_skip_mode_skips_counts_and_gives_up_after_max_skips() -> None:
    good = (torch.ones(4, 3), torch.zeros(4, dtype=torch.long))
    bad = (torch.full((4, 3), math.nan), good[1])
    logs: list[dict[str, Any]] = []
    res, _, net = _toy_loop(5, batches=[good, bad, good, bad, good], on_nonfinite="skip", log_every=5,
                            on_log=lambda s, r: logs.append(r))
    # The skipped steps changed nothing: the weights are those of three good steps.
    _, _, ref = _toy_loop(3, batches=[good, good, good])
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), ref.parameters()))
    assert res.step == 5 and logs[-1]["skipped"] == 2 and math.isfinite(res.loss)
    # Three bad steps in a row with max_skips 2: the third stops the run.
    with pytest.raises(NonFiniteError, match="at step 4 \\(3 non-finite steps in a row; max_skips 2\\)"):
        _toy_loop(5, batches=[good, bad, bad, bad, good], on_nonfinite="skip", max_skips=2)
    with pytest.raises(ValueError, match="on_nonfinite must be"):
        _toy_loop(1, on_nonfinite="ignore")


def test_ctrl_c_ends_the_loop_after_the_current_step() -> None:
    before = signal.getsignal(signal.SIGINT)
    seen: list[int] = []

    def ctrl_c(step: int) -> None:
        os.kill(os.getpid(), signal.SIGINT)

    res, _, _ = _toy_loop(10, on_step=lambda s, l: seen.append(s), hooks=[Hook(3, ctrl_c)])
    assert res.step == 3 and res.interrupted and seen == [1, 2, 3]
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back
    res, _, _ = _toy_loop(3, hooks=[Hook(3, ctrl_c)])
    assert res.step == 3 and not res.interrupted  # a stop after the last step interrupts nothing

    def twice(step: int) -> None:
        ctrl_c(step)
        ctrl_c(step)

    with pytest.raises(KeyboardInterrupt):
        _toy_loop(10, hooks=[Hook(2, twice)])
    assert signal.getsignal(signal.SIGINT) is before


def test_no_sde_type_checks_outside_build() -> None:
    pattern = re.compile(r"isinstance\(.*(DDPM|VPSDE|VESDE|SubVPSDE)")
    src = Path(__import__("diffusers_cli").__file__).parent
    found = [f"{p.relative_to(src)}:{i}" for p in sorted(src.rglob("*.py")) if p.name != "build.py"
             for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert len(list(src.rglob("*.py"))) > 20  # the scan sees the package
    assert found == []
