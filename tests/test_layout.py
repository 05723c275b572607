"""The package's layout shows its layers (DESIGN.md, "Layers"): folders with a docstring each, no module loose at the
top but the faces, no import circle, and no import from a layer above (read from the source, nothing imported)."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "diffusers_cli"
#: Top to bottom; a module may import its own layer and those below it. support/ is the floor (errors, atomic files,
#: image reading) that the engine uses too; config/, data/ and checkpoints/ share one level.
LAYERS: dict[str, int] = {
    "cli": 7, "jobs": 6, "parts": 5, "models": 4, "run": 3, "config": 2, "data": 2, "checkpoints": 2,
    "engine": 1, "support": 0,
}
FACES = {"__init__", "__main__", "api"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = ("diffusers_cli", *path.relative_to(PKG).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """First-party modules each module imports, at any depth of its code (lazy imports count: they still couple)."""
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("diffusers_cli"):
                for alias in node.names:
                    whole = f"{node.module}.{alias.name}"
                    found.add(whole if whole in modules else node.module or "")
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("diffusers_cli")}
        edges[name] = found & set(modules)
    # The one upward edge allowed: `import diffusers_cli as dc` reaches the Python face lazily.
    edges["diffusers_cli"].discard("diffusers_cli.api")
    return edges


def _layer(module: str) -> tuple[str, int]:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in FACES:
        return "face", 9
    return parts[1], LAYERS[parts[1]]


def test_no_module_lies_loose_at_the_top_but_the_faces() -> None:
    loose = {p.stem for p in PKG.glob("*.py")}
    assert loose == FACES
    folders = {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set(LAYERS)


def test_every_folder_says_its_job() -> None:
    for init in PKG.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and len(doc) > 30, f"{init.relative_to(PKG)} has no docstring saying what the folder is for"


def test_no_import_reaches_a_layer_above() -> None:
    edges = _imports(_modules())
    upward = sorted((m, w) for m, ws in edges.items() for w in ws if w != "diffusers_cli" and _layer(w)[1] > _layer(m)[1])
    assert upward == []
    siblings = sorted((m, w) for m, ws in edges.items() for w in ws
                      if _layer(m)[0] == _layer(w)[0] == "jobs" and m != w)
    assert siblings == []  # jobs do not import each other (DESIGN.md): shared pieces live in parts/


def test_no_import_circle() -> None:
    edges = _imports(_modules())
    # Tarjan's strongly connected components, iteratively: any component of two or more modules is a circle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []
    counter = 0
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    circles.append(sorted(component))
    assert circles == []


def test_names_users_imported_from_the_engine_before_the_refold_still_import() -> None:
    # The refold kept diffusers_cli.engine.* working; these two names became registries and are read from them.
    from diffusers_cli.engine.losses import WEIGHTINGS
    from diffusers_cli.engine.masks import MASK_KINDS

    assert WEIGHTINGS == ("edm", "eps", "likelihood", "min-snr")
    assert MASK_KINDS == ("box", "outpaint", "half", "random-pixels")
