"""The recipes of the ready-made models shipped in the package (``--model builtin:NAME``): train, measure, pack.

Anyone can rerun them; each stage reads what the one before wrote under ``--work`` (default runs/builtin):

    python examples/builtin_models.py train [--only mnist]   # diffuse train, one CPU thread per model
    python examples/builtin_models.py pack  [--only mnist]   # EMA weights in fp16 + card, measured, -> the package
    python examples/builtin_models.py grids [--only mnist]   # tuned grids at 3-10 steps, judged, -> the package's grids.json
    python examples/builtin_models.py judge [--only mnist]   # judge the package's tuned grids not judged yet

``pack`` keeps the EMA weights alone, in fp16, writes the card (recipe, data, commit, parameters), then
measures the packed file itself, as users get it: the judge's recognised share and judge FD of 256
samples (benchmarks/shapes_quality.py's measure; for a classifier, of builtin:mnist guided by it), and
bits/dim by `diffuse evaluate --metrics bpd`. The figures go into the card, which `diffuse models` shows.

MNIST models train on the real MNIST *test* split (10,000 digits; the IDX files `--download` fetches): that is all the
data the project has offline, and each card says so. The judge (benchmarks/shapes_judge.py) is trained on
9,000 of the same digits, so its figures say how legible samples are, not how well a model generalises.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import diffusers_cli as dc

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist"
PACKAGE_DIR = ROOT / "src" / "diffusers_cli" / "models" / "weights"
sys.path.insert(0, str(ROOT / "benchmarks"))


@dataclass(frozen=True)
class Recipe:
    """One ready-made model: what it is, the `diffuse train` flags that make it, and how it is judged."""

    description: str  # one line for `diffuse models`
    train: list[str]  # `diffuse train` arguments (the run name and --out are added)
    judge: dict[str, Any] = field(default_factory=dict)  # how `pack` samples it: sampler, steps, scales
    goes_with: str | None = None  # a classifier: the builtin score model it guides


MNIST_DATA = ["--dataset", "mnist", "--data-dir", str(MNIST), "--split", "test", "--image-size", "28"]

RECIPES: dict[str, Recipe] = {
    "shapes": Recipe(
        "class-conditional 16x16 shapes (the Quickstart's model): VP SDE, tiny U-Net, classifier-free guidance",
        ["--image-size", "16", "--steps", "1000", "--lr", "3e-3", "--class-conditional"],
        {"sampler": "ei", "steps": 20},
    ),
    "shapes-ve": Recipe(
        "class-conditional 16x16 shapes on the VE SDE (sigma 0.01..50), for comparing SDEs",
        ["--image-size", "16", "--steps", "1000", "--lr", "3e-3", "--class-conditional", "--sde", "ve"],
        {"sampler": "ei", "steps": 20},
    ),
    "shapes-subvp": Recipe(
        "class-conditional 16x16 shapes on the sub-VP SDE, for comparing SDEs",
        ["--image-size", "16", "--steps", "1000", "--lr", "3e-3", "--class-conditional", "--sde", "subvp"],
        {"sampler": "ei", "steps": 20},
    ),
    "shapes-classifier": Recipe(
        "noise-aware WideResNet (wrn-10-2) of the five shapes at 16x16 on the VP SDE, for `diffuse condition --classifier` "
        "with builtin:shapes",
        ["--task", "classifier", "--preset", "wrn-10-2", "--image-size", "16", "--steps", "2500", "--lr", "1e-3",
         "--lr-decay", "cosine"],
        {"sampler": "ei", "steps": 20, "sweeps": [(None, [1, 2, 4, 8])]},
        goes_with="shapes",
    ),
    "mnist": Recipe(
        "class-conditional 28x28 MNIST digits: VP SDE, tiny U-Net, classifier-free guidance (trained on MNIST's test split)",
        [*MNIST_DATA, "--batch-size", "32", "--steps", "3000", "--lr", "1e-3", "--lr-decay", "cosine", "--class-conditional"],
        {"sampler": "ei", "steps": 20},
    ),
    "mnist-classifier": Recipe(
        "noise-aware WideResNet (wrn-10-2) of MNIST digits on the VP SDE, for `diffuse condition --classifier` "
        "with builtin:mnist (trained on MNIST's test split)",
        ["--task", "classifier", "--preset", "wrn-10-2", *MNIST_DATA, "--batch-size", "64", "--steps", "2500",
         "--lr", "1e-3", "--lr-decay", "cosine"],
        {"sampler": "ei", "steps": 20, "sweeps": [(1.0, [2, 4, 8]), (None, [8])]},
        goes_with="mnist",
    ),
}


def run_dir(work: Path, name: str) -> Path:
    """Where the recipe's training run lives."""
    return work / name


