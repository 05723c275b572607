"""Options read from signatures: a function's keyword-only parameters are the schema of its options.

A sampler, imputation method or grid declares each option once, in its signature:

    def sample_ddim(..., *, generator=None, callback=None,
                    eta: Annotated[float, Opt("0: deterministic; 1: DDPM's step", ge=0, le=1)] = 0.0) -> Tensor:

``option_specs`` reads name, type, default, choices and range from there, and
``validate_options`` checks a mapping of values against them (the CLI, config files and
``samplers.sample`` all call it), so nothing else lists an option or its limits.
"""

from __future__ import annotations

import inspect
import math
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, get_args, get_origin

from diffusers_cli.support.errors import UsageError

#: Keyword-only parameters every sampler and method takes that are plumbing, not options.
PLUMBING = frozenset({"generator", "callback"})


class OptionError(UsageError):
    """An option that a sampler or method does not take, or a value it does not accept."""


@dataclass(frozen=True)
class Opt:
    """Metadata of one option in an ``Annotated`` signature: a help line, a range, or a registry of choices."""

    help: str = ""
    ge: float | None = None  # inclusive lower bound
    gt: float | None = None  # exclusive lower bound
    le: float | None = None  # inclusive upper bound
    lt: float | None = None  # exclusive upper bound
    choices: Iterable[Any] | None = None  # allowed values (a registry dict gives its keys)


@dataclass(frozen=True)
class OptionSpec:
    """One option as its signature declares it."""

    name: str
    type: type  # bool, int, float or str
    default: Any
    help: str = ""
    choices: tuple[Any, ...] | None = None
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def limits(self) -> str:
        """The range or choices in words ('' if free), e.g. '>= 0, <= 1' or 'one of 1, 2, 3'."""
        if self.choices is not None:
            return "one of " + ", ".join(_show(c) for c in self.choices)
        bounds = [f"{op} {v:g}" for op, v in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt)) if v is not None]
        return ", ".join(bounds)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able description (for `diffuse samplers --json`)."""
        # JSON has no infinity: a non-finite default (s_tmax) is written as its text.
        default = str(self.default) if isinstance(self.default, float) and not math.isfinite(self.default) else self.default
        out: dict[str, Any] = {"name": self.name, "type": self.type.__name__, "default": default, "help": self.help,
                               "limits": self.limits()}
        if self.choices is not None:
            out["choices"] = list(self.choices)
        out.update({k: v for k, v in (("ge", self.ge), ("gt", self.gt), ("le", self.le), ("lt", self.lt)) if v is not None})
        return out


def _show(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def option_specs(fn: Callable[..., Any]) -> dict[str, OptionSpec]:
    """The options of ``fn``: its keyword-only parameters with defaults, except the plumbing ones."""
    hints = typing.get_type_hints(fn, include_extras=True)
    specs: dict[str, OptionSpec] = {}
    for name, param in inspect.signature(fn).parameters.items():
        if param.kind is not param.KEYWORD_ONLY or name in PLUMBING or param.default is param.empty:
            continue
        hint, meta = hints.get(name, type(param.default)), Opt()
        if get_origin(hint) is typing.Annotated:
            hint, *extras = get_args(hint)
            meta = next((e for e in extras if isinstance(e, Opt)), meta)
        choices = tuple(meta.choices) if meta.choices is not None else None
        if get_origin(hint) is Literal:
            choices = get_args(hint)
            hint = type(choices[0])
        base = _base_type(hint, name, fn)
        specs[name] = OptionSpec(name, base, param.default, meta.help, choices, meta.ge, meta.gt, meta.le, meta.lt)
    return specs


def _base_type(hint: Any, name: str, fn: Callable[..., Any]) -> type:
    """bool, int, float or str from a hint such as ``float`` or ``float | None``."""
    args = [a for a in get_args(hint) if a is not type(None)] if get_origin(hint) not in (None,) else [hint]
    for t in (bool, int, float, str):
        if t in args:
            return t
    raise TypeError(f"option {name!r} of {fn.__name__} has type {hint!r}; options must be bool, int, float or str")


def coerce(spec: OptionSpec, value: Any, owner: str) -> Any:
    """``value`` as the option's type, checked against its choices and range; OptionError otherwise."""
    where = f"{owner} option {spec.name}"
    if value is None and spec.default is None:
        return None
    v = value
    if spec.type is bool:
        if isinstance(v, str) and v.strip().lower() in ("true", "false", "yes", "no", "1", "0", "on", "off"):
            v = v.strip().lower() in ("true", "yes", "1", "on")
        if not isinstance(v, bool):
            raise OptionError(f"{where} is true or false, got {value!r}")
    elif spec.type is int:
        if isinstance(v, str) and v.strip().lstrip("-").isdigit():
            v = int(v)
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            raise OptionError(f"{where} is an integer, got {value!r}")
    elif spec.type is float:
        if isinstance(v, str):
            try:
                v = float(v)
            except ValueError:
                raise OptionError(f"{where} is a number, got {value!r}") from None
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise OptionError(f"{where} is a number, got {value!r}")
        v = float(v)
    elif not isinstance(v, str):
        raise OptionError(f"{where} is a string, got {value!r}")
    if spec.choices is not None and v not in spec.choices:
        raise OptionError(f"{where} must be {spec.limits()}, got {_show(value)}")
    bad = ((spec.ge is not None and v < spec.ge) or (spec.gt is not None and v <= spec.gt)
           or (spec.le is not None and v > spec.le) or (spec.lt is not None and v >= spec.lt))
    if bad:
        raise OptionError(f"{where} must be {spec.limits()}, got {_show(value)}")
    return v


def validate_options(fn: Callable[..., Any], options: Mapping[str, Any], owner: str) -> dict[str, Any]:
    """``options`` checked against ``fn``'s signature and converted to its types; OptionError names the real options."""
    return checked_options(option_specs(fn), options, owner)


def checked_options(specs: Mapping[str, OptionSpec], options: Mapping[str, Any], owner: str) -> dict[str, Any]:
    """``options`` checked against ``specs`` and converted to their types; OptionError names the real options."""
    unknown = sorted(set(options) - set(specs))
    if unknown:
        raise OptionError(f"{owner} has no option {unknown[0]!r}; its options are: {described(specs)}")
    return {k: coerce(specs[k], v, owner) for k, v in options.items()}


def described(specs: Mapping[str, OptionSpec]) -> str:
    """"name (default value), ..." of each option, or "none"."""
    return ", ".join(f"{k} (default {_show(s.default)})" for k, s in specs.items()) or "none"


V = TypeVar("V")


def registry_entry(registry: Mapping[str, V], name: str, what: str, *, error: type[Exception] = OptionError,
                   also: str = "", after: str = "") -> V:
    """``registry[name]``, or ``error`` "unknown <what> 'name'; use <also>one of <names><after>" naming every entry."""
    if name not in registry:
        raise error(f"unknown {what} {name!r}; use {also}one of {', '.join(registry)}{after}")
    return registry[name]
