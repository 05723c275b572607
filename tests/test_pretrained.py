"""Bring your own model: diffusers folders and hf: models as score models, on small random UNet2DModels (no download)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import engine_draw, grid_pixels, png_pixels

pytest.importorskip("diffusers", reason="the diffusers extra (pip install -e '.[diffusers]') builds the small test models")

from diffusers import (  # noqa: E402
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    PNDMScheduler,
    ScoreSdeVePipeline,
    ScoreSdeVeScheduler,
    UNet2DConditionModel,
    UNet2DModel,
)
from typer.testing import CliRunner  # noqa: E402

from diffusers_cli import models  # noqa: E402
from diffusers_cli.cli import app  # noqa: E402
from diffusers_cli.config.sde import DDPMConfig  # noqa: E402
from diffusers_cli.data import load_dataset  # noqa: E402
from diffusers_cli.engine.guidance import classifier_fn, guided  # noqa: E402
from diffusers_cli.engine.likelihood import bits_per_dim  # noqa: E402
from diffusers_cli.engine.samplers import denoise, sample_ddim  # noqa: E402
from diffusers_cli.engine.score import make_score_fn  # noqa: E402
from diffusers_cli.jobs.evaluate import bpd_generator  # noqa: E402
from diffusers_cli.models import hub  # noqa: E402

runner = CliRunner()


def invoke(*args: object) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def one_error_line(res: Any, code: int = 2) -> str:
    """Exit ``code`` and stderr exactly one 'diffuse: error:' line without a traceback; return the line."""
    assert res.exit_code == code, (res.exit_code, res.stdout, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("diffuse: error: "), res.stderr
    return lines[0]


def small_unet(**over: Any) -> UNet2DModel:
    """A random 8x8 UNet2DModel (~100k parameters), seeded."""
    torch.manual_seed(0)
    kwargs: dict[str, Any] = {"sample_size": 8, "in_channels": 3, "out_channels": 3, "layers_per_block": 1,
                              "block_out_channels": (16, 32), "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
                              "up_block_types": ("AttnUpBlock2D", "UpBlock2D"), "norm_num_groups": 8}
    kwargs.update(over)
    return UNet2DModel(**kwargs)


def ddpm_folder(root: Path, prediction_type: str = "epsilon", safe: bool = True, **sched: Any) -> Path:
    """A DDPMPipeline folder (model_index.json, unet/, scheduler/) saved by diffusers."""
    learned = sched.get("variance_type") == "learned_range"
    unet = small_unet(out_channels=6 if learned else 3)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(prediction_type=prediction_type, **sched)).save_pretrained(root, safe_serialization=safe)
    return root


def ve_folder(root: Path) -> Path:
    """A ScoreSdeVePipeline folder: a Fourier-embedding UNet2DModel (NCSN++-style) with ScoreSdeVeScheduler."""
    unet = small_unet(time_embedding_type="fourier")
    ScoreSdeVePipeline(unet=unet, scheduler=ScoreSdeVeScheduler(sigma_min=0.01, sigma_max=50.0, num_train_timesteps=100)).save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def eps_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ddpm_folder(tmp_path_factory.mktemp("ddpm") / "ddpm-shapes-8")


@pytest.fixture(scope="module")
def ve_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ve_folder(tmp_path_factory.mktemp("ve") / "ncsnpp-8")


def x_and_steps() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    return x, torch.tensor([0, 317, 999])


class Exploit:
    """A pickle that runs code when it is loaded (it creates ``marker``): what weights_only=True must refuse."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (Path.touch, (self.marker,))


# ---- the score function, mapped exactly --------------------------------------------------------


@pytest.mark.parametrize("prediction_type,variance_type", [("epsilon", "fixed_small"), ("v_prediction", "fixed_small"),
                                                           ("sample", "fixed_small"), ("epsilon", "learned_range")])
