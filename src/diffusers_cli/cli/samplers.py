"""`diffuse samplers`: every sampler, time grid and imputation method, with the options its signature declares."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from diffusers_cli.cli.common import emit_json, run_job


#: What --grid tuned needs, for the listing.
TUNED_NEEDS = ("times tuned to the model for this sampler and step count: make them with "
               "`diffuse tune MODEL --sampler NAME --steps N` (grids.json beside the model, or --grids FILE)")


def listing() -> dict[str, Any]:
    """Samplers, grids and imputation methods with their options, read from the engine's registries."""
    from diffusers_cli.engine.grids import GRIDS, TUNED
    from diffusers_cli.engine.imputation import METHODS
    from diffusers_cli.engine.options import option_specs
    from diffusers_cli.engine.samplers import SAMPLERS

    def opts(specs: dict[str, Any]) -> list[dict[str, Any]]:
        return [spec.as_dict() for spec in specs.values()]

    return {
        "samplers": [{"name": n, "summary": s.summary, "grid": s.grid, "options": opts(s.options())} for n, s in SAMPLERS.items()],
        "grids": [*({"name": n, "options": opts(option_specs(fn))} for n, fn in GRIDS.items()),
                  {"name": TUNED, "options": [], "needs": TUNED_NEEDS}],
        "imputation_methods": [{"name": n, "summary": m.summary, "options": opts(m.options())} for n, m in METHODS.items()],
    }


def _text(entry: dict[str, Any], indent: str = "    ") -> list[str]:
    lines = []
    for o in entry["options"]:
        default = str(o["default"]).lower() if isinstance(o["default"], bool) else o["default"]
        lines.append(f"{indent}-o {o['name']}={default}  ({o['type']}{'; ' + o['limits'] if o['limits'] else ''}) {o['help']}".rstrip())
    return lines


def samplers_command(
    json_: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """List the samplers, time grids and imputation methods, each with its options, defaults and limits."""

    def job() -> None:
        data = listing()
        if json_:
            emit_json(data)
            return
        print("samplers (diffuse sample --sampler NAME -o KEY=VALUE):")
        for s in data["samplers"]:
            print(f"  {s['name']:<6} {s['summary']}; default grid {s['grid']}")
            print("\n".join(_text(s)) or "    (no options)")
        print("time grids (--grid NAME; their options go with -o too):")
        for g in data["grids"]:
            print(f"  {g['name']}" + (f"  {g['needs']}" if "needs" in g else ""))
            print("\n".join(_text(g)) or "    (no options)")
        print("imputation methods (diffuse impute --method NAME -o KEY=VALUE):")
        for m in data["imputation_methods"]:
            print(f"  {m['name']:<11} {m['summary']}")
            print("\n".join(_text(m)) or "    (no options)")

    run_job(job)
