"""The features folder: `features.safetensors` + `manifest.json`, written atomically, read with checks.

Only numpy, json and safetensors here: the trainer can load features without importing transformers.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from ..errors import FmrlError
from ..fileio import atomic_directory, atomic_write_json, contained_path, sha256_file
from ..jsonio import read_json

FORMAT = "fmrl-sdk/features"
VERSION = 1
FEATURES_FILE = "features.safetensors"
MANIFEST_FILE = "manifest.json"


def ids_sha256(item_ids: list[str]) -> str:
    h = hashlib.sha256()
    for item in item_ids:
        h.update(str(item).encode("utf-8") + b"\n")
    return h.hexdigest()


def input_hash(parts: dict) -> str:
    """A stable hash of everything the features depend on (texts, image hashes, encoder identity...)."""
    h = hashlib.sha256()
    for key in sorted(parts):
        value = parts[key]
        if isinstance(value, (list, tuple)):
            h.update(f"{key}[{len(value)}]\n".encode())
            for v in value:
                h.update(hashlib.sha256(json.dumps(v, sort_keys=True).encode()).digest())
        else:
            h.update(f"{key}={json.dumps(value, sort_keys=True)}\n".encode())
    return h.hexdigest()


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def read_manifest(features_dir: str | Path) -> dict:
    folder = Path(features_dir)
    if not folder.is_dir():
        raise FmrlError(f"{folder}: features folder not found (run `fmrl-sdk featurize` first)")
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise FmrlError(f"{path}: no features manifest (not a `fmrl-sdk featurize` output folder)")
    manifest = read_json(path)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise FmrlError(f"{path}: not a features manifest (format is not {FORMAT!r})")
    if manifest.get("version") != VERSION:
        raise FmrlError(f"{path}: features format version {manifest.get('version')!r}; this SDK reads {VERSION}")
    for key in ("item_ids", "modalities", "file", "file_sha256"):
        if key not in manifest:
            raise FmrlError(f"{path}: manifest lacks {key!r}")
    digest = manifest["file_sha256"]
    if not isinstance(digest, str) or len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
        raise FmrlError(f"{path}: file_sha256 must be 64 lowercase hex digits")
    contained_path(folder, manifest["file"], path)  # inside the folder, no symbolic link
    return manifest


def cache_hit(features_dir: str | Path, wanted_hash: str) -> dict | None:
    """The existing manifest if the folder holds intact features for exactly these inputs, else None."""
    try:
        manifest = read_manifest(features_dir)
    except FmrlError:
        return None
    if manifest.get("input_hash") != wanted_hash:
        return None
    path = contained_path(features_dir, manifest["file"], Path(features_dir) / MANIFEST_FILE)
    if not path.is_file() or sha256_file(path) != manifest["file_sha256"]:
        return None
    return manifest


def check_out_dir(out: Path) -> None:
    """Refuse to replace a folder that is not a features folder (we never delete a user's other data)."""
    if out.exists() and not out.is_dir():
        raise FmrlError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST_FILE).is_file():
        raise FmrlError(f"{out}: folder exists, is not empty and is not a features folder; choose another --out")


def write_features(out: str | Path, tensors: dict[str, np.ndarray], manifest: dict) -> dict:
    """Write tensors + manifest into a temporary sibling folder, then swap it in (all or nothing)."""
    from safetensors.numpy import save_file

    out = Path(out)
    check_out_dir(out)
    manifest = dict(manifest)
    manifest["file"] = FEATURES_FILE
    with atomic_directory(out, overwrite=True) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp / FEATURES_FILE),
                  metadata={"format": FORMAT, "input_hash": str(manifest.get("input_hash", ""))})
        manifest["file_sha256"] = sha256_file(tmp / FEATURES_FILE)
        atomic_write_json(tmp / MANIFEST_FILE, manifest)
    return manifest


def read_tensors(features_dir: str | Path, manifest: dict, verify: bool = True) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    path = contained_path(features_dir, manifest["file"], Path(features_dir) / MANIFEST_FILE)
    if not path.is_file():
        raise FmrlError(f"{path}: features file missing")
    if verify and sha256_file(path) != manifest["file_sha256"]:
        raise FmrlError(f"{path}: contents do not match the manifest's sha256 (file changed or corrupt)")
    try:
        return load_file(str(path))
    except Exception as e:
        raise FmrlError(f"{path}: malformed safetensors file ({type(e).__name__}: {e})") from None


