"""A face that explains itself: real defaults and Args in help(dc.X), one keyword order, NFE in every result,
and the model card's recommended sampler used (and announced) when none is given."""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

import diffusers_cli as dc
from diffusers_cli import api
from diffusers_cli.checkpoints.card import CheckpointError, ModelCard, Recommendation
from diffusers_cli.checkpoints.weights import read_card
from diffusers_cli.cli import app
from diffusers_cli.config.schema import ConditionConfig, ImputeConfig, SampleConfig, SamplerConfig, build_config
from diffusers_cli.engine.guidance import classifier_free, guided
from diffusers_cli.engine.rng import ImageGenerators
from diffusers_cli.engine.samplers import sample
from diffusers_cli.engine.score import NFECounter
from diffusers_cli.engine.sde import VPSDE
from diffusers_cli.models import Loaded
from diffusers_cli.models.builtin import BUILTIN_MODELS, resolve
from diffusers_cli.parts.sampler_choice import CARD, GIVEN, choose_sampler
from diffusers_cli.support.errors import UsageError

runner = CliRunner()

#: The face functions that take a model and sample, with the config whose defaults they show.
SAMPLING = {"sample": SampleConfig, "condition": ConditionConfig, "impute": ImputeConfig}


def invoke(*args: object) -> Any:
    return runner.invoke(app, [str(a) for a in args])


# ---- help(dc.X) -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["load_model", "sample", "condition", "impute", "evaluate", "tune", "train", "judge"])
def test_every_face_function_documents_each_argument_and_what_it_returns(name: str) -> None:
    fn = getattr(dc, name)
    doc = inspect.getdoc(fn) or ""
    assert "Args:" in doc and "Returns:" in doc and "Raises:" in doc
    args = doc.split("Args:")[1].split("Returns:")[0]
    documented = re.findall(r"^    (\*{0,2}\w+):", args, flags=re.M)
    params = [("**" if p.kind is p.VAR_KEYWORD else "") + p.name for p in inspect.signature(fn).parameters.values()]
    assert documented == params  # every argument, in the signature's order, and nothing else
    assert not re.search(r"\{\w+\}", doc)  # every {fact} was filled in


@pytest.mark.parametrize("name", SAMPLING)
def test_signature_defaults_are_the_commands_defaults(name: str) -> None:
    # A default shown by help() is the one the command uses: read from the config schema, never retyped.
    config = SAMPLING[name]
    checked = 0
    for p in inspect.signature(getattr(dc, name)).parameters.values():
        field = config.model_fields.get(p.name) or (SamplerConfig.model_fields.get(p.name) if p.name == "final_denoise" else None)
        # trajectory: the face returns the strip (a bool), the command writes it to a file (a path).
        if field is None or p.default is inspect.Parameter.empty or p.name == "trajectory":
            continue
        expected = field.get_default(call_default_factory=True)
        if p.default is None:
            # None only where the schema's default means "decided later" (the card, the model, the data) ...
            assert p.name in ("sampler", "steps", "grid", "eps", "guidance", "label", "out", "mask_fraction", "mask_side",
                              "classifier") or expected is None, p.name
        else:
            assert p.default == expected, p.name
            checked += 1
    assert checked >= 4
    assert inspect.signature(dc.sample).parameters["batch_size"].default == 64
    assert inspect.signature(dc.impute).parameters["method"].default == "auto"


def test_help_says_what_none_means_with_the_schemas_values() -> None:
    def words(fn: Any) -> str:
        return " ".join((inspect.getdoc(fn) or "").split())

    doc = words(dc.sample)
    default = SamplerConfig()
    assert (default.name, default.steps) == ("pc", 1000)
    assert f"sampler (``model.card.recommended``; the ready-made models have one), else {default.name}." in doc
    assert f"(when it recommends this sampler), else {default.steps}." in doc
    assert "None: 2. An unconditional model" in doc  # DEFAULT_GUIDANCE
    assert "The sampler: em, pc, ddpm, ddim, euler, heun, ei, ipndm, ode." in doc  # engine.samplers.SAMPLERS, in its order
    impute_default = ImputeConfig.model_fields["sampler"].get_default(call_default_factory=True)
    assert f"None: {impute_default.name} (the model card's recommendation is not used" in words(dc.impute)
    assert f"The reverse steps of every method. None: {impute_default.steps}." in words(dc.impute)


def test_sample_condition_and_impute_take_their_arguments_in_one_order() -> None:
    assert api.COMMON_KEYWORDS == ("sampler", "steps", "grid", "eps", "final_denoise", "seed", "batch_size", "device",
                                   "out", "progress")
    required = {"sample": ["model", "n"], "condition": ["model", "label", "n"], "impute": ["model", "image", "mask"]}
    for name, first in required.items():
        params = list(inspect.signature(getattr(dc, name)).parameters.values())
        names = [p.name for p in params]
        assert names[: len(first)] == first
        assert all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params[: len(first)])
        assert params[-1].kind is inspect.Parameter.VAR_KEYWORD
        # The shared keywords close every signature, in COMMON_KEYWORDS's order (impute has no final_denoise or
        # batch_size: its n candidates are one batch, and its methods end on their own step).
        common = [n for n in names if n in api.COMMON_KEYWORDS]
        assert names[-1 - len(common):-1] == common
        assert common == [n for n in api.COMMON_KEYWORDS if n in common]
        assert set(api.COMMON_KEYWORDS) - set(common) == (set() if name != "impute" else {"final_denoise", "batch_size"})


