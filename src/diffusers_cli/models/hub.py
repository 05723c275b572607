"""``hf:ORG/NAME[@REVISION]``: a model in the Hugging Face cache, found offline; fetched with huggingface_hub only on --download."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from diffusers_cli.checkpoints.card import CheckpointError
from diffusers_cli.models.extra import require

PREFIX = "hf:"
_REPO = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]*/)?[A-Za-z0-9][A-Za-z0-9._-]*$")
#: What --download fetches: configs and weights, never other frameworks' files or half-precision copies.
ALLOW = ["*.json", "*.safetensors", "*.txt", "*.md"]
IGNORE = ["*.fp16.*", "*.non_ema.*", "*.onnx", "*.msgpack", "*.h5", "*.ckpt", "*.pt", "*.pth"]


def is_hub_ref(model: object) -> bool:
    """Whether ``--model`` names a Hugging Face model (``hf:ORG/NAME[@REVISION]``)."""
    return str(model).startswith(PREFIX)


def parse(ref: str) -> tuple[str, str | None]:
    """(repo id, revision or None) of ``hf:ORG/NAME[@REVISION]``; CheckpointError for anything else."""
    body = str(ref)[len(PREFIX):]
    repo, _, revision = body.partition("@")
    if not _REPO.match(repo) or (revision == "" and "@" in body):
        raise CheckpointError(f"{ref!s} is not a Hugging Face model name; write hf:ORG/NAME or hf:ORG/NAME@REVISION")
    return repo, revision or None


def cache_dir() -> Path:
    """The hub cache huggingface_hub uses: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def repo_folder(repo: str) -> Path:
    """Where the cache keeps a model repository: ``models--ORG--NAME``."""
    return cache_dir() / ("models--" + repo.replace("/", "--"))


def snapshot(repo: str, revision: str | None) -> Path | None:
    """The cached snapshot of ``repo`` at a branch or tag (``refs/``) or a commit (or its prefix); None if absent."""
    folder = repo_folder(repo)
    rev = revision or "main"
    ref_file = folder / "refs" / rev
    if ref_file.is_file():
        commit = ref_file.read_text(encoding="utf-8").strip()
        path = folder / "snapshots" / commit
        return path if path.is_dir() else None
    snapshots = folder / "snapshots"
    if (snapshots / rev).is_dir():
        return snapshots / rev
    if re.fullmatch(r"[0-9a-f]{7,40}", rev) and snapshots.is_dir():
        found = [p for p in snapshots.iterdir() if p.is_dir() and p.name.startswith(rev)]
        if len(found) == 1:
            return found[0]
    return None


def resolve(ref: str, download: bool = False) -> Path:
    """The local snapshot folder of ``hf:ORG/NAME[@REVISION]``; with ``download``, fetched first when missing."""
    repo, revision = parse(ref)
    found = snapshot(repo, revision)
    if found is not None:
        return found
    at = f" --revision {revision}" if revision else ""
    if not download:
        raise CheckpointError(
            f"{ref} is not in the Hugging Face cache {cache_dir()}: add --download to fetch it (or run `hf download "
            f"{repo}{at}`); it lands in {repo_folder(repo)}"
        )
    return fetch(repo, revision, ref)


def fetch(repo: str, revision: str | None, ref: str) -> Path:
    """huggingface_hub's snapshot_download of the configs and weights into the cache; the snapshot folder."""
    require("huggingface_hub", f"--download of {ref}")
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(repo, revision=revision, cache_dir=str(cache_dir()), allow_patterns=ALLOW,
                                      ignore_patterns=IGNORE))
        if not any(path.rglob("*.safetensors")):  # an older repository: its weights exist only as a .bin state dict
            path = Path(snapshot_download(repo, revision=revision, cache_dir=str(cache_dir()),
                                          allow_patterns=[*ALLOW, "*.bin"], ignore_patterns=IGNORE))
    except Exception as err:  # the hub's errors (not found, gated, offline) have no common base class
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"could not download {ref} into {cache_dir()}: {first}") from None
    return path


def provenance(path: Path) -> dict[str, Any]:
    """{"model": "hf:ORG/NAME", "commit": ..., "revision": ...} when ``path`` lies in a cached snapshot; {} otherwise."""
    parts = Path(path).absolute().parts
    for i in range(len(parts) - 2):
        if parts[i].startswith("models--") and parts[i + 1] == "snapshots":
            repo = parts[i][len("models--"):].replace("--", "/")
            commit = parts[i + 2]
            refs = Path(*parts[: i + 1]) / "refs"
            names = sorted(p.name for p in refs.iterdir() if p.is_file() and p.read_text(encoding="utf-8").strip() == commit) \
                if refs.is_dir() else []
            out: dict[str, Any] = {"model": PREFIX + repo, "commit": commit}
            if names:
                out["revision"] = names[0]
            return out
    return {}