def _compare_ids(folder: Path, have: list[str], want: list[str]) -> np.ndarray | None:
    """None when identical; row indices when `want` are some of the features' ids (any order, e.g. the items
    left by a k-core filter); FmrlError otherwise."""
    if have == want:
        return None
    where = f"{folder}: features were computed for a different item list"
    if len(set(have)) == len(have) and len(want) <= len(have) and set(want) <= set(have):
        pos = {item: i for i, item in enumerate(have)}  # same ids reordered, or a subset (e.g. a k-core)
        return np.array([pos[item] for item in want], dtype=np.int64)
    if len(have) != len(want):
        extra = len(set(have) - set(want))
        missing = len(set(want) - set(have))
        raise FmrlError(f"{where} ({len(have)} items in the features, {len(want)} in the dataset; "
                        f"{missing} dataset items missing, {extra} extra); re-run featurize on this dataset")
    differ = sum(a != b for a, b in zip(have, want))
    first = next(i for i, (a, b) in enumerate(zip(have, want)) if a != b)
    raise FmrlError(f"{where} ({differ} of {len(want)} ids differ; first at position {first}: "
                    f"{have[first]!r} in the features vs {want[first]!r} in the dataset)")


def load_features(features_dir: str | Path, item_ids: list[str]) -> tuple[np.ndarray, dict]:
    """Feature matrix [len(item_ids), F] float32 in the order of `item_ids`, and the manifest.

    F is the concatenation of the present modalities in manifest order (text, then image; or the single
    imported matrix). `item_ids` may be any subset of the features' ids, in any order (features cover every
    item of the data, so they stay valid when [data] min_count changes). Image rows of items without a
    usable image are zeros. Raises FmrlError when the folder or manifest is missing, an id of `item_ids` has
    no features, or the matrix is malformed.
    """
    folder = Path(features_dir)
    manifest = read_manifest(folder)
    have = [str(i) for i in manifest["item_ids"]]
    want = [str(i) for i in item_ids]
    if manifest.get("item_ids_sha256") and manifest["item_ids_sha256"] != ids_sha256(have):
        raise FmrlError(f"{folder / MANIFEST_FILE}: item_ids do not match item_ids_sha256 (manifest edited?)")
    perm = _compare_ids(folder, have, want)
    tensors = read_tensors(folder, manifest)
    n = len(have)
    blocks = []
    for modality in manifest["modalities"]:
        name = modality.get("tensor")
        if name not in tensors:
            raise FmrlError(f"{folder / manifest['file']}: tensor {name!r} listed in the manifest is missing")
        block = tensors[name]
        dim = modality.get("dim")
        if block.ndim != 2 or block.shape[0] != n or (dim is not None and block.shape[1] != dim):
            raise FmrlError(f"{folder / manifest['file']}: tensor {name!r} has shape {list(block.shape)}, "
                            f"expected [{n}, {dim}]")
        if block.dtype != np.float32:
            raise FmrlError(f"{folder / manifest['file']}: tensor {name!r} is {block.dtype}, expected float32")
        if not np.isfinite(block).all():
            raise FmrlError(f"{folder / manifest['file']}: tensor {name!r} has NaN or infinite values")
        mask_name = modality.get("mask")
        if mask_name:
            mask = tensors.get(mask_name)
            if mask is None or mask.shape != (n,):
                raise FmrlError(f"{folder / manifest['file']}: mask {mask_name!r} missing or not of shape [{n}]")
            block = np.where(mask.astype(bool)[:, None], block, np.float32(0.0))
        blocks.append(block)
    if not blocks:
        raise FmrlError(f"{folder / MANIFEST_FILE}: lists no modalities")
    matrix = np.concatenate(blocks, axis=1).astype(np.float32, copy=False)
    if perm is not None:
        matrix = matrix[perm]
    return np.ascontiguousarray(matrix), manifest