def test_the_loaded_model_documents_its_attributes() -> None:
    doc = inspect.getdoc(dc.Model) or ""
    attributes = re.findall(r"^    (\w+):", doc.split("Attributes:")[1], flags=re.M)
    assert attributes == [f.name for f in dataclasses.fields(Loaded)]
    info = inspect.getdoc(api.RunInfo) or ""
    assert re.findall(r"^    (\w+):", info.split("Attributes:")[1], flags=re.M) == [f.name for f in dataclasses.fields(api.RunInfo)]


# ---- NFE ---------------------------------------------------------------------------------------


class CountingNet:
    """A stand-in class-conditional model: records the rows each call gives the network."""

    def __init__(self) -> None:
        self.rows: list[int] = []

    def score(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        self.rows.append(x.shape[0])
        return -x


@pytest.mark.parametrize("scale, per_step", [(2.0, 2), (1.0, 1), (0.0, 1)])
def test_nfe_counts_network_evaluations_per_image(scale: float, per_step: int) -> None:
    net = CountingNet()
    counter = NFECounter(classifier_free(net, 3, scale))  # type: ignore[arg-type]
    sample(VPSDE(), counter, (4, 1, 2, 2), "ddpm", 10, ImageGenerators.for_images(0, 0, 4))
    # ddpm: 10 steps + Tweedie's final denoising step = 11 calls; guidance at scale 2 runs the net on the
    # conditional and the "no class" copy of the batch (8 rows for 4 images), so each image costs 2 a call.
    assert len(net.rows) == 11
    assert counter.nfe == 11 * per_step == sum(net.rows) // 4
    # A classifier's gradient on top is another network: the score network's count stays.
    net2 = CountingNet()
    steered = NFECounter(guided(classifier_free(net2, 3, scale), lambda x, t: x.flatten(1).repeat(1, 2), 3, 1.0))  # type: ignore[arg-type]
    sample(VPSDE(), steered, (4, 1, 2, 2), "ddpm", 10, ImageGenerators.for_images(0, 0, 4))
    assert steered.nfe == 11 * per_step


# ---- the card's recommendation ---------------------------------------------------------------------


def card_with(rec: Recommendation | None) -> ModelCard:
    return dataclasses.replace(read_card(resolve("builtin:shapes")), recommended=rec)


def section(**given: Any) -> SamplerConfig:
    return build_config(SampleConfig, None, {f"sampler.{k}": v for k, v in given.items()}).sampler


@pytest.mark.parametrize("given, rec, expected", [
    ({}, ("ipndm", 10), ("ipndm", 10, CARD)),
    ({"name": "ei", "steps": 7}, ("ipndm", 10), ("ei", 7, GIVEN)),
    ({"name": "ipndm"}, ("ipndm", 10), ("ipndm", 10, "steps from the model card, which recommends ipndm")),
    ({"name": "ddim"}, ("ipndm", 10), ("ddim", 1000, "the default steps; the model card's 10 are for ipndm")),
    ({"steps": 6}, ("ipndm", 10), ("ipndm", 6, "the model card's sampler")),
    ({}, None, ("pc", 1000, "the default sampler and the default steps; the model card recommends none")),
    ({"steps": 3}, None, ("pc", 3, "the default sampler; the model card recommends none")),
    ({}, ("zigzag", 9), ("pc", 1000, ("the default sampler and steps; the model card's zigzag is not a sampler of this "
                                      "diffusers-cli"))),
    # A value equal to the default still counts as given: --sampler pc --steps 1000 runs exactly that.
    ({"name": "pc", "steps": 1000}, ("ipndm", 10), ("pc", 1000, GIVEN)),
])
def test_choose_sampler(given: dict[str, Any], rec: tuple[str, int] | None, expected: tuple[str, int, str]) -> None:
    choice = choose_sampler(section(**given), card_with(Recommendation(*rec) if rec else None))
    assert (choice.sampler.name, choice.sampler.steps, choice.why) == expected


def test_options_for_the_default_sampler_do_not_reach_the_recommended_one() -> None:
    with pytest.raises(UsageError, match=r"^the model card recommends the ei sampler, which does not take what was given "
                                         r"\(sampler 'ei' \(grid 'logsnr'\) has no option 'snr'; its options are: order \(default 2\), .*\); "
                                         r"name the sampler with --sampler$"):
        choose_sampler(section(options={"snr": 0.2}), card_with(Recommendation("ei", 20)))


def test_cards_without_a_recommendation_load_and_store_as_before(tmp_path: Path) -> None:
    card = read_card(resolve("builtin:mnist-classifier"))
    assert card.recommended is None
    stored = json.loads(card.to_json())
    assert "recommended" not in stored  # a card without one stores exactly what it stored before
    assert ModelCard.from_dict(stored, tmp_path).recommended is None
    rec = dataclasses.replace(card, recommended=Recommendation("ipndm", 12))
    back = ModelCard.from_dict(json.loads(rec.to_json()), tmp_path)
    assert back == rec and back.recommended == Recommendation("ipndm", 12)
    for bad in ({"sampler": "ei"}, {"sampler": "ei", "steps": 0}, {"sampler": 3, "steps": 5}, {"sampler": "ei", "steps": True}, "ei"):
        with pytest.raises(CheckpointError, match=r"invalid model card \(recommended must be"):
            ModelCard.from_dict({**stored, "recommended": bad}, tmp_path / "m.safetensors")


def test_ready_made_score_models_recommend_the_sampler_their_quality_is_measured_with() -> None:
    for name in BUILTIN_MODELS:
        card = read_card(resolve(f"builtin:{name}"))
        if card.kind != "score":  # a classifier or the judge samples nothing
            assert card.recommended is None
            continue
        assert card.recommended == Recommendation("ei", 20)
        assert card.extra["builtin"]["quality"]["sampler"] == "ei, 20 steps"


# ---- what the commands and the face say ------------------------------------------------------------------


def test_sample_says_which_sampler_ran_and_its_nfe(tmp_path: Path) -> None:
    out = tmp_path / "x.png"
    res = invoke("sample", "--model", "builtin:shapes", "-n", "2", "--out", out, "--device", "cpu")
    assert res.exit_code == 0, res.stderr
    # 20 ei steps + the final denoising step, each evaluating the net twice (classifier-free guidance at 2).
    assert re.fullmatch(rf"sampled 2 images with ei, 20 steps \(the model card's recommendation\), logsnr grid, 42 NFE, "
                        rf"\d+\.\ds; wrote 1 file\(s\): {re.escape(str(out))}\n", res.stdout), res.stdout
    res = invoke("sample", "--model", "builtin:shapes", "-n", "2", "--out", out, "--steps", "3", "--guidance", "1", "--json")
    s = json.loads(res.stdout)
    # Guidance 1 is the plain conditional score: one evaluation a step.
    assert (s["sampler"], s["steps"], s["sampler_choice"], s["nfe"]) == ("ei", 3, "the model card's sampler", 4)
    res = invoke("sample", "--model", "builtin:shapes", "-n", "2", "--out", out, "--sampler", "ddim", "--steps", "3", "--json")
    s = json.loads(res.stdout)
    assert (s["sampler"], s["steps"], s["sampler_choice"], s["nfe"]) == ("ddim", 3, GIVEN, 8)


def test_options_that_do_not_fit_the_recommended_sampler_exit_2() -> None:
    res = invoke("sample", "--model", "builtin:shapes", "-n", "1", "--snr", "0.2", "--out", "unused.png")
    assert res.exit_code == 2
    assert res.stderr.strip().splitlines() == [res.stderr.strip()]
    assert res.stderr.startswith("diffuse: error: the model card recommends the ei sampler, which does not take")


def test_condition_says_which_sampler_ran(tmp_path: Path) -> None:
    res = invoke("condition", "--model", "builtin:shapes", "--class", "ring", "-n", "2", "--out", tmp_path / "c.png")
    assert res.exit_code == 0, res.stderr
    # condition's classifier-free scale defaults to 1: one evaluation a step.
    assert re.fullmatch(r"wrote .*c\.png: 2 x class \d \(ring\) with ei, 20 steps \(the model card's recommendation\), logsnr grid, "
                        r"21 NFE, \d+\.\ds\n", res.stdout), res.stdout


def test_face_results_carry_what_ran() -> None:
    model = dc.load_model("builtin:shapes")
    x = dc.sample(model, 2, steps=4, device="cpu")
    assert x.shape == (2, 3, 16, 16)
    assert (x.info.sampler, x.info.steps, x.info.why, x.info.nfe) == ("ei", 4, "the model card's sampler", 10)
    y = dc.condition(model, "ring", 2, sampler="ddim", steps=3, scale=2.0)
    assert (y.info.sampler, y.info.steps, y.info.why, y.info.nfe) == ("ddim", 3, GIVEN, 8)
    z = dc.impute(model, torch.zeros(3, 16, 16), "half", method="replacement", sampler="ddim", steps=3)
    # Impute has no guidance: the unconditional ("no class") score, one evaluation a step, + denoising.
    assert (z.info.sampler, z.info.steps, z.info.why, z.info.nfe) == ("replacement (ddim)", 3, GIVEN, 4)


@pytest.mark.parametrize("command", ["sample", "condition"])
def test_command_help_says_the_card_wins_then_the_schemas_default(command: str) -> None:
    res = invoke(command, "--help")
    text = " ".join(res.stdout.replace("│", " ").split())
    default = SamplerConfig()
    assert f"Default: the model card's recommendation (`diffuse models` shows the ready-made models'), else {default.name};" in text
    assert f"Default: the model card's, when it recommends this sampler, else {default.steps}." in text
