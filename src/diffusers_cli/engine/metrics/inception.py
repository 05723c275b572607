"""pytorch-fid's FID Inception-v3 (Szegedy et al. 2016, TF 2015-12-05 weights), built offline: pool3 features and logits in one pass."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from pytorch_fid.inception import FIDInceptionA, FIDInceptionC, FIDInceptionE_1, FIDInceptionE_2
from safetensors.torch import save_file
from torch import Tensor
from torchvision.models.inception import Inception3

from diffusers_cli.engine.metrics.errors import MetricsError
from diffusers_cli.engine.metrics.weights import (
    SOURCE_KEY,
    InceptionWeights,
    locate_weights,
    read_weights,
    where_to_put_weights,
)

#: Side of the square input the network resizes every image to (pytorch-fid's resize_input).
INPUT_SIZE = 299
#: Width of the pool3 features FID uses.
FEATURE_DIM = 2048
#: Classes of the TF 2015-12-05 Inception graph: ImageNet's 1000 plus 8 unused outputs.
NUM_CLASSES = 1008


class InceptionV3Features(Inception3):
    """torchvision's Inception3 with pytorch-fid's FID blocks; forward(x in [0, 1]) -> (pool3 [B, 2048], logits [B, 1008]).

    Same modules and state-dict keys as pytorch-fid's ``fid_inception_v3()``, without its download.
    Logits are ``pool3 @ fc.weight.T`` without the fc bias, as the original Inception Score code
    (openai/improved-gan) and torch-fidelity compute them.
    """

    def __init__(self) -> None:
        super().__init__(
            num_classes=NUM_CLASSES,  # the TF graph's 1008 outputs
            aux_logits=False,         # no auxiliary head, as pytorch-fid builds it
            init_weights=False,       # weights come from a file; skip torchvision's slow truncated-normal init
        )
        # The FID blocks reproduce TF's pooling (no padded zeros in averages; a max pool in Mixed_7c).
        self.Mixed_5b = FIDInceptionA(192, pool_features=32)
        self.Mixed_5c = FIDInceptionA(256, pool_features=64)
        self.Mixed_5d = FIDInceptionA(288, pool_features=64)
        self.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
        self.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
        self.Mixed_7b = FIDInceptionE_1(1280)
        self.Mixed_7c = FIDInceptionE_2(2048)
        self.weights_info: InceptionWeights | None = None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        """Images [B, 1 or 3, H, W] in [0, 1] -> (pool3 features [B, 2048], logits [B, 1008])."""
        x = self._prepare(x)
        # pytorch-fid's input conventions: bilinear resize to 299, then [0, 1] -> [-1, 1].
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        for layer in self._trunk():
            x = layer(x)
        pool = torch.flatten(x, 1)
        return pool, pool @ self.fc.weight.T

    def _prepare(self, x: Tensor) -> Tensor:
        """Check the shape, repeat greyscale to RGB and cast to the network's dtype."""
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise MetricsError(f"Inception takes images [B, 1 or 3, H, W]; got a tensor of shape {tuple(x.shape)}")
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        return x.to(self.fc.weight.dtype)

    def _trunk(self) -> tuple[torch.nn.Module, ...]:
        """The layers from the input to the pooled features, in pytorch-fid's order (its blocks 0-3)."""
        return (
            self.Conv2d_1a_3x3, self.Conv2d_2a_3x3, self.Conv2d_2b_3x3, self.maxpool1,
            self.Conv2d_3b_1x1, self.Conv2d_4a_3x3, self.maxpool2,
            self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a,
            self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e,
            self.Mixed_7a, self.Mixed_7b, self.Mixed_7c, self.avgpool,
        )


def check_state_dict(net: torch.nn.Module, state: dict[str, Tensor], path: Path) -> None:
    """Raise MetricsError naming the missing, unexpected and mis-shaped keys unless ``state`` fits ``net`` exactly."""
    expected = net.state_dict()
    # BatchNorm's step counter is unused in eval mode, and files saved before torch 0.4.1 lack it.
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = [
        f"{label} {len(keys)} key(s): {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape in", wrong))
        if keys
    ]
    if problems:
        raise MetricsError(f"{path} does not fit pytorch-fid's FID Inception network: {'; '.join(problems)}; {where_to_put_weights()}")


def load_inception(weights: str | Path | None = None, device: str | torch.device = "cpu",
                   download: bool = False) -> InceptionV3Features:
    """The FID Inception in eval mode with frozen weights from ``weights`` (or $DIFFUSE_INCEPTION_WEIGHTS, or torch's hub cache).

    With ``download``, weights found nowhere are first fetched into the hub cache and verified;
    ``weights_info.downloaded`` then says so.
    """
    path, origin = locate_weights(weights, download)
    state, info = read_weights(path, origin)
    net = InceptionV3Features()
    check_state_dict(net, state, path)
    net.load_state_dict(state)
    net.weights_info = info
    return net.eval().requires_grad_(False).to(device)


def convert_weights(pth: str | Path, out_safetensors: str | Path) -> InceptionWeights:
    """Convert pytorch-fid's verified .pth once to a .safetensors (recording the .pth's SHA-256); returns the new file's info."""
    pth, out = Path(pth), Path(out_safetensors)
    state, info = read_weights(pth)
    net = InceptionV3Features()
    check_state_dict(net, state, pth)
    net.load_state_dict(state)
    tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    metadata = {SOURCE_KEY: str(info.source_sha256), "source": pth.name, "format": "pytorch-fid FID Inception3 state dict"}
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _, written = read_weights(out)
    return written
