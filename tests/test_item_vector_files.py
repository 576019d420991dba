"""Item-vector files (`fmrl-sdk item-vectors` writes them, `Recommender.add_items_from_file` reads them through
fmrl_sdk/runtime/vectors.py `read_item_vectors`): every id keeps the id rule (fmrl_sdk/ids.py) and is named by its
index, vectors are one equal-length row of finite numbers per id within the runtime's MAX_ABS_VECTOR, in both
formats (.json and .safetensors); anything else is one FmrlError line `FILE: what`.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from fmrl_sdk.errors import FmrlError
from fmrl_sdk.runtime.vectors import read_item_vectors

# (test id, 'ids', 'vectors', what the message says after "FILE: ")
BAD_JSON = [
    ("null id", [None], [[1.0]], "ids[0] must be a string or an integer, got NoneType"),
    ("nan id", ["a", float("nan")], [[1.0], [2.0]], "ids[1] must be a string or an integer, got float"),
    ("bool id", [True], [[1.0]], "ids[0] must be a string or an integer, got bool"),
    ("list id", [["a"]], [[1.0]], "ids[0] must be a string or an integer, got list"),
    ("empty id", ["a", "b", "c", ""], [[1.0]] * 4, "ids[3] must not be empty"),
    ("nul in an id", ["a\x00b"], [[1.0]], "ids[0] must not contain NUL characters"),
    ("surrogate id", ["\ud800"], [[1.0]], r"ids[0] holds an unpaired surrogate (\ud800-\udfff): not Unicode text"),
    ("long id", ["x" * 1025], [[1.0]], "ids[0] is longer than 1,024 bytes (the most an id may hold)"),
    ("same id twice", ["a", 7, "7"], [[1.0]] * 3, "ids[2] = '7' repeats ids[1]"),
    ("ids not a list", "a", [[1.0]], "'ids' should be a list of item ids, got str"),
    ("no ids", [], [], "'ids' is empty (no items)"),
    ("more vectors than ids", [], [[1.0]], "'ids' is empty (no items)"),
    ("no vectors", ["a"], [], "'vectors' holds 0 vectors for 1 ids (one per id)"),
    ("flat vectors", ["a", "b"], [1.0, 2.0], "vectors[0] should be a non-empty list of numbers, got float"),
    ("empty vector", ["a"], [[]], "vectors[0] should be a non-empty list of numbers, got an empty list"),
    ("vectors not a list", ["a"], {"a": [1.0]}, "'vectors' should be a list of 1 lists of numbers, got dict"),
    ("ragged", ["a", "b", "c"], [[1.0, 2.0], [1.0, 2.0], [1.0]],
     "vectors[2] holds 1 numbers, vectors[0] 2 (every vector has the same length)"),
    ("string number", ["a"], [[1.0, "2"]], "vectors[0][1] = '2' should be a number"),
    ("bool number", ["a"], [[True]], "vectors[0][0] = True should be a number"),
    ("null number", ["a", "b"], [[1.0], [None]], "vectors[1][0] = None should be a number"),
    ("nested", ["a"], [[[1.0]]], "vectors[0][0] = [1.0] should be a number"),
    ("nan", ["a", "b"], [[1.0], [float("nan")]], "vectors[1] holds NaN or infinity"),
    ("overflows float32", ["a"], [[1e39]], "vectors[0] holds a value with |x| above 10000 "
                                            "(item vectors of real models are far smaller)"),
    ("integer beyond a float", ["a", "b"], [[1], [10 ** 400]], "vectors[1] holds a value with |x| above 10000 "
                                                               "(item vectors of real models are far smaller)"),
    ("just above the bound", ["a"], [[0.0, -10000.5]], "vectors[0] holds a value with |x| above 10000 "
                                                       "(item vectors of real models are far smaller)"),
]


def one_line(err: FmrlError, path, what: str) -> None:
    assert str(err) == f"{path}: {what}"


@pytest.mark.parametrize("ids, vectors, what", [c[1:] for c in BAD_JSON], ids=[c[0] for c in BAD_JSON])
def test_bad_item_vector_json_is_one_line_naming_the_index(tmp_path, ids, vectors, what):
    path = tmp_path / "vectors.json"
    path.write_text(json.dumps({"format": "fmrl-sdk/item-vectors", "ids": ids, "vectors": vectors}))
    with pytest.raises(FmrlError) as e:
        read_item_vectors(path)
    one_line(e.value, path, what)


@pytest.mark.parametrize("text, what", [
    ('["a"]', "expected {\"ids\": [...], \"vectors\": [[...]]}, got a list"),
    ('{"ids": ["a"]}', "expected {\"ids\": [...], \"vectors\": [[...]]}: no 'vectors'"),
    ('{"vectors": [[1.0]]}', "expected {\"ids\": [...], \"vectors\": [[...]]}: no 'ids'"),
])
def test_item_vector_json_of_another_shape_is_one_line(tmp_path, text, what):
    path = tmp_path / "vectors.json"
    path.write_text(text)
    with pytest.raises(FmrlError) as e:
        read_item_vectors(path)
    one_line(e.value, path, what)


def save_safetensors(path, vectors: np.ndarray, ids) -> None:
    from safetensors.numpy import save_file

    metadata = {} if ids is None else {"ids": ids if isinstance(ids, str) else json.dumps(ids)}
    save_file({"vectors": vectors}, str(path), metadata=metadata)


F32 = np.float32
BAD_SAFETENSORS = [
    ("null id", np.ones((1, 2), F32), [None], "ids[0] must be a string or an integer, got NoneType"),
    ("empty id", np.ones((2, 2), F32), ["a", ""], "ids[1] must not be empty"),
    ("ids not a list", np.ones((1, 2), F32), {"a": 1}, "metadata 'ids' should be a list of item ids, got dict"),
    ("ids not JSON", np.ones((1, 2), F32), "[a", "metadata 'ids' is not a JSON list"),
    ("no ids", np.ones((1, 2), F32), None, "metadata has no 'ids' (JSON list of item ids)"),
    ("fewer rows than ids", np.ones((1, 2), F32), ["a", "b"],
     "tensor 'vectors' has shape [1, 2], expected [2, S] (one vector per id)"),
    ("flat", np.ones(2, F32), ["a", "b"], "tensor 'vectors' has shape [2], expected [2, S] (one vector per id)"),
    ("no dims", np.ones((1, 0), F32), ["a"], "tensor 'vectors' has shape [1, 0], expected [1, S] (one vector per id)"),
    ("integers", np.ones((1, 2), np.int64), ["a"], "tensor 'vectors' holds int64, expected floating-point numbers"),
    ("inf", np.array([[1.0], [np.inf]], F32), ["a", "b"], "vectors[1] holds NaN or infinity"),
    ("too large", np.array([[1e5]], F32), ["a"], "vectors[0] holds a value with |x| above 10000 "
                                                   "(item vectors of real models are far smaller)"),
]


@pytest.mark.parametrize("vectors, ids, what", [c[1:] for c in BAD_SAFETENSORS], ids=[c[0] for c in BAD_SAFETENSORS])
def test_bad_item_vector_safetensors_is_one_line(tmp_path, vectors, ids, what):
    path = tmp_path / "vectors.safetensors"
    save_safetensors(path, vectors, ids)
    with pytest.raises(FmrlError) as e:
        read_item_vectors(path)
    one_line(e.value, path, what)


def test_float64_safetensors_are_read_as_float32(tmp_path):
    path = tmp_path / "vectors.safetensors"
    save_safetensors(path, np.array([[0.5, -1.0]], np.float64), [3])
    ids, got = read_item_vectors(path)
    assert ids == ["3"] and got.dtype == np.float32 and got.tolist() == [[0.5, -1.0]]

