"""The item-vectors file (`fmrl-sdk item-vectors` writes it, `Recommender.add_items_from_file` reads it).

.safetensors: tensor `vectors` [M, S] float32; metadata `ids` (JSON list of M item ids), `format`, `run`,
`size`, `features`, `input_hash` (JSON-encoded unless strings).
.json: {"format", "run", "size", "features", "input_hash", "ids": [...], "vectors": [[...]]}.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import FmrlError
from ..fileio import atomic_write_bytes, atomic_write_json
from ..jsonio import parse_json_text, read_json

VECTORS_FORMAT = "fmrl-sdk/item-vectors"
SUFFIXES = (".safetensors", ".json")


def write_item_vectors(out: str | Path, ids: list[str], vectors: np.ndarray, meta: dict) -> None:
    """Write ids + vectors [M, S] float32 (+ `meta`) atomically, in the format `out`'s suffix names."""
    out = Path(out)
    meta = dict(meta, format=VECTORS_FORMAT)
    if out.suffix.lower() == ".json":
        atomic_write_json(out, dict(meta, ids=ids, vectors=vectors.tolist()))
        return
    if out.suffix.lower() != ".safetensors":
        raise FmrlError(f"{out}: must end in {' or '.join(SUFFIXES)}")
    from safetensors.numpy import save

    atomic_write_bytes(out, save({"vectors": np.ascontiguousarray(vectors, dtype=np.float32)},
                                 metadata={k: json.dumps(v) if not isinstance(v, str) else v
                                           for k, v in dict(meta, ids=ids).items()}))


def read_item_vectors(path: str | Path) -> tuple[list[str], np.ndarray]:
    """(ids [M], vectors [M, S] float32) of an item-vectors file; FmrlError naming the file when it is
    missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise FmrlError(f"{path}: file not found")
    if path.suffix.lower() == ".json":
        obj = read_json(path)
        try:
            ids, vectors = obj["ids"], np.asarray(obj["vectors"], dtype=np.float32)
        except (KeyError, TypeError, ValueError) as e:
            raise FmrlError(f"{path}: expected {{\"ids\": [...], \"vectors\": [[...]]}} ({e})") from None
        if not isinstance(ids, list):
            raise FmrlError(f"{path}: 'ids' is not a JSON list")
        return [str(i) for i in ids], vectors
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            if "vectors" not in f.keys():
                raise FmrlError(f"{path}: no tensor 'vectors' (found {sorted(f.keys())})")
            vectors = f.get_tensor("vectors")
    except FmrlError:
        raise
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise FmrlError(f"{path}: not a readable safetensors file ({e})") from None
    raw = meta.get("ids", meta.get("item_ids"))
    if raw is None:
        raise FmrlError(f"{path}: metadata has no 'ids' (JSON list of item ids)")
    try:
        ids = parse_json_text(raw, str(path), "metadata 'ids'")
    except FmrlError:
        raise FmrlError(f"{path}: metadata 'ids' is not a JSON list") from None
    if not isinstance(ids, list):
        raise FmrlError(f"{path}: metadata 'ids' is not a JSON list")
    return [str(i) for i in ids], vectors
