"""The honest measures notebooks 02 and 03 plot: builtin:mnist's samples read by the independent builtin:mnist-judge.

    python benchmarks/lesson_measures.py [--n 100] [--cache /tmp/lesson_samples] [--threads 1]

Too slow to run inside a lesson on a CPU (100 samples a point, NFE up to 50: tens of minutes), so it runs here and
prints the tables the lessons carry; each lesson re-measures one point live to show that it reproduces.

* ``samplers``: judge FD (against the judge's 2,000 held-out real digits) and the share recognised as the digit
  asked, against NFE from 3 to 50, for em, ddim, heun, ei and ipndm (guidance 1: plain p(x | y), digits in turn).
* ``guidance``: the same figures against the guidance scale, for classifier-free guidance and for
  builtin:mnist-classifier's guidance on p(x) and on p(x | y) (ei, 10 steps).

Error bars: the binomial standard error of a share, sqrt(p (1 - p) / n); for FD, the standard deviation over 50
bootstrap resamplings of the samples. Samples are cached (safetensors) so that a rerun only re-judges them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

import diffusers_cli as dc
from diffusers_cli.data import load_dataset
from diffusers_cli.engine.metrics.fid import compute_statistics, frechet_distance_low_rank
from diffusers_cli.parts.judging import judge, load_judge

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
#: NFE targets of the sampler sweep, and each sampler's steps for them (heun: 2 steps - 1 evaluations).
NFES = (3, 6, 12, 25, 50)
STEPS = {"em": lambda k: k, "ddim": lambda k: k, "ei": lambda k: k, "ipndm": lambda k: k, "heun": lambda k: (k + 1) // 2}


def cached(cache: Path, key: str, make: "callable[[], torch.Tensor]") -> tuple[torch.Tensor, float]:  # type: ignore[valid-type]
    """Samples for one setting, from the cache or made (and cached, written atomically by rename); and the seconds."""
    path = cache / f"{key}.safetensors"
    if path.is_file():
        return load_file(str(path))["x"], 0.0
    t0 = time.perf_counter()
    x = make()
    tmp = path.with_suffix(".tmp")
    save_file({"x": x.contiguous()}, str(tmp))
    tmp.replace(path)
    return x, time.perf_counter() - t0


def figures(x: torch.Tensor, asked: torch.Tensor, real: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
    """Recognised-as-asked share with its binomial SE, and judge FD with its bootstrap SD."""
    cls, conf = judge(x)
    ok = ((cls == asked) & (conf >= 0.9)).float()
    p, n = ok.mean().item(), len(x)
    net, _ = load_judge()
    with torch.no_grad():
        f = net.features(x.clamp(-1, 1)).double().numpy()
    rng = np.random.default_rng(0)
    # The low-rank form is exact for n <= D and fast enough for 50 bootstrap resamplings (scipy's sqrtm is not).
    boots = [frechet_distance_low_rank(f[rng.integers(0, n, n)], *real) for _ in range(50)]
    return {"n": n, "recognised": round(p, 4), "recognised_se": round((p * (1 - p) / n) ** 0.5, 4),
            "judge_fd": round(frechet_distance_low_rank(f, *real), 2), "judge_fd_sd": round(float(np.std(boots)), 2)}


def main() -> None:
    """Sample (or read the cache), judge, and print the two tables as JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/lesson_samples"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", choices=["samplers", "guidance"], default=None)
    ap.add_argument("--sample-only", action="store_true", help="make the samples, judge nothing (no judge needed)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.cache.mkdir(parents=True, exist_ok=True)
    mnist, clf = dc.load_model("builtin:mnist"), dc.load_model("builtin:mnist-classifier")
    n, out = args.n, {}
    real_features = None
    if not args.sample_only:
        ds, _ = load_dataset("mnist", 28, data_dir=DATA, split="test")
        real = ds.images[8000:].float() / 127.5 - 1  # the judge's held-out digits
        with torch.no_grad():
            real_features = compute_statistics(load_judge()[0].features(real).double().numpy(), allow_few=True)
    if args.only in (None, "samplers"):
        asked = torch.arange(n) % 10
        rows = []
        for name, steps_of in STEPS.items():
            for nfe in NFES:
                steps = steps_of(nfe)
                x, sec = cached(args.cache, f"{name}-{steps}-{n}",
                                lambda: dc.sample(mnist, n, sampler=name, steps=steps, seed=2, batch_size=n, guidance=1.0))
                row = {"sampler": name, "steps": steps, "nfe": 2 * steps - 1 if name == "heun" else steps, "seconds": round(sec, 1)}
                if real_features is not None:
                    row |= figures(x, asked, real_features)
                rows.append(row)
                print(json.dumps(row), flush=True)
        out["samplers"] = rows
    if args.only in (None, "guidance"):
        per = n // 10
        asked = torch.arange(10).repeat_interleave(per)
        rows = []
        sweeps = [("classifier-free", None, [0.0, 1.0, 2.0, 4.0]), ("classifier on p(x)", 0.0, [2.0, 4.0, 8.0]),
                  ("classifier on p(x | y)", 1.0, [2.0, 4.0, 8.0])]
        for how, base, scales in sweeps:
            for w in scales:
                if base is None:
                    make = lambda: torch.cat([dc.sample(mnist, per, label=d, guidance=w, sampler="ei", steps=10, seed=d)
                                              for d in range(10)])
                else:
                    make = lambda: torch.cat([dc.condition(mnist, d, per, classifier=clf, scale=w, guidance=base,
                                                           sampler="ei", steps=10, seed=d) for d in range(10)])
                x, sec = cached(args.cache, f"guide-{how.replace(' ', '_')}-{w:g}-{n}", make)
                row = {"how": how, "scale": w, "seconds": round(sec, 1)}
                if real_features is not None:
                    row |= figures(x, asked, real_features)
                    # What the guiding classifier says of the same samples, to show how kind it is to its own work.
                    with torch.no_grad():
                        from diffusers_cli.engine.guidance import classifier_fn
                        read = classifier_fn(clf.net, clf.sde)(x, torch.full((len(x),), clf.sde.eps)).argmax(1)
                    row["read_by_guiding_classifier"] = round((read == asked).float().mean().item(), 4)
                rows.append(row)
                print(json.dumps(row), flush=True)
        out["guidance"] = rows
    print(json.dumps(out))


if __name__ == "__main__":
    main()
