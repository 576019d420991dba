"""The item-vectors file (`fmrl-sdk item-vectors` writes it, `Recommender.add_items_from_file` reads it).

.safetensors: tensor `vectors` [M, S] float32; metadata `ids` (JSON list of M item ids), `format`, `run`,
`size`, `features`, `input_hash` (JSON-encoded unless strings).
.json: {"format", "run", "size", "features", "input_hash", "ids": [...], "vectors": [[...]]}.

Reading checks what `Recommender.add_items` would refuse, naming the file and the index: ids by the id rule
(fmrl_sdk/ids.py), vectors one row of S >= 1 finite numbers per id within the runtime's MAX_ABS_VECTOR.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import FmrlError
from ..fileio import atomic_write_bytes, atomic_write_json
from ..ids import id_problem, id_text
from ..jsonio import parse_json_text, read_json
from .recommender import MAX_ABS_VECTOR

VECTORS_FORMAT = "fmrl-sdk/item-vectors"
SUFFIXES = (".safetensors", ".json")
NUMBER_TYPES = {int, float}   # a vector's values in .json (bool is not a number here)


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
    missing or malformed. Checked in both formats: at least one id, each by the id rule (fmrl_sdk/ids.py,
    named by its index: `ids[3] must not be empty`) and none twice; one vector of S >= 1 finite numbers
    per id, every |x| <= MAX_ABS_VECTOR (what `Recommender.add_items` accepts)."""
    path = Path(path)
    if not path.is_file():
        raise FmrlError(f"{path}: file not found")
    if path.suffix.lower() == ".json":
        ids, vectors = _json_parts(path)
    else:
        ids, vectors = _safetensors_parts(path)
    return ids, _checked_values(vectors, path)


def _json_parts(path: Path) -> tuple[list[str], np.ndarray]:
    """The checked ids and the vectors (float64, values not yet checked) of a .json file."""
    obj = read_json(path)
    shape = 'expected {"ids": [...], "vectors": [[...]]}'
    if not isinstance(obj, dict):
        raise FmrlError(f"{path}: {shape}, got {_kind(obj)}")
    for key in ("ids", "vectors"):
        if key not in obj:
            raise FmrlError(f"{path}: {shape}: no {key!r}")
    ids = _checked_ids(obj["ids"], path, "'ids'")
    rows = obj["vectors"]
    if not isinstance(rows, list):
        raise FmrlError(f"{path}: 'vectors' should be a list of {len(ids)} lists of numbers, "
                        f"got {type(rows).__name__}")
    if len(rows) != len(ids):
        raise FmrlError(f"{path}: 'vectors' holds {len(rows)} vectors for {len(ids)} ids (one per id)")
    width = len(rows[0]) if isinstance(rows[0], list) else 0
    vectors = np.empty((len(rows), width))
    for n, row in enumerate(rows):
        if not isinstance(row, list) or not row:
            raise FmrlError(f"{path}: vectors[{n}] should be a non-empty list of numbers, got {_kind(row)}")
        if len(row) != width:
            raise FmrlError(f"{path}: vectors[{n}] holds {len(row)} numbers, vectors[0] {width} "
                            "(every vector has the same length)")
        if not set(map(type, row)) <= NUMBER_TYPES:   # bool, str, None, lists: numpy would convert some
            j, value = next((j, x) for j, x in enumerate(row) if type(x) not in NUMBER_TYPES)
            raise FmrlError(f"{path}: vectors[{n}][{j}] = {value!r:.40} should be a number")
        try:
            vectors[n] = row
        except OverflowError:   # an integer beyond a float's range
            raise _too_large(path, n) from None
    return ids, vectors


def _kind(value) -> str:
    """A JSON value's kind, for messages: 'a list', 'an empty list', 'float'."""
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    return type(value).__name__


def _safetensors_parts(path: Path) -> tuple[list[str], np.ndarray]:
    """The checked ids (metadata 'ids') and tensor 'vectors' [M, S] of a .safetensors file."""
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
    ids = _checked_ids(ids, path, "metadata 'ids'")
    if vectors.ndim != 2 or vectors.shape[0] != len(ids) or vectors.shape[1] < 1:
        raise FmrlError(f"{path}: tensor 'vectors' has shape {list(vectors.shape)}, expected [{len(ids)}, S] "
                        "(one vector per id)")
    if vectors.dtype.kind != "f":
        raise FmrlError(f"{path}: tensor 'vectors' holds {vectors.dtype}, expected floating-point numbers")
    return ids, vectors


def _checked_ids(ids, path: Path, what: str) -> list[str]:
    """`ids` (decoded JSON) as the runtime keys them, or FmrlError naming the first bad one by its index."""
    if not isinstance(ids, list):
        raise FmrlError(f"{path}: {what} should be a list of item ids, got {type(ids).__name__}")
    if not ids:
        raise FmrlError(f"{path}: {what} is empty (no items)")
    first: dict[str, int] = {}
    for n, value in enumerate(ids):
        problem = id_problem(value)
        if problem is not None:
            raise FmrlError(f"{path}: ids[{n}] {problem}")
        text = id_text(value)
        if text in first:
            raise FmrlError(f"{path}: ids[{n}] = {text!r:.80} repeats ids[{first[text]}]")
        first[text] = n
    return list(first)


def _checked_values(vectors: np.ndarray, path: Path) -> np.ndarray:
    """`vectors` [M, S] as float32 once every value is finite and within MAX_ABS_VECTOR (checked before the
    cast: 1e39 would become float32 infinity); FmrlError naming the first row that is not."""
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        raise FmrlError(f"{path}: vectors[{int(bad.argmax())}] holds NaN or infinity")
    big = np.abs(vectors).max(axis=1) > MAX_ABS_VECTOR
    if big.any():
        raise _too_large(path, int(big.argmax()))
    return vectors.astype(np.float32)


def _too_large(path: Path, row: int) -> FmrlError:
    return FmrlError(f"{path}: vectors[{row}] holds a value with |x| above {MAX_ABS_VECTOR:g} (item vectors of "
                     "real models are far smaller)")