def train(name: str, work: Path) -> None:
    """Train one recipe with one CPU thread (so that two recipes can share a 2-core machine)."""
    cmd = ["diffuse", "train", *RECIPES[name].train, "--name", name, "--out", str(work), "--sample-every", "0", "--json"]
    at = commit()
    t0 = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, env=env)
    (work / name / "recipe.json").write_text(json.dumps({"command": cmd, "seconds": round(time.perf_counter() - t0, 1),
                                                         "threads": 1, "commit": at}, indent=2))


def commit() -> str:
    """The commit a recipe trained at (with '+changes' when src/ had uncommitted changes)."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return head + ("+changes" if dirty else "")


#: Where a user's copy of MNIST lies (`--download` fetches it there): cards name it, not this machine's path.
USER_MNIST = "data/mnist"


def as_user_runs(args: list[str]) -> list[str]:
    """A recipe's arguments as a user runs them: MNIST from data/mnist, fetched by --download (the same IDX files)."""
    return [a for arg in args for a in ([USER_MNIST, "--download"] if arg == str(MNIST) else [arg])]


def data_line(card_dataset: str, train_args: list[str]) -> str:
    """What the model was trained on, in words."""
    if card_dataset == "mnist":
        return f"the MNIST test split (10,000 digits; --download fetches it into {USER_MNIST})"
    return f"{card_dataset} generated in-process (seed 0)"


def judged(x: torch.Tensor, labels: torch.Tensor, judge: torch.nn.Module, real: torch.Tensor) -> dict[str, float]:
    """Recognised share, share recognised as the class asked, and judge FD of samples x."""
    from shapes_judge import judge_images
    from shapes_quality import judge_fd

    cls, ok = judge_images(judge, x)
    return {"recognised": round(ok.float().mean().item(), 4),
            "recognised_as_asked": round((ok & (cls == labels)).float().mean().item(), 4),
            "judge_fd": round(judge_fd(judge, x, real), 2)}


def measure(name: str, path: Path, work: Path, n: int = 256) -> dict[str, Any]:
    """The packed model's quality: judged samples at its recipe's sampler (and bits/dim of a score model)."""
    from shapes_judge import cached_judge
    from shapes_quality import load_real

    from diffusers_cli.models import load_classifier, load_score_model
    from diffusers_cli.config.defaults import DEFAULT_GUIDANCE
    from diffusers_cli.engine.guidance import classifier_fn, classifier_free, cycle_labels, guided
    from diffusers_cli.engine.rng import ImageGenerators
    from diffusers_cli.engine.samplers import sample
    from diffusers_cli.engine.score import make_score_fn

    recipe = RECIPES[name]
    score_path = path if recipe.goes_with is None else PACKAGE_DIR / f"{recipe.goes_with}.safetensors"
    model, card = load_score_model(score_path)
    judge, acc, real_share = cached_judge(card.image_hw[0], work / f"judge-{card.dataset}-{card.image_hw[0]}.safetensors",
                                          card.dataset, MNIST)
    real = load_real(card.dataset, card.image_hw[0], card.channels, MNIST, n)
    labels = cycle_labels(0, n, card.num_classes)
    sampler, steps = recipe.judge["sampler"], recipe.judge["steps"]

    def draw(score_fn: Any) -> torch.Tensor:
        # Per-image generators, as `diffuse sample --seed 0` draws them.
        return sample(model.sde, score_fn, (n, *card.image_shape), sampler, steps, ImageGenerators.for_images(0, 0, n))

    out: dict[str, Any] = {"n": n, "sampler": f"{sampler}, {steps} steps", "seed": 0,
                           "judge_accuracy_on_real": round(acc, 4), "real_recognised": round(real_share, 4)}
    if recipe.goes_with is None:
        out.update({"guidance": DEFAULT_GUIDANCE, **judged(draw(classifier_free(model, labels, DEFAULT_GUIDANCE)), labels, judge, real)})
        out["unconditional_recognised"] = judged(draw(classifier_free(model, labels, 0.0)), labels, judge, real)["recognised"]
        out.update(bits_per_dim(path, card.dataset))
    else:
        net, sde, _ = load_classifier(path)
        # `diffuse condition --classifier` steers the unconditional score, or with --guidance G the model's
        # classifier-free guided one (G = 1: p(x | y)); the recipe says which bases to sweep.
        sweep = []
        for base_guidance, scales in recipe.judge["sweeps"]:
            base = make_score_fn(model) if base_guidance is None else classifier_free(model, labels, base_guidance)
            sweep += [{"guidance": base_guidance, "scale": s,
                       **judged(draw(guided(base, classifier_fn(net, sde), labels, s)), labels, judge, real)} for s in scales]
        best = min((r for r in sweep if r["recognised_as_asked"] >= 0.95), key=lambda r: (r["guidance"] is None, r["scale"]),
                   default=max(sweep, key=lambda r: r["recognised_as_asked"]))
        out.update({"guides": f"builtin:{recipe.goes_with}", "scale": best["scale"], "guidance": best["guidance"],
                    "recognised_as_asked": best["recognised_as_asked"], "recognised": best["recognised"],
                    "judge_fd": best["judge_fd"], "scale_sweep": sweep})
    return out


