"""The forward processes' configs: SDE_CONFIGS, the registry of SDE kinds (each builds its engine SDE).

Importable without torch and without the job configs, so that `diffuse train --help` lists the kinds from here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, get_args

from pydantic import Field, PositiveFloat, PositiveInt, model_serializer, model_validator

from diffusers_cli.config.base import ConfigError, Strict

if TYPE_CHECKING:  # the engine (torch) is imported only when a config is built into objects
    from diffusers_cli.engine.sde import SDE


# ---- the forward process -------------------------------------------------------------


class _SDEConfigBase(Strict):
    """What every SDE config shares: it equals its own JSON form, as model cards and config files store it."""

    def __eq__(self, other: object) -> bool:
        # A card's SDE was a plain dict before it was typed; comparing it with one (a stored card, a test's
        # expectation) still means "the same SDE".
        if isinstance(other, dict):
            return bool(self.model_dump(mode="json") == other)
        return bool(super().__eq__(other))


class VEConfig(_SDEConfigBase):
    """Variance-exploding SDE."""

    kind: Literal["ve"] = "ve"
    sigma_min: PositiveFloat = 0.01
    sigma_max: PositiveFloat = 50.0

    @model_validator(mode="after")
    def _order(self) -> "VEConfig":
        if self.sigma_min >= self.sigma_max:
            raise ValueError("sigma_min must be smaller than sigma_max")
        return self

    def build(self) -> "SDE":
        """The engine's VE SDE."""
        from diffusers_cli.engine.sde import VESDE

        return VESDE(sigma_min=self.sigma_min, sigma_max=self.sigma_max)


#: The beta schedules of VP, subVP and DDPM (``_Scheduled.schedule_obj`` builds each).
ScheduleName = Literal["linear", "cosine"]
SCHEDULES: tuple[str, ...] = get_args(ScheduleName)


class _Scheduled(_SDEConfigBase):
    schedule: ScheduleName = "linear"
    beta_min: PositiveFloat = 0.1
    beta_max: PositiveFloat = 20.0
    cosine_s: float = Field(0.008, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _order(self) -> "_Scheduled":
        if self.beta_min >= self.beta_max:
            raise ValueError("beta_min must be smaller than beta_max")
        return self

    def schedule_obj(self) -> Any:
        """The engine's beta schedule (linear or cosine)."""
        from diffusers_cli.engine.schedules import CosineSchedule, LinearSchedule

        if self.schedule == "cosine":
            return CosineSchedule(s=self.cosine_s)
        return LinearSchedule(beta_min=self.beta_min, beta_max=self.beta_max)


class VPConfig(_Scheduled):
    """Variance-preserving SDE."""

    kind: Literal["vp"] = "vp"

    def build(self) -> "SDE":
        """The engine's VP SDE."""
        from diffusers_cli.engine.sde import VPSDE

        return VPSDE(self.schedule_obj())


class SubVPConfig(_Scheduled):
    """Sub-VP SDE."""

    kind: Literal["subvp"] = "subvp"

    def build(self) -> "SDE":
        """The engine's sub-VP SDE."""
        from diffusers_cli.engine.sde import SubVPSDE

        return SubVPSDE(self.schedule_obj())


class DDPMConfig(_Scheduled):
    """DDPM: the discrete T-step chain, of a named schedule or of an explicit table of betas (a diffusers scheduler's)."""

    kind: Literal["ddpm"] = "ddpm"
    num_steps: PositiveInt = 1000
    # The chain's betas as a table (diffusers' scaled_linear, sigmoid or trained_betas); replaces the schedule.
    betas: list[Annotated[float, Field(gt=0.0, lt=1.0)]] | None = None

    @model_validator(mode="before")
    @classmethod
    def _steps_of_table(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("betas") is not None:
            given = data.get("num_steps")
            if given is not None and int(given) != len(data["betas"]):
                raise ValueError(f"num_steps {given} disagrees with the {len(data['betas'])} betas of the table")
            data = {**data, "num_steps": len(data["betas"])}
        return data

    @model_serializer(mode="wrap")
    def _without_empty_table(self, handler: Any) -> Any:
        # Cards and configs of named schedules stay as they were before tables existed (condition compares them).
        out = handler(self)
        if isinstance(out, dict) and out.get("betas") is None:
            out.pop("betas", None)
        return out

    def build(self) -> "SDE":
        """The engine's discrete DDPM chain."""
        from diffusers_cli.engine.schedules import TabulatedSchedule
        from diffusers_cli.engine.sde import DDPM

        if self.betas is not None:
            return DDPM(TabulatedSchedule(self.betas), num_steps=self.num_steps)
        return DDPM(self.schedule_obj(), num_steps=self.num_steps)


#: The SDE kinds: each config class builds its own SDE. A new kind is one engine class and one class here.
SDE_CONFIGS = (VEConfig, VPConfig, SubVPConfig, DDPMConfig)
SDEConfig = Annotated[Union[SDE_CONFIGS], Field(discriminator="kind")]
SDE_KINDS: tuple[str, ...] = tuple(get_args(c.model_fields["kind"].annotation)[0] for c in SDE_CONFIGS)


def sde_config(data: Any) -> "VEConfig | VPConfig | SubVPConfig | DDPMConfig":
    """An SDE config from its JSON form (a card's, a config file's); ConfigError naming the first problem otherwise."""
    from pydantic import TypeAdapter, ValidationError

    if not isinstance(data, dict) or data.get("kind") not in SDE_KINDS:
        got = f"kind {data.get('kind')!r}" if isinstance(data, dict) else f"a {type(data).__name__}"
        raise ConfigError(f"an SDE config is an object whose kind is one of {', '.join(SDE_KINDS)}, got {got}")
    try:
        return TypeAdapter(SDEConfig).validate_python(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{where + ': ' if where else ''}{first['msg']}") from None
