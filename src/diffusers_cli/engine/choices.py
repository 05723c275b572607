"""The engine's fixed choices (time sampling, LR decay, EMA profile, parameterisation, trace probe), written once.

Each is a ``Literal`` the engine checks against, the configs take as a field type and the CLI's help lists with
``listed``: importable without torch, so `diffuse train --help` reads them from here.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

#: How training draws noise levels (engine.objectives).
TimeSampling = Literal["lognormal", "uniform", "importance"]
#: The learning rate after warm-up (engine.training.lr_at): constant, or to 0 at the last step.
LrDecay = Literal["none", "cosine", "linear"]
#: The EMA of the weights (engine.training.EMA): a fixed decay, or EDM2's power profile.
EmaProfile = Literal["exponential", "power"]
#: What a score network outputs (engine.score): EDM's preconditioned F, the noise, the score, x0 or v.
Parameterization = Literal["edm", "eps", "score", "x0", "v"]
#: The likelihood's trace estimator (engine.likelihood): Hutchinson's two, or the exact trace.
Probe = Literal["rademacher", "gaussian", "exact"]


def names(choice: Any) -> tuple[str, ...]:
    """The names a ``Literal`` choice admits, in their order."""
    return tuple(str(a) for a in get_args(choice))


def listed(choice: Any, last: str = "or") -> str:
    """The names as prose: "a, b or c" (``last`` joins the final two)."""
    *head, tail = names(choice)
    return f"{', '.join(head)} {last} {tail}" if head else tail
