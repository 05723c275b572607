"""`diffuse models`: the ready-made models shipped in the package (`--model builtin:NAME`), read from their cards."""

from __future__ import annotations

from typing import Annotated

import typer

from diffusers_cli.cli.common import emit_json, run_job


#: Card figures that are shares of samples or images, shown as percentages.
_SHARES = ("recognised", "accuracy")


def _figure(key: str, value: object) -> str:
    """One card figure as a reader wants it: shares as percentages, the rest as written."""
    if isinstance(value, float) and any(word in key for word in _SHARES):
        return f"{key.replace('_', ' ')} {100 * value:.1f} %"
    return f"{key.replace('_', ' ')} {value}"


def _quality_line(quality: dict[str, object]) -> str:
    """The card's headline figures, one short clause."""
    return "; ".join(_figure(k, v) for k, v in quality.items() if not isinstance(v, (dict, list)))


def models_command(
    json_: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """List the ready-made models (`--model builtin:NAME`): what each is, its recipe, size and measured quality."""

    def job() -> None:
        from diffusers_cli.models.builtin import BUILTIN_MODELS, describe

        rows = [describe(name) for name in BUILTIN_MODELS]
        if json_:
            emit_json({"models": rows})
            return
        for row in rows:
            c, h, w = row["image_shape"]
            size = f"{row['size_bytes'] / 1e6:.1f} MB {row['dtype'] or ''}".strip()
            print(f"{row['name']:<26} {row['description']}")
            print(f"{'':<26} {row['kind']}, {c}x{h}x{w}, {row['sde']['kind']} SDE, {row['parameters']:,} parameters, {size}; "
                  f"trained {row['training_steps']} steps on {row['data']}"
                  + (f" in {row['train_seconds']:.0f} s on {row['train_threads']} thread(s) of {row['cpu']}" if row["train_seconds"] else ""))
            if row["recommended"]:
                rec = row["recommended"]
                print(f"{'':<26} recommends: {rec['sampler']}, {rec['steps']} steps (what `diffuse sample` runs when given neither)")
            if row["tuned_grids"]:
                grids = sorted(row["tuned_grids"], key=lambda g: g["steps"])
                kept = [str(g["steps"]) for g in grids if g["kept"]]
                cost = sum(g["seconds"] or 0.0 for g in grids)
                used = (f"used by default at {', '.join(kept)} steps (elsewhere the default grid won)" if kept
                        else "the default grid won at each, so it is what runs")
                print(f"{'':<26} tuned grids: {grids[0]['sampler']} at {', '.join(str(g['steps']) for g in grids)} steps "
                      f"({cost:.0f} s to make); {used}")
            if row["quality"]:
                print(f"{'':<26} measured: {_quality_line(row['quality'])}")

    run_job(job)