def test_score_equals_the_pipelines_own_output_mapped(tmp_path: Path, prediction_type: str, variance_type: str) -> None:
    folder = ddpm_folder(tmp_path / "m", prediction_type, variance_type=variance_type)
    pipe = DDPMPipeline.from_pretrained(folder)
    model, card = models.load_score_model(folder)
    assert card.source == "diffusers" and card.parameterization == {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}[prediction_type]
    x, k = x_and_steps()
    t = ((k + 1) / 1000).float()  # diffusers' step k is our t = (k + 1) / T
    with torch.no_grad():
        out = pipe.unet(x, k).sample[:, :3]  # a learned-variance net: its first 3 channels
        ours_raw = model(x, t)
        score = model.score(x, t).double()
    assert torch.equal(ours_raw, out)  # the same net at the same (x, step): bit for bit
    ac = torch.cumprod(1 - pipe.scheduler.betas.double(), 0)[k].view(-1, 1, 1, 1)
    m, s = ac.sqrt(), (1 - ac).sqrt()
    o, xd = out.double(), x.double()
    eps = {"epsilon": o, "v_prediction": m * o + s * xd, "sample": (xd - m * o) / s}[prediction_type]
    torch.testing.assert_close(score, -eps / s, rtol=1e-4, atol=1e-4)


