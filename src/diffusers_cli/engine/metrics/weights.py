"""Finding, verifying, reading and (when allowed) downloading pytorch-fid's Inception weights (never unpickling an unverified file)."""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
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
#: The CLI flag that lets a missing file be downloaded (named in error messages).
DOWNLOAD_FLAG = "--download"
#: The origin of weights this process downloaded into the torch hub cache.
DOWNLOADED = "downloaded to the torch hub cache"
#: Seconds without data before a download gives up.
DOWNLOAD_TIMEOUT = 60.0
#: Metadata key, in a converted .safetensors, holding the SHA-256 of the .pth it came from.
SOURCE_KEY = "source_sha256"


@dataclass(frozen=True)
class InceptionWeights:
    """Where the Inception weights came from: the file read, how it was found, its SHA-256 and that of its source .pth."""

    path: Path                 # the file read
    origin: str                # "argument", "$DIFFUSE_INCEPTION_WEIGHTS", "torch hub cache" or DOWNLOADED
    sha256: str                # SHA-256 of the file read (for --json summaries)
    source_sha256: str | None  # the .pth's SHA-256: verified for a .pth, as recorded for a .safetensors conversion

    @property
    def official(self) -> bool:
        """True for pytorch-fid's own weights (a verified .pth, or a .safetensors that records converting it)."""
        return self.source_sha256 == FID_WEIGHTS_SHA256

    @property
    def downloaded(self) -> bool:
        """True when this process downloaded the file (verified) into the torch hub cache."""
        return self.origin == DOWNLOADED


def hub_weights_path() -> Path:
    """Where pytorch-fid (torch.hub) caches the weights: torch.hub.get_dir()/checkpoints/<name> (honours TORCH_HOME)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_NAME


def where_to_put_weights(offer_download: bool = True) -> str:
    """The how-to-fix sentence of every missing-weights message: file name, checksum, places, flags, env var, URL."""
    fetch = f"or pass {DOWNLOAD_FLAG} to fetch it from" if offer_download else "or fetch it yourself from"
    return (
        f"put {FID_WEIGHTS_NAME} (SHA-256 {FID_WEIGHTS_SHA256}) at {hub_weights_path()}, "
        f"or pass {WEIGHTS_FLAG} PATH, or set {WEIGHTS_ENV}=PATH, {fetch} {FID_WEIGHTS_URL}"
    )


def locate_weights(weights: str | Path | None = None, download: bool = False) -> tuple[Path, str]:
    """Find the weights file: the given path, then $DIFFUSE_INCEPTION_WEIGHTS, then the torch hub cache; returns (path, origin).

    With ``download``, weights found nowhere are fetched into the torch hub cache (download_weights);
    a path that is named but missing is an error either way.
    """
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
    if download:
        return download_weights(pth), DOWNLOADED
    raise MetricsError(f"Inception weights for FID/IS not found; {where_to_put_weights()}")


def download_weights(dest: str | Path | None = None, url: str | None = None, sha256: str | None = None,
                     timeout: float = DOWNLOAD_TIMEOUT) -> Path:
    """Fetch ``url`` (FID_WEIGHTS_URL) to ``dest`` (the hub cache path) through a temporary file, renamed only once its SHA-256 matches.

    Any failure (network, a wrong checksum) removes the temporary file and raises a one-line
    MetricsError; nothing is ever left at ``dest`` but the verified file.
    """
    # Read at call time, so tests can stand in a URL and a file of their own.
    dest = Path(dest) if dest is not None else hub_weights_path()
    url = url if url is not None else FID_WEIGHTS_URL
    expected = sha256 if sha256 is not None else FID_WEIGHTS_SHA256
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    except OSError as err:
        raise MetricsError(f"cannot write the Inception weights to {dest.parent}: {err.strerror}; {where_to_put_weights(False)}") from None
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in _chunks(url, timeout):
                digest.update(chunk)
                out.write(chunk)  # a full disk is the machine's failure, not the download's: its OSError goes up as is
        got = digest.hexdigest()
        if got != expected:
            raise MetricsError(
                f"the file downloaded from {url} has SHA-256 {got}, not {expected} ({FID_WEIGHTS_NAME}); "
                f"it was deleted and nothing was saved: retry, or {where_to_put_weights(False)}"
            )
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def _chunks(url: str, timeout: float) -> Iterator[bytes]:
    """The body of ``url`` in pieces of 1 MiB; any failure to fetch it as a one-line MetricsError."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (the URL is ours or the caller's)
            while chunk := response.read(1 << 20):
                yield chunk
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as err:
        # An HTTP status, a refused connection or unknown host, a cut-off body, a timeout, or a malformed URL.
        reason = err if isinstance(err, urllib.error.HTTPError) else (getattr(err, "reason", None) or err)
        raise MetricsError(f"cannot download the Inception weights from {url}: {reason}; {where_to_put_weights(False)}") from None


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
