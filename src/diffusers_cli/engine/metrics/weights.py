"""Finding, verifying and reading pytorch-fid's Inception weights offline (never unpickling an unverified file)."""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from torch import Tensor

from diffusers_cli.engine.metrics.errors import MetricsError

#: The file pytorch-fid downloads (its FID_WEIGHTS_URL) into torch's hub cache.
FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + FID_WEIGHTS_NAME
#: SHA-256 of that file (95,628,359 bytes); its first 8 hex digits are the "6726825d" in the name, as torch.hub's check_hash expects.
FID_WEIGHTS_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
#: Environment variable naming a weights file, used when no path is passed.
WEIGHTS_ENV = "DIFFUSE_INCEPTION_WEIGHTS"
#: The CLI flag naming a weights file (named in error messages).
WEIGHTS_FLAG = "--inception-weights"
#: Metadata key, in a converted .safetensors, holding the SHA-256 of the .pth it came from.
SOURCE_KEY = "source_sha256"


@dataclass(frozen=True)
class InceptionWeights:
    """Where the Inception weights came from: the file read, how it was found, its SHA-256 and that of its source .pth."""

    path: Path                 # the file read
    origin: str                # "argument", "$DIFFUSE_INCEPTION_WEIGHTS" or "torch hub cache"
    sha256: str                # SHA-256 of the file read (for --json summaries)
    source_sha256: str | None  # the .pth's SHA-256: verified for a .pth, as recorded for a .safetensors conversion

    @property
    def official(self) -> bool:
        """True for pytorch-fid's own weights (a verified .pth, or a .safetensors that records converting it)."""
        return self.source_sha256 == FID_WEIGHTS_SHA256


def hub_weights_path() -> Path:
    """Where pytorch-fid (torch.hub) caches the weights: torch.hub.get_dir()/checkpoints/<name> (honours TORCH_HOME)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_NAME


def where_to_put_weights() -> str:
    """The how-to-fix sentence of every missing-weights message: file name, checksum, places, flag, env var, URL."""
    return (
        f"put {FID_WEIGHTS_NAME} (SHA-256 {FID_WEIGHTS_SHA256}) at {hub_weights_path()}, "
        f"or pass {WEIGHTS_FLAG} PATH, or set {WEIGHTS_ENV}=PATH; "
        f"on a machine with network it downloads from {FID_WEIGHTS_URL}"
    )


def locate_weights(weights: str | Path | None = None) -> tuple[Path, str]:
    """Find the weights file: the given path, then $DIFFUSE_INCEPTION_WEIGHTS, then the torch hub cache; returns (path, origin)."""
    if weights is not None and str(weights) != "":
        return _existing(Path(weights).expanduser(), "argument")
    env = os.environ.get(WEIGHTS_ENV, "")
    if env:
        return _existing(Path(env).expanduser(), f"${WEIGHTS_ENV}")
    pth = hub_weights_path()
    # A safetensors conversion is preferred: it loads without unpickling and without hashing 95 MB.
    for candidate in (pth.with_suffix(".safetensors"), pth):
        if candidate.is_file():
            return candidate, "torch hub cache"
    raise MetricsError(f"Inception weights for FID/IS not found; {where_to_put_weights()}")


def _existing(path: Path, origin: str) -> tuple[Path, str]:
    """A named weights file, or the weights file inside a named folder; MetricsError if there is none."""
    if path.is_dir():
        for name in (Path(FID_WEIGHTS_NAME).with_suffix(".safetensors").name, FID_WEIGHTS_NAME):
            if (path / name).is_file():
                return path / name, origin
    elif path.is_file():
        return path, origin
    named_by = "the given path" if origin == "argument" else origin
    raise MetricsError(f"Inception weights not found at {path} (from {named_by}); {where_to_put_weights()}")


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of a byte string."""
    return hashlib.sha256(data).hexdigest()


def read_weights(path: str | Path, origin: str = "argument") -> tuple[dict[str, Tensor], InceptionWeights]:
    """Read a state dict: a .safetensors directly; any other file only if its SHA-256 is pytorch-fid's, then weights_only."""
    path = Path(path)
    try:
        # One read: the bytes hashed are the bytes loaded, so the file cannot change in between.
        data = path.read_bytes()
    except OSError as err:
        raise MetricsError(f"cannot read Inception weights {path}: {err.strerror}") from None
    digest = sha256_bytes(data)
    if path.suffix == ".safetensors":
        state, source = _read_safetensors(path, data)
    else:
        state, source = _read_verified_pickle(path, data, digest), digest
    return state, InceptionWeights(path=path, origin=origin, sha256=digest, source_sha256=source)


def _read_safetensors(path: Path, data: bytes) -> tuple[dict[str, Tensor], str | None]:
    """Tensors and the recorded source checksum of a .safetensors file's bytes."""
    try:
        state = load_safetensors_bytes(data)
        # The header (8-byte length, then JSON) was just validated by the load above.
        header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    except (SafetensorError, ValueError) as err:
        raise MetricsError(f"{path} is not a valid .safetensors file ({err}); {where_to_put_weights()}") from None
    return state, (header.get("__metadata__") or {}).get(SOURCE_KEY)


def _read_verified_pickle(path: Path, data: bytes, digest: str) -> dict[str, Tensor]:
    """Load a pickled state dict only when it is byte-for-byte pytorch-fid's file, and then with weights_only=True."""
    expected = FID_WEIGHTS_SHA256  # read at call time, so tests can stand in a file of their own
    if digest != expected:
        raise MetricsError(
            f"{path} has SHA-256 {digest}, not {expected} ({FID_WEIGHTS_NAME}); a pickled .pth is only loaded "
            f"when it is that exact file: use the official file, or a .safetensors state dict for other weights"
        )
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)  # the only torch.load: verified bytes, no code
    except Exception as err:  # UnpicklingError for code or foreign objects, RuntimeError/EOFError for a bad archive
        raise MetricsError(
            f"{path} could not be loaded as a plain state dict of tensors ({type(err).__name__} under weights_only=True)"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise MetricsError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return dict(state)