def bits_per_dim(path: Path, dataset: str, examples: int = 128) -> dict[str, Any]:
    """bits/dim of the packed model by `diffuse evaluate --metrics bpd` on the first examples of its data."""
    cmd = ["diffuse", "evaluate", "--model", str(path), "--metrics", "bpd", "--bpd-examples", str(examples), "--json"]
    if dataset == "mnist":
        cmd += ["--data-dir", str(MNIST), "--bpd-split", "test"]
    res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    return {"bits_per_dim": round(res["bpd"]["mean"], 4), "bits_per_dim_examples": examples}


def pack(name: str, work: Path) -> Path:
    """EMA weights in fp16 with a card that records the recipe and, after measuring the packed file, its quality."""
    from diffusers_cli.checkpoints.card import ModelCard
    from diffusers_cli.checkpoints.weights import load_model, save_model, subset

    recipe = RECIPES[name]
    tensors, card = load_model(work / name / "model.safetensors")
    ema = {f"ema.{k}": v.to(torch.float16) for k, v in subset(tensors, "ema").items()}
    trained = json.loads((work / name / "recipe.json").read_text())
    info: dict[str, Any] = {
        "description": recipe.description,
        "recipe": "diffuse train " + " ".join(as_user_runs(recipe.train)) + f"  (examples/builtin_models.py, recipe {name!r})",
        "train_seconds": trained["seconds"], "train_threads": trained["threads"], "cpu": cpu_name(),
        "data": data_line(card.dataset, recipe.train), "commit": trained["commit"], "dtype": "fp16",
        "goes_with": f"builtin:{recipe.goes_with}" if recipe.goes_with else None,
    }
    # A score model recommends the sampler its quality below is measured with: what `diffuse sample` runs by default.
    card = ModelCard(**{**card.__dict__, "recommended": recommendation(recipe)})
    PACKAGE_DIR.mkdir(parents=True, exist_ok=True)
    final = PACKAGE_DIR / f"{name}.safetensors"
    with tempfile.TemporaryDirectory() as tmp:
        draft = Path(tmp) / f"{name}.safetensors"
        save_model(draft, ema, ModelCard(**{**card.__dict__, "extra": {"builtin": info}}))
        # The network's parameters, as `dc.load_model` counts them (buffers such as the Fourier features left out).
        info["parameters"] = sum(p.numel() for p in dc.load_model(draft).net.parameters())
        info["quality"] = measure(name, draft, work)
    save_model(final, ema, ModelCard(**{**card.__dict__, "extra": {"builtin": info}}))
    print(json.dumps({"model": f"builtin:{name}", "bytes": final.stat().st_size, **info}, indent=2))
    return final


#: The step counts the ready-made models ship tuned grids for (`diffuse sample --steps N` uses them by default).
GRID_STEPS = tuple(range(3, 11))


def grid_sampler(card: Any) -> str:
    """The sampler a model's grids are tuned for: the one its card recommends (ipndm where it names none)."""
    return card.recommended.sampler if card.recommended is not None else "ipndm"


#: The tuner's settings per model, where not `diffuse tune`'s defaults: MNIST's 28x28 net costs 4x a 16x16 one per
#: image, so one local-search round and a 32-image held-out check keep its grids to minutes on a CPU.
GRID_TUNING: dict[str, dict[str, int]] = {"mnist": {"rounds": 1, "holdout": 32}}


