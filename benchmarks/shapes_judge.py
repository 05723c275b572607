"""A plain CNN trained on real images (`shapes`, or MNIST's IDX files): the judge benchmarks use to recognise samples.

Besides the dataset's classes the judge has one more, "none of them", trained on images that are
not plainly any class: noise, smooth blobs, blank backgrounds and blends of two different classes.
Without it a judge is confident about anything (pure noise was called a "ring" with p > 0.99), so
a recognised share would reward garbage.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from diffusers_cli.data import load_dataset
# The judge's network, its training negatives and its reading live in the package (one source): re-exported here.
from diffusers_cli.engine.networks.judge import judge_images, make_judge, negatives, warp  # noqa: F401


def train_judge(
    image_size: int, steps: int = 1500, seed: int = 123, dataset: str = "shapes", data_dir: Path | None = None
) -> tuple[nn.Module, float, float]:
    """Train on real images of ``dataset``; return the judge, its held-out accuracy and held-out confident share.

    The confident share (held-out real images it recognises with confidence >= 0.9) is the
    ceiling that samples' recognised share is compared against. Accuracy counts the reject class
    as wrong for a real image.

    shapes: 10,000 training images of a seed unlike the model's, 1,000 test images held out.
    mnist: the test split of ``data_dir`` (all there is in ../shared/data), its last 1,000 held out.
    """
    torch.manual_seed(seed)
    if dataset == "shapes":
        ds, info = load_dataset("shapes", image_size, seed=seed, num_examples=10000)
        test, _ = load_dataset("shapes", image_size, split="test", seed=seed, num_examples=1000)
        x_all, y_all = ds.images.float() / 127.5 - 1, ds.labels
        x_test, y_test = test.images.float() / 127.5 - 1, test.labels
    else:
        ds, info = load_dataset(dataset, image_size, data_dir=data_dir, split="test")
        x, y = ds.images.float() / 127.5 - 1, ds.labels
        x_all, y_all, x_test, y_test = x[:-1000], y[:-1000], x[-1000:], y[-1000:]
    k = info.num_classes
    judge = make_judge(info.channels, k + 1)
    opt = torch.optim.Adam(judge.parameters(), lr=2e-3)
    # Annealing the rate makes the judge confident on clean real images (the ceiling), not only right.
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(x_all), (128,), generator=g)
        x, y = x_all[idx], y_all[idx]
        x = torch.cat([warp(x, g), negatives(x, y, 32, g)])
        y = torch.cat([y, torch.full((32,), k)])
        # Noise of up to 0.25 on the real ones: a noisy shape is still plainly that shape, so only
        # the absence of a shape, not noise, may send an image to the reject class.
        strength = torch.cat([0.25 * torch.rand(128, 1, 1, 1, generator=g), torch.full((32, 1, 1, 1), 0.05)])
        x = x + strength * torch.randn(x.shape, generator=g)
        loss = nn.functional.cross_entropy(judge(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    judge.eval()
    with torch.no_grad():
        acc = (judge(x_test).argmax(1) == y_test).float().mean().item()
    _, confident = judge_images(judge, x_test)
    return judge, acc, confident.float().mean().item()


def cached_judge(
    image_size: int, cache: Path | None, dataset: str = "shapes", data_dir: Path | None = None
) -> tuple[nn.Module, float, float]:
    """``train_judge``'s result, read from the safetensors file ``cache`` if it is there, else trained and written there."""
    if cache is not None and cache.is_file():
        with safe_open(str(cache), "pt") as f:
            meta = f.metadata()
        state = load_file(str(cache))
        # The first conv's input channels and the last layer's outputs: the judge's only free sizes.
        judge = make_judge(state["0.weight"].shape[1], state[f"{len(make_judge(1, 1)) - 1}.weight"].shape[0])
        judge.load_state_dict(state)
        return judge.eval(), float(meta["accuracy"]), float(meta["real_recognised_share"])
    judge, acc, share = train_judge(image_size, dataset=dataset, data_dir=data_dir)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)  # a fresh clone has no runs/ yet
        save_file({k: v.contiguous() for k, v in judge.state_dict().items()}, str(cache),
                  metadata={"accuracy": str(acc), "real_recognised_share": str(share), "dataset": dataset,
                            "image_size": str(image_size)})
    return judge, acc, share


if __name__ == "__main__":
    t0 = time.perf_counter()
    _, accuracy, share = train_judge(32)
    print(f"judge accuracy on held-out shapes: {accuracy:.4f}, recognised share {share:.4f} ({time.perf_counter() - t0:.0f}s)")