def test_between_training_steps_the_net_sees_fractional_steps_as_in_dpm_solvers_wrapper(eps_model: Path) -> None:
    model, _ = models.load_score_model(eps_model)
    x, _ = x_and_steps()
    k = torch.tensor([10.5, 400.25, 998.75])
    with torch.no_grad():
        torch.testing.assert_close(model(x, (k + 1) / 1000), model.net.unet(x, k).sample, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scheduler", [DDPMScheduler, DDIMScheduler, PNDMScheduler, DPMSolverMultistepScheduler])
@pytest.mark.parametrize("schedule,n", [("linear", 1000), ("scaled_linear", 1000), ("squaredcos_cap_v2", 1000), ("linear", 250),
                                        ("trained_betas", 100)])
def test_the_chain_has_exactly_the_schedulers_betas(eps_model: Path, tmp_path: Path, scheduler: Any, schedule: str, n: int) -> None:
    folder = tmp_path / "m"
    shutil.copytree(eps_model, folder)
    kwargs: dict[str, Any] = {"num_train_timesteps": n}
    if schedule == "trained_betas":
        kwargs["trained_betas"] = torch.linspace(3e-4, 0.05, n).pow(1.5).tolist()
    else:
        kwargs["beta_schedule"] = schedule
    sched = scheduler(**kwargs)
    (folder / "scheduler" / "scheduler_config.json").unlink()
    sched.save_config(folder / "scheduler")
    card = models.read_model_card(folder)
    sde = models.ours.sde_from_card(card)
    assert sde.num_steps == n and card.extra["scheduler"] == scheduler.__name__
    theirs = sched.betas.double()
    ours = sde.schedule.betas
    # Named schedules (linear, cosine) are ours in float64, within float32 rounding of diffusers' table; tables are exact.
    table = schedule in ("scaled_linear", "trained_betas")
    torch.testing.assert_close(ours, theirs, rtol=0 if table else 2**-23, atol=0)  # named: within one float32 ulp
    ac = torch.cumprod(1 - theirs, 0)
    mean, _ = sde.marginal(torch.arange(1, n + 1, dtype=torch.float64) / n)  # at t = (k + 1) / T: alpha_bar[k]
    torch.testing.assert_close(mean**2, ac, rtol=1e-12 if table else 1e-6, atol=0 if table else 1e-12)


def test_a_google_style_ddpm_is_our_ddpm_sde_so_our_classifiers_fit_it(eps_model: Path) -> None:
    card = models.read_model_card(eps_model)
    # `diffuse train --task classifier --sde ddpm` writes this very SDE config: `diffuse condition` accepts the pair.
    assert card.sde == DDPMConfig().model_dump(mode="json")
    assert card.image_shape == (3, 8, 8) and card.class_names == () and not card.class_conditional


def test_our_ddim_on_the_training_steps_reproduces_diffusers_ddim_loop(eps_model: Path) -> None:
    model, _ = models.load_score_model(eps_model)
    sched = DDIMScheduler.from_pretrained(eps_model, subfolder="scheduler", clip_sample=False, set_alpha_to_one=True)
    sched.set_timesteps(10)
    x_T = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        x = x_T.clone()
        for k in sched.timesteps:
            x = sched.step(model.net.unet(x, k).sample, k, x, eta=0.0).prev_sample
        ts = (sched.timesteps.double() + 1) / 1000  # 0.901, 0.801, ..., 0.001
        score_fn = make_score_fn(model)
        ours = denoise(model.sde, score_fn, sample_ddim(model.sde, score_fn, x_T.clone(), ts), float(ts[-1]))
    diff = float((ours - x).abs().max())
    scale = float(x.abs().max())
    # diffusers keeps alphas_cumprod in float32 (cumprod over 1000 steps), we in float64: the rest is rounding.
    assert diff <= 1e-5 * scale, f"max abs difference {diff:.3g} on outputs of size {scale:.3g}"
    print(f"\nDDIM eta 0, 10 steps on the training steps: max abs difference {diff:.3g} (outputs up to {scale:.3g})")


def test_a_ve_models_score_is_the_unets_output_as_the_pipeline_uses_it(ve_model: Path) -> None:
    pipe = ScoreSdeVePipeline.from_pretrained(ve_model)
    model, card = models.load_score_model(ve_model)
    assert card.sde == {"kind": "ve", "sigma_min": 0.02, "sigma_max": 100.0} and card.parameterization == "score"
    sched = pipe.scheduler
    sched.set_timesteps(5)
    sched.set_sigmas(5)
    t = sched.timesteps.float()
    # Our [-1, 1] images are twice the pipeline's [0, 1] ones: our std is twice its sigma at every time.
    torch.testing.assert_close(model.sde.marginal(t)[1] / 2, sched.sigmas.float(), rtol=1e-5, atol=0)
    x01 = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        theirs = pipe.unet(x01, sched.sigmas.float()).sample  # what ScoreSdeVePipeline steps with, as grad log p_t
        ours = model.score(2 * x01 - 1, t)
    # x = 2 x' - 1: grad_x log p(x) = grad_x' log p'(x') / 2.
    torch.testing.assert_close(2 * ours, theirs, rtol=1e-4, atol=1e-4)


# ---- every command on both kinds -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ddpm", "ve"])
def test_sample_impute_and_bits_per_dim_run_on_both_kinds(request: pytest.FixtureRequest, tmp_path: Path, kind: str) -> None:
    folder = request.getfixturevalue("eps_model" if kind == "ddpm" else "ve_model")
    res = invoke("sample", "--model", folder, "--sampler", "ei", "--steps", "4", "-n", "3", "--out", tmp_path / "s.png",
                 "--trajectory", tmp_path / "traj.png", "--device", "cpu", "--json")
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["nfe"] == 5 and (tmp_path / "s.png").is_file() and (tmp_path / "traj.png").is_file()
    res = invoke("sample", "--model", folder, "--sampler", "pc", "--steps", "3", "-n", "2", "--out", tmp_path / "pc.png", "--device", "cpu")
    assert res.exit_code == 0, res.stderr
    from PIL import Image

    Image.new("RGB", (16, 16), (200, 40, 40)).save(tmp_path / "in.png")
    res = invoke("impute", tmp_path / "in.png", "--mask", "half", "--model", folder, "--method", "repaint", "--steps", "3",
                 "-o", "resample=2", "--out", tmp_path / "filled.png", "--device", "cpu", "--json")
    assert res.exit_code == 0, res.stderr
    filled = torch.tensor(__import__("numpy").array(Image.open(tmp_path / "filled.png"))).float()
    assert filled.shape == (16, 16, 3) and torch.equal(filled[:, :8], torch.tensor([200.0, 40.0, 40.0]).expand(16, 8, 3))
    res = invoke("evaluate", "--model", folder, "--metrics", "bpd", "--bpd-dataset", "shapes", "--bpd-examples", "2",
                 "--bpd-rtol", "1e-2", "--bpd-atol", "1e-2", "--device", "cpu", "--json")
    assert res.exit_code == 0, res.stderr
    bpd = json.loads(res.stdout)["bpd"]
    # The engine's bits/dim of the same two test images, with the generator of run 0, batch 0.
    model, _ = models.load_score_model(folder)
    ds, _ = load_dataset("shapes", 8, split="test", num_examples=2)
    x = torch.stack([ds[i][0] for i in range(2)])
    want = bits_per_dim(model.sde, make_score_fn(model), x, generator=bpd_generator(0, 0, 0, torch.device("cpu")), rtol=1e-2, atol=1e-2)
    assert bpd["examples"] == 2 and bpd["mean"] == pytest.approx(float(want.double().mean()), rel=1e-6), bpd


def test_bits_per_dim_of_a_model_that_records_no_data_asks_for_bpd_dataset(ve_model: Path) -> None:
    # ncsnpp-8 names no dataset of ours (ddpm-shapes-8 would: its data is guessed from the name).
    res = invoke("evaluate", "--model", ve_model, "--metrics", "bpd", "--bpd-examples", "2", "--device", "cpu")
    assert res.exit_code == 2
    line, = res.stderr.strip().splitlines()
    assert line == (f"diffuse: error: {ve_model} does not record the data it was trained on; name it for bits/dim with "
                    "--bpd-dataset (e.g. --bpd-dataset cifar10 --data-dir DIR, or a folder of images)")


def test_condition_guides_a_diffusers_model_with_a_classifier_trained_for_its_sde(eps_model: Path, tmp_path: Path) -> None:
    res = invoke("train", "--task", "classifier", "--sde", "ddpm", "--preset", "wrn-10-2", "--set", "classifier.widen=1",
                 "--image-size", "8", "--steps", "3", "--batch-size", "8", "--set", "data.num_examples=16", "--sample-every", "0",
                 "--out", tmp_path, "--name", "clf", "--device", "cpu")
    assert res.exit_code == 0, res.stderr
    cond = ["condition", "--model", eps_model, "--classifier", tmp_path / "clf", "--class", "1", "--sampler", "ddim", "--steps", "3",
            "-n", "2", "--device", "cpu", "--json"]
    res = invoke(*cond, "--scale", "2", "--out", tmp_path / "c.png")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["class"] == 1
    # The engine's sample of the diffusers model's score plus twice the classifier's gradient, with the same generators.
    model, card = models.load_score_model(eps_model)
    net, _, _ = models.load_classifier(tmp_path / "clf")
    score = guided(make_score_fn(model), classifier_fn(net, model.sde), 1, 2.0)
    guided_pixels = png_pixels(tmp_path / "c.png")
    assert np.array_equal(guided_pixels, grid_pixels(engine_draw(model.sde, score, card.image_shape, 2, "ddim", 3)))
    assert invoke(*cond, "--scale", "0", "--out", tmp_path / "c0.png").exit_code == 0  # no guidance: other pixels
    plain = png_pixels(tmp_path / "c0.png")
    assert np.array_equal(plain, grid_pixels(engine_draw(model.sde, make_score_fn(model), card.image_shape, 2, "ddim", 3)))
    assert np.abs(plain.astype(int) - guided_pixels).mean() > 0.5  # levels of 255, padding included
    res = invoke("train", "--task", "classifier", "--sde", "vp", "--preset", "wrn-10-2", "--set", "classifier.widen=1",
                 "--image-size", "8", "--steps", "1", "--batch-size", "8", "--set", "data.num_examples=16", "--sample-every", "0",
                 "--out", tmp_path, "--name", "vp-clf", "--device", "cpu")
    assert res.exit_code == 0, res.stderr
    line = one_error_line(invoke("condition", "--model", eps_model, "--classifier", tmp_path / "vp-clf", "--class", "1",
                                 "--out", tmp_path / "c.png"))
    assert "was trained for the vp SDE" in line


# ---- hf: names in the Hugging Face cache ---------------------------------------------------------


def lay_out_cache(home: Path, repo: str, folder: Path, commit: str, refs: dict[str, str]) -> Path:
    """HF_HOME/hub/models--ORG--NAME/snapshots/<commit>/... and refs/<name> -> commit, as huggingface_hub writes them."""
    base = home / "hub" / ("models--" + repo.replace("/", "--"))
    shutil.copytree(folder, base / "snapshots" / commit)
    for name, target in refs.items():
        (base / "refs").mkdir(parents=True, exist_ok=True)
        (base / "refs" / name).write_text(target)
    return base


def test_hf_names_resolve_in_the_cache_at_main_a_tag_and_a_commit(eps_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    old, new = "a" * 40, "b" * 40
    base = lay_out_cache(home, "google/ddpm-cifar10-8", eps_model, new, {"main": new, "v1": old})
    shutil.copytree(eps_model, base / "snapshots" / old)
    assert models.resolve_model_path(Path("hf:google/ddpm-cifar10-8"), Path("runs")) == base / "snapshots" / new
    assert models.resolve_model_path("hf:google/ddpm-cifar10-8@v1", Path("runs")) == base / "snapshots" / old
    assert models.resolve_model_path("hf:google/ddpm-cifar10-8@" + old, Path("runs")) == base / "snapshots" / old
    assert models.resolve_model_path("hf:google/ddpm-cifar10-8@aaaaaaa", Path("runs")) == base / "snapshots" / old
    _, card = models.load_score_model("hf:google/ddpm-cifar10-8@v1")
    assert (card.extra["model"], card.extra["commit"], card.extra["revision"]) == ("hf:google/ddpm-cifar10-8", old, "v1")
    assert card.dataset == "cifar10"  # the name says so: evaluate's default reference and bits/dim data
    res = invoke("sample", "--model", "hf:google/ddpm-cifar10-8", "--sampler", "ddim", "--steps", "3", "-n", "2",
                 "--out", tmp_path / "s.png", "--device", "cpu")
    assert res.exit_code == 0, res.stderr


def test_a_missing_hf_model_is_one_line_naming_the_command_and_where_it_lands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    line = one_error_line(invoke("sample", "--model", "hf:google/ddpm-cifar10-32@v2", "--out", tmp_path / "s.png"))
    cache = tmp_path / "hf" / "hub"
    assert line == (f"diffuse: error: hf:google/ddpm-cifar10-32@v2 is not in the Hugging Face cache {cache}: add --download to fetch it "
                    f"(or run `hf download google/ddpm-cifar10-32 --revision v2`); it lands in {cache / 'models--google--ddpm-cifar10-32'}")
    assert "not a Hugging Face model name" in one_error_line(invoke("sample", "--model", "hf:no such/model", "--out", tmp_path / "s.png"))


def test_download_fetches_with_huggingface_hub_only_when_asked(eps_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    calls: list[dict[str, Any]] = []

    def fake_snapshot_download(repo_id: str, revision: str | None = None, cache_dir: str | None = None, **kw: Any) -> str:
        calls.append({"repo_id": repo_id, "revision": revision, "cache_dir": cache_dir, **kw})
        base = lay_out_cache(Path(cache_dir).parent, repo_id, eps_model, "c" * 40, {"main": "c" * 40})  # type: ignore[arg-type]
        return str(base / "snapshots" / ("c" * 40))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    args = ["sample", "--model", "hf:someone/ddpm-8", "--sampler", "ddim", "--steps", "2", "-n", "1", "--out", tmp_path / "s.png", "--device", "cpu"]
    one_error_line(invoke(*args))
    assert calls == []
    res = invoke(*args, "--download")
    assert res.exit_code == 0, res.stderr
    assert len(calls) == 1 and calls[0]["repo_id"] == "someone/ddpm-8" and calls[0]["cache_dir"] == str(tmp_path / "hf" / "hub")
    assert "*.safetensors" in calls[0]["allow_patterns"]
    assert invoke(*args).exit_code == 0 and len(calls) == 1  # now cached: no second download


# ---- what is refused, in one line ------------------------------------------------------------------


def test_each_unsupported_model_is_refused_in_one_line(eps_model: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    text = tmp_path / "text"
    UNet2DConditionModel(sample_size=8, block_out_channels=(16, 32), layers_per_block=1, cross_attention_dim=8, norm_num_groups=8,
                         down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).save_pretrained(text / "unet")
    DDPMScheduler().save_pretrained(text / "scheduler")
    (text / "model_index.json").write_text(json.dumps({"_class_name": "MyPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
                                                       "scheduler": ["diffusers", "DDPMScheduler"]}))
    latent = tmp_path / "latent"
    shutil.copytree(eps_model, latent)
    (latent / "model_index.json").write_text(json.dumps({"_class_name": "LDMPipeline", "vqvae": ["diffusers", "VQModel"],
                                                         "unet": ["diffusers", "UNet2DModel"], "scheduler": ["diffusers", "DDIMScheduler"]}))
    classes = tmp_path / "classes"
    DDPMPipeline(unet=small_unet(num_class_embeds=10), scheduler=DDPMScheduler()).save_pretrained(classes)
    flow = tmp_path / "flow"
    shutil.copytree(eps_model, flow)
    (flow / "scheduler" / "scheduler_config.json").write_text(json.dumps({"_class_name": "FlowMatchEulerDiscreteScheduler",
                                                                          "num_train_timesteps": 1000}))
    cases = {
        text: "unet/config.json is a UNet2DConditionModel, a text-conditional network (cross-attention on prompt embeddings), "
              "which diffuse does not support",
        latent: "LDMPipeline is a latent (a VQ-VAE) pipeline (vqvae), which diffuse does not support",
        classes: "a UNet2DModel with class embeddings (class_embed_type=None, num_class_embeds=10) is not supported",
        flow: "scheduler FlowMatchEulerDiscreteScheduler is not supported; diffuse maps the DDPM family (DDPMScheduler,",
    }
    for folder, words in cases.items():
        for cmd in (["sample", "--model", folder, "--out", tmp_path / "s.png"], ["train", "--init", folder, "--out", tmp_path / "runs"]):
            line = one_error_line(invoke(*cmd))
            assert words in line, line


def test_without_the_extra_a_diffusers_folder_says_which_extra_to_install(eps_model: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers now fails, as where the extra is not installed
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    line = one_error_line(invoke("sample", "--model", eps_model, "--out", tmp_path / "s.png"))
    assert line == 'diffuse: error: a diffusers model needs diffusers, which is not installed: pip install "diffusers-cli[diffusers]"'
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    line = one_error_line(invoke("sample", "--model", "hf:a/b", "--download", "--out", tmp_path / "s.png"))
    assert line.endswith('--download of hf:a/b needs huggingface_hub, which is not installed: pip install "diffusers-cli[diffusers]"')


def test_bin_weights_load_only_through_weights_only_torch_load_and_say_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = ddpm_folder(tmp_path / "bin", safe=False)
    assert (folder / "unet" / "diffusion_pytorch_model.bin").is_file()
    res = invoke("sample", "--model", folder, "--sampler", "ddim", "--steps", "2", "-n", "1", "--out", tmp_path / "s.png", "--device", "cpu")
    assert res.exit_code == 0, res.stderr
    # A warning of the "diffusers_cli" logger: on stderr in the CLI (Python's last-resort handler), captured here by pytest.
    notes = [r.getMessage() for r in caplog.records if r.name == "diffusers_cli"]
    assert any("diffusion_pytorch_model.bin is a .bin state dict (no safetensors beside it): read with torch.load(weights_only=True)"
               in n for n in notes), notes
    assert models.read_model_card(folder).extra["weights_format"] == "bin, read with torch.load(weights_only=True)"

    marker = tmp_path / "pwned"
    torch.save({"conv_in.weight": Exploit(marker)}, folder / "unet" / "diffusion_pytorch_model.bin")
    line = one_error_line(invoke("sample", "--model", folder, "--out", tmp_path / "s.png"))
    assert "diffusion_pytorch_model.bin is not a readable state dict (UnpicklingError" in line
    assert not marker.exists()  # the pickle's code never ran


def test_a_bare_unet_folder_needs_its_scheduler_config_beside_it(eps_model: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(eps_model / "unet", bare)
    line = one_error_line(invoke("sample", "--model", bare, "--out", tmp_path / "s.png"))
    assert "holds a model config but no scheduler_config.json beside it" in line
    shutil.copy(eps_model / "scheduler" / "scheduler_config.json", bare)
    model, card = models.load_score_model(bare)
    full, _ = models.load_score_model(eps_model)
    x, k = x_and_steps()
    with torch.no_grad():
        assert torch.equal(model.score(x, (k + 1) / 1000), full.score(x, (k + 1) / 1000))
    assert card.extra["pipeline"] is None and card.sde == models.read_model_card(eps_model).sde


# ---- fine-tuning --------------------------------------------------------------------------------


def test_train_init_fine_tunes_a_diffusers_model_and_its_card_says_where_it_came_from(eps_model: Path, tmp_path: Path) -> None:
    res = invoke("train", "--init", eps_model, "--dataset", "shapes", "--steps", "2", "--batch-size", "4", "--out", tmp_path,
                 "--name", "ft", "--sample-every", "0", "--sampler", "ddim", "--device", "cpu", "--set", "data.num_examples=16",
                 "--set", "sampler.steps=2", "--set", "sample_n=2", "--json")
    assert res.exit_code == 0, res.stderr
    run = tmp_path / "ft"
    _, card = models.load_score_model(run)
    init, init_card = models.load_score_model(eps_model)
    assert card.source == "diffuse" and card.arch == "diffusers" and card.step == 2 and card.dataset == "shapes"
    assert card.sde == init_card.sde and card.parameterization == "eps" and card.image_shape == (3, 8, 8)
    assert card.extra["init_from"]["model"] == str(eps_model) and card.extra["init_from"]["source"] == "diffusers"
    assert card.extra["init_from"]["extra"]["scheduler"] == "DDPMScheduler"
    saved = json.loads((run / "config.json").read_text())
    assert saved["init"] == str(eps_model) and saved["loss_weighting"] == "eps" and saved["data"]["image_size"] == 8
    online, _ = models.load_score_model(run, use_ema=False)
    moved = [k for k, v in online.net.state_dict().items() if not torch.equal(v, init.net.state_dict()[k])]
    assert moved  # two AdamW steps changed the weights
    line = one_error_line(invoke("train", "--init", eps_model, "--image-size", "16", "--out", tmp_path, "--name", "bad"))
    assert "fixes --image-size (the model's is (8, 8), this run asks (16, 16)); drop --image-size" in line
    res = invoke("sample", "--model", run, "--sampler", "ei", "--steps", "3", "-n", "2", "--out", tmp_path / "s.png", "--device", "cpu")
    assert res.exit_code == 0, res.stderr
    res = invoke("train", "--resume", "--name", "ft", "--out", tmp_path, "--steps", "3", "--device", "cpu")
    assert res.exit_code == 0, res.stderr
    _, resumed = models.load_score_model(run)
    assert resumed.step == 3 and resumed.extra["init_from"] == card.extra["init_from"]


def test_train_init_fine_tunes_our_own_run_too(tiny_run: Path, tmp_path: Path) -> None:
    res = invoke("train", "--init", tiny_run, "--steps", "2", "--batch-size", "4", "--out", tmp_path, "--name", "again",
                 "--sample-every", "0", "--device", "cpu", "--set", "data.num_examples=16", "--set", "sampler.name=ddim",
                 "--set", "sampler.steps=2", "--set", "sample_n=2")
    assert res.exit_code == 0, res.stderr
    _, card = models.load_score_model(tmp_path / "again")
    _, init = models.load_score_model(tiny_run)
    assert card.arch == "unet" and card.network == init.network and card.sde == init.sde
    assert card.extra["init_from"]["source"] == "diffuse" and card.extra["init_from"]["step"] == init.step
    line = one_error_line(invoke("train", "--init", tiny_run, "--preset", "small", "--out", tmp_path, "--name", "bad"))
    assert "brings its own network; drop --preset" in line


def test_hub_cache_location_follows_huggingface_hubs_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    assert hub.cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    assert hub.cache_dir() == tmp_path / "cache"