def grids(name: str, work: Path, n: int = 256, steps: tuple[int, ...] = GRID_STEPS) -> None:
    """Tuned grids of a score model at ``steps`` for its recommended sampler, judged, into the package's grids.json.

    Each grid is found by `diffuse tune` (its default objective, and its held-out check: a winner that does not
    beat the default grid on other noise is not kept). A grid the tuner keeps must then pass the judge's gate, as
    `diffuse tune --judge` gates it (a clear win on noise of its own), and be judged as `pack` judges the model (n
    samples, per-image seeds 0..n-1, every class in turn, guided) beside the default grid on the same noise: if its
    recognised share is lower, or its judge FD higher, by more than the standard error of the gap, it is marked not
    kept too (``judge_entries``). `sample`, `condition` and `evaluate` use a kept grid when none is asked for; a grid
    not kept stays in the file (`--grid tuned` reaches it) with the figures that rejected it.
    """
    from diffusers_cli.models import load_score_model

    if RECIPES[name].goes_with is not None:
        return  # a classifier has no sampler of its own
    target = PACKAGE_DIR / "grids.json"
    sampler = grid_sampler(load_score_model(f"builtin:{name}")[1])
    t0 = time.perf_counter()
    entries = dc.tune(f"builtin:{name}", sampler=sampler, steps=list(steps), grids=target, **GRID_TUNING.get(name, {}))
    judge_entries(name, entries, target, work, n)
    print(f"builtin:{name}: {len(entries)} grids in {time.perf_counter() - t0:.0f} s -> {target}")


def judge_shipped(name: str, work: Path) -> None:
    """The ``judge`` stage: gate and judge the package's grids of ``builtin:NAME`` that are kept but not yet gated or judged."""
    from diffusers_cli.parts.tuned_grids import read_entries

    target = PACKAGE_DIR / "grids.json"
    judge_entries(name, [e for e in read_entries(target) if e.get("model") == f"builtin:{name}"], target, work)


def grid_judge(name: str, work: Path, n: int = 256) -> Any:
    """A function (sampler, steps, times) -> ``judged_gap`` of that grid against the default grid on ``builtin:NAME``.

    As ``pack`` judges the model: n samples, per-image seeds 0..n-1, every class in turn, at the default guidance.
    """
    from shapes_judge import cached_judge
    from shapes_quality import load_real

    from diffusers_cli.config.defaults import DEFAULT_GUIDANCE
    from diffusers_cli.engine.guidance import classifier_free, cycle_labels
    from diffusers_cli.engine.rng import ImageGenerators
    from diffusers_cli.engine.samplers import sample
    from diffusers_cli.models import load_score_model
    from diffusers_cli.parts.judging import judged_gap

    model, card = load_score_model(f"builtin:{name}")
    model.requires_grad_(False)
    judge, _, _ = cached_judge(card.image_hw[0], work / f"judge-{card.dataset}-{card.image_hw[0]}.safetensors", card.dataset, MNIST)
    real = load_real(card.dataset, card.image_hw[0], card.channels, MNIST, n)
    score_fn = classifier_free(model, cycle_labels(0, n, card.num_classes), DEFAULT_GUIDANCE)

    def judged(sampler: str, steps: int, times: list[float] | None) -> dict[str, Any]:
        # times None: the default grid on both sides (a grid not kept), so every gap is zero.
        tuned = torch.tensor(times, dtype=torch.float64) if times is not None else None
        with torch.no_grad():
            x = {grid: sample(model.sde, score_fn, (n, *card.image_shape), sampler, steps,
                              ImageGenerators.for_images(0, 0, n), grid=grid_times)
                 for grid, grid_times in (("tuned", tuned), ("default", None))}
        return judged_gap(x["tuned"], x["default"], judge, real)

    return judged


