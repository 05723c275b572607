"""A plain CNN trained on real images (`shapes`, or MNIST's IDX files): the judge benchmarks use to recognise samples."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import Tensor, nn

from diffusers_cli.data import load_dataset


def make_judge(channels: int, num_classes: int) -> nn.Module:
    """A small conv net (resolution-agnostic through global pooling)."""
    return nn.Sequential(
        nn.Conv2d(channels, 32, 3, padding=1), nn.SiLU(), nn.Conv2d(32, 32, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.SiLU(), nn.Conv2d(64, 64, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, num_classes),
    )


def train_judge(
    image_size: int, steps: int = 600, seed: int = 123, dataset: str = "shapes", data_dir: Path | None = None
) -> tuple[nn.Module, float, float]:
    """Train on real images of ``dataset``; return the judge, its held-out accuracy and held-out confident share.

    The confident share (held-out real images it recognises with confidence >= 0.9) is the
    ceiling that samples' recognised share is compared against.

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
    judge = make_judge(info.channels, info.num_classes)
    opt = torch.optim.Adam(judge.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(x_all), (128,), generator=g)
        x = x_all[idx]
        # Mild noise makes the judge robust to the small artefacts of generated images.
        x = x + 0.05 * torch.randn(x.shape, generator=g)
        loss = nn.functional.cross_entropy(judge(x), y_all[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    judge.eval()
    with torch.no_grad():
        acc = (judge(x_test).argmax(1) == y_test).float().mean().item()
    _, confident = judge_images(judge, x_test)
    return judge, acc, confident.float().mean().item()


@torch.no_grad()
def judge_images(judge: nn.Module, x: Tensor, threshold: float = 0.9) -> tuple[Tensor, Tensor]:
    """(predicted class, confident?) for images in [-1, 1]."""
    p = torch.softmax(judge(x.clamp(-1, 1)), dim=1)
    conf, cls = p.max(dim=1)
    return cls, conf >= threshold


if __name__ == "__main__":
    t0 = time.perf_counter()
    _, accuracy, _ = train_judge(32)
    print(f"judge accuracy on held-out shapes: {accuracy:.4f} ({time.perf_counter() - t0:.0f}s)")
