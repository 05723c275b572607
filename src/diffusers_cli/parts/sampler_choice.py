"""Which sampler a sampling job runs: the one given, the model card's recommendation, or the schema's default.

The rule, for a command given (sampler, steps):
- both given: they run as given;
- neither: the card's recommended sampler and steps; a card without one gets pc, 1000 steps (config.defaults);
- the sampler alone: the card's steps if it is the card's sampler, else the default steps;
- the steps alone: the card's sampler at those steps, else the default sampler.
Every result says which of these happened (``SamplerChoice.why``), so no default runs unannounced.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from pydantic import ValidationError

from diffusers_cli.checkpoints.card import ModelCard
from diffusers_cli.config.schema import SamplerConfig, format_validation_error
from diffusers_cli.engine.samplers import SAMPLERS
from diffusers_cli.support.errors import UsageError

#: ``SamplerChoice.why`` when the command was given both sampler and steps.
GIVEN = "as given"
#: ... when the model card chose both.
CARD = "the model card's recommendation"


@dataclass(frozen=True)
class SamplerChoice:
    """The sampler section a job runs, and why it is that one."""

    sampler: SamplerConfig  # what runs (options, grid and eps as the command gave them)
    why: str  # GIVEN, CARD, or a phrase naming where the sampler or the steps came from
    grid: str = ""  # the time grid that ran: a named grid, or "tuned" (the model's grids.json); "" before it is known

    def on_grid(self, grid: str) -> "SamplerChoice":
        """The same choice, saying which time grid ran (``tuned_grids.grid_name``)."""
        return replace(self, grid=grid)

    def describe(self) -> str:
        """``ei, 20 steps (the model card's recommendation), logsnr grid``: what the human summary line says."""
        note = "" if self.why == GIVEN else f" ({self.why})"
        grid = f", {self.grid} grid" if self.grid else ""
        return f"{self.sampler.name}, {self.sampler.steps} steps{note}{grid}"


def choose_sampler(s: SamplerConfig, card: ModelCard) -> SamplerChoice:
    """The sampler section to run for a command's section ``s`` on a model with ``card`` (the rule above).

    Whether the command gave a name or steps is read from ``s.model_fields_set`` (flags, config file,
    ``--set`` or a Python argument alike); a value equal to the default still counts as given.
    """
    given = s.model_fields_set & {"name", "steps"}
    rec = card.recommended if card.kind == "score" else None
    if given == {"name", "steps"}:
        return SamplerChoice(s, GIVEN)
    if rec is not None and rec.sampler not in SAMPLERS:
        # A card from a newer diffusers-cli may name a sampler this one lacks: the model stays usable.
        why = f"the model card's {rec.sampler} is not a sampler of this diffusers-cli"
        return SamplerChoice(s, why if given else f"the default sampler and steps; {why}")
    if rec is None:
        default = {"name": "the default sampler", "steps": "the default steps"}
        missing = [default[k] for k in ("name", "steps") if k not in given]
        return SamplerChoice(s, " and ".join(missing) + "; the model card recommends none")
    if not given:
        return SamplerChoice(_with(s, rec.sampler, rec.steps, card), CARD)
    if given == {"name"}:
        if s.name == rec.sampler:
            return SamplerChoice(_with(s, s.name, rec.steps, card), f"steps from the model card, which recommends {rec.sampler}")
        return SamplerChoice(s, f"the default steps; the model card's {rec.steps} are for {rec.sampler}")
    return SamplerChoice(_with(s, rec.sampler, s.steps, card), "the model card's sampler")


def _with(s: SamplerConfig, name: str, steps: int, card: ModelCard) -> SamplerConfig:
    """``s`` with another sampler and steps, its options checked again against that sampler's signature."""
    try:
        return SamplerConfig.model_validate({**s.model_dump(exclude_unset=True), "name": name, "steps": steps})
    except ValidationError as err:
        # Options given for the default sampler may not be the recommended one's (--snr is pc's alone).
        raise UsageError(f"the model card recommends the {name} sampler, which does not take what was given "
                         f"({format_validation_error(err, 'sampler').removeprefix('invalid sampler: ')}); "
                         "name the sampler with --sampler") from None
