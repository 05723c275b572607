"""A plain CNN judge of clean images: the classes of a dataset plus one more, "none of them", and nothing of any SDE.

Benchmarks and lessons use it to recognise samples independently of the model that made or steered them (a
guiding classifier scores its own guidance too kindly). Its reject class is trained on images that are plainly no
class (noise, blobs, blanks, blends of two classes): without it a judge is confident about anything.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Judge(nn.Sequential):
    """Five 3x3 convolutions, two max-pools and a global average pool, then one linear layer to ``num_classes`` logits.

    Resolution-agnostic through the global pooling. ``num_classes`` counts the reject class: a judge of MNIST's ten
    digits has 11 outputs, the last meaning "none of them". A ``nn.Sequential`` so that its weights are named
    ``0.weight`` ... ``13.bias``, as the judges the benchmarks cached before it moved here.
    """

    def __init__(
        self,
        in_channels: int = 1,  # image channels
        num_classes: int = 11,  # the dataset's classes + 1 for "none of them"
        width: int = 32,  # channels of the first block; the next blocks have 2x and 4x
    ) -> None:
        w = width
        super().__init__(
            nn.Conv2d(in_channels, w, 3, padding=1), nn.SiLU(), nn.Conv2d(w, w, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.SiLU(), nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, num_classes),
        )
        # A model card stores this and rebuilds the judge from it (models.ours.NETWORKS["judge"]).
        self.config = {"in_channels": in_channels, "num_classes": num_classes, "width": width}

    def __getitem__(self, idx: int | slice) -> nn.Module:  # type: ignore[override]
        """A layer, or a slice of layers as a plain ``nn.Sequential`` (a slice is no longer a judge)."""
        if isinstance(idx, slice):
            return nn.Sequential(*list(self)[idx])
        return super().__getitem__(idx)

    @property
    def reject_class(self) -> int:
        """The index of "none of them" (the last output)."""
        return int(self.config["num_classes"]) - 1

    def features(self, x: Tensor) -> Tensor:
        """The pooled features [B, 4 * width] the last layer reads: the space a judge's Frechet distance is taken in."""
        for layer in list(self)[:-1]:
            x = layer(x)
        return x


def make_judge(channels: int, num_classes: int) -> Judge:
    """A judge of ``channels``-channel images with ``num_classes`` outputs (include the reject class in the count)."""
    return Judge(in_channels=channels, num_classes=num_classes)


def negatives(x: Tensor, y: Tensor, n: int, g: torch.Generator) -> Tensor:
    """``n`` images in [-1, 1] that are no class: a quarter each of noise, smooth blobs, blank colours, two-class blends.

    ``x`` / ``y`` are real images and labels to draw colours and blends from.
    """
    b, c, h, w = x.shape
    kind = torch.arange(n) % 4
    colour = torch.rand(n, c, 1, 1, generator=g) * 2 - 1
    # White noise of any strength around a random colour.
    noise = colour + torch.rand(n, 1, 1, 1, generator=g) * torch.randn(n, c, h, w, generator=g)
    # Smooth blobs: coarse noise upsampled, the texture a half-trained model smears.
    coarse = torch.randn(n, c, max(2, h // 4), max(2, w // 4), generator=g)
    blobs = colour + 0.7 * F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    blank = colour + 0.05 * torch.randn(n, c, h, w, generator=g)
    # Blends of two real images of different classes, neither weight dominant.
    i = torch.randint(0, b, (n,), generator=g)
    j = torch.randint(0, b, (n,), generator=g)
    j = torch.where(y[i] == y[j], (j + 1) % b, j)  # a retry would be exact; a neighbour is enough here
    lam = 0.3 + 0.4 * torch.rand(n, 1, 1, 1, generator=g)
    blend = lam * x[i] + (1 - lam) * x[j]
    out = torch.where((kind == 0).view(-1, 1, 1, 1), noise, blobs)
    out = torch.where((kind == 2).view(-1, 1, 1, 1), blank, out)
    out = torch.where((kind == 3).view(-1, 1, 1, 1), blend, out)
    return out.clamp(-1, 1)


def warp(x: Tensor, g: torch.Generator, pixels: float = 1.0) -> Tensor:
    """Smoothly deform images by up to about ``pixels``: a wobbly edge does not change what a shape is."""
    n, _, h, w = x.shape
    coarse = torch.randn(n, 2, 4, 4, generator=g) * (pixels * 2 / max(h, w))
    flow = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    grid = torch.stack([xs, ys], dim=-1).unsqueeze(0) + flow
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)


@torch.no_grad()
def judge_images(judge: nn.Module, x: Tensor, threshold: float = 0.9) -> tuple[Tensor, Tensor]:
    """(predicted class, recognised?) for images in [-1, 1]: recognised = a real class with probability >= threshold.

    The predicted class may be the reject class (the judge's last output), which is never recognised.
    """
    p = class_probabilities(judge, x)
    conf, cls = p.max(dim=1)
    return cls, (conf >= threshold) & (cls < p.shape[1] - 1)


@torch.no_grad()
def class_probabilities(judge: nn.Module, x: Tensor, batch_size: int = 500) -> Tensor:
    """[B, classes + 1] probabilities the judge gives images in [-1, 1] (clamped first: a sample may overshoot)."""
    return torch.cat([torch.softmax(judge(part.float().clamp(-1, 1)), dim=1) for part in x.split(batch_size)])
