"""The benchmark judge's pieces: the reject class is never "recognised", negatives are what they claim, warps are small."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from shapes_judge import judge_images, negatives, warp  # noqa: E402

from diffusers_cli.data import load_dataset  # noqa: E402


class _Fixed(nn.Module):
    """A 'judge' that returns given logits, to test the decision rule alone."""

    def __init__(self, logits: Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, x: Tensor) -> Tensor:
        return self.logits


def test_reject_class_is_never_recognised() -> None:
    # rows: confident class 0, confident reject (last), unsure class 1, confident class 2
    logits = torch.tensor([[9.0, 0, 0, 0], [0, 0, 0, 9.0], [1.0, 1.5, 0, 0], [0, 0, 9.0, 0]])
    cls, recognised = judge_images(_Fixed(logits), torch.zeros(4, 1, 4, 4))
    assert cls.tolist() == [0, 3, 1, 2]
    assert recognised.tolist() == [True, False, False, True]


def test_negatives_kinds() -> None:
    ds, _ = load_dataset("shapes", 16, num_examples=200)
    x, y = ds.images.float() / 127.5 - 1, ds.labels
    g = torch.Generator().manual_seed(0)
    neg = negatives(x, y, 40, g)
    assert neg.shape == (40, 3, 16, 16) and neg.min() >= -1 and neg.max() <= 1
    blank = neg[2::4]  # kind 2: one colour plus 0.05 noise
    assert blank.std(dim=(2, 3)).max() < 0.1
    noisy = neg[0::4]
    assert noisy.std(dim=(2, 3)).mean() > 0.1
    # A blend of two different classes differs from every real image it could be a copy of.
    blends = neg[3::4]
    nearest = torch.cdist(blends.flatten(1), x.flatten(1)).min(dim=1).values
    assert nearest.min() > 1.0


def test_warp_is_small_and_identity_at_zero() -> None:
    ds, _ = load_dataset("shapes", 16, num_examples=32)
    x = ds.images.float() / 127.5 - 1
    g = torch.Generator().manual_seed(0)
    torch.testing.assert_close(warp(x, g, pixels=0.0), x, atol=1e-5, rtol=0)
    moved = warp(x, torch.Generator().manual_seed(0), pixels=1.0)
    diff = (moved - x).abs()
    assert 0.01 < diff.mean() < 0.2  # edges move, the image stays the same shape