def grid_gate(name: str, work: Path, judge_model: str | None = None, n: int = 256) -> Any:
    """A function (sampler, steps, tuning seed, tuned times) -> (kept?, figures): the gate `diffuse tune --judge`
    puts on a grid of ``builtin:NAME``, against the sampler's default grid.

    ``parts.judging.grid_check`` on n images of its own noise, with the benchmarks' judge of the model's data (or
    ``judge_model``, a packaged judge such as builtin:mnist-judge) and n real test images.
    """
    from shapes_judge import cached_judge

    from diffusers_cli.config.defaults import DEFAULT_GUIDANCE
    from diffusers_cli.config.schema import SamplerConfig
    from diffusers_cli.engine.grids import time_grid
    from diffusers_cli.engine.samplers import check_sampler
    from diffusers_cli.models import load_score_model
    from diffusers_cli.parts.judging import grid_check, load_judge, real_images

    model, card = load_score_model(f"builtin:{name}")
    model.requires_grad_(False)
    if judge_model is None:
        judge = cached_judge(card.image_hw[0], work / f"judge-{card.dataset}-{card.image_hw[0]}.safetensors", card.dataset, MNIST)[0]
    else:
        judge = load_judge(judge_model)[0]
    real = real_images(card.dataset, card.image_hw[0], card.channels, n, MNIST if card.dataset == "mnist" else None)
    def gate(sampler: str, steps: int, seed: int, times: list[float]) -> tuple[bool, dict[str, Any]]:
        default = time_grid(model.sde, steps, check_sampler(sampler).grid, model.sde.eps)
        check = grid_check(model, card, SamplerConfig(name=sampler, steps=steps), judge, real, n, seed, DEFAULT_GUIDANCE)
        return check(torch.tensor(times, dtype=torch.float64), default)

    return gate


def judge_entries(name: str, entries: list[dict[str, Any]], target: Path, work: Path, n: int = 256) -> None:
    """Two checks of each kept grid of ``builtin:NAME``; a grid that fails either is not kept.

    First the gate `diffuse tune --judge` makes (``grid_gate``: a clear win on n images of other noise), recorded as
    ``judge_gate``; it reads only the grid and the tuning seed, so gating a grid tuned earlier equals tuning it with
    the gate. Then the grid is judged beside the default grid on the evaluation's own noise (``grid_judge``), and a
    loss beyond one SE there drops it too (``judged``). ``grids``' last step; the ``judge`` stage runs both on the
    entries already in the package's grids.json.
    """
    from diffusers_cli.parts.judging import lost
    from diffusers_cli.parts.tuned_grids import write_entry

    gate, judge_grid = grid_gate(name, work, n=n), grid_judge(name, work, n)
    for entry in entries:
        if entry["kept"] and "judge_gate" not in entry:
            ok, figures = gate(entry["sampler"], entry["steps"], entry.get("seed", 0), entry["times"])
            entry = {**entry, "judge_gate": {**figures, "judge": f"benchmarks/shapes_judge.py ({entry['model']}'s data)"},
                     "kept": ok}
            write_entry(target, entry)
        if entry["kept"] and "judged" not in entry:
            j = judge_grid(entry["sampler"], entry["steps"], entry["times"])
            entry = {**entry, "judged": j, "kept": not lost(j)}
            write_entry(target, entry)
        print(f"builtin:{name} {entry['sampler']} {entry['steps']} steps: kept {entry['kept']} "
              f"{json.dumps(entry.get('judged') or entry.get('judge_gate') or entry.get('held_out'))}", flush=True)


def recommendation(recipe: Recipe) -> Any:
    """The card's recommended sampler: the recipe's judged one for a score model (its figures are of that sampler)."""
    from diffusers_cli.checkpoints.card import Recommendation

    return Recommendation(recipe.judge["sampler"], recipe.judge["steps"]) if recipe.goes_with is None else None


def cpu_name() -> str:
    """The CPU's model name (Linux), for the card's training time."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def selected(only: str | None) -> list[str]:
    """The recipes a stage runs."""
    names = list(RECIPES) if only is None else only.split(",")
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        raise SystemExit(f"unknown recipe {unknown[0]!r}: use one of {', '.join(RECIPES)}")
    return names


def main() -> None:
    """Run one stage of the recipes."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=["train", "pack", "grids", "judge"])
    ap.add_argument("--only", default=None, help="comma-separated recipe names (default: all)")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "builtin")
    ap.add_argument("--steps", default=None,
                    help="grids stage: comma-separated step counts (default: %s), to make the grids a few at a time"
                    % ",".join(map(str, GRID_STEPS)))
    args = ap.parse_args()
    if args.steps is not None and args.stage != "grids":
        raise SystemExit("--steps is for the grids stage only")
    steps = GRID_STEPS if args.steps is None else tuple(int(s) for s in args.steps.split(","))
    if not set(steps) <= set(GRID_STEPS):
        raise SystemExit(f"--steps must be among {', '.join(map(str, GRID_STEPS))}")
    stages = {"train": train, "pack": pack, "grids": lambda name, work: grids(name, work, steps=steps),
              "judge": judge_shipped}
    for name in selected(args.only):
        stages[args.stage](name, args.work)


if __name__ == "__main__":
    sys.exit(main())
