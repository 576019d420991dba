"""Data and feature files that cannot be used are one-line FmrlErrors: the feature store's file stays
inside its folder and matches its hash, a features manifest nested too deeply, meta.json lines that are
neither JSON nor a Python dict literal.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fmrl_sdk.errors import FmrlError
from tests.helpers import DEEP


# ----------------------------------------------------------------------------------------------
# Feature store: the file stays inside the folder and is hashed


def make_features(folder: Path) -> None:
    from fmrl_sdk.features.store import FORMAT, VERSION, write_features

    write_features(folder, {"text": np.ones((3, 4), np.float32)},
                   {"format": FORMAT, "version": VERSION, "item_ids": ["a", "b", "c"],
                    "modalities": [{"tensor": "text", "dim": 4}]})


def edit_features_manifest(folder: Path, **changes) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del manifest[key]
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("changes, match", [
    ({"file_sha256": None}, "manifest lacks 'file_sha256'"),
    ({"file_sha256": "abc"}, "file_sha256 must be 64"),
    ({"file": "/tmp/elsewhere.safetensors"}, "points outside"),
    ({"file": "../other/features.safetensors"}, "points outside"),
    ({"file": "link.safetensors"}, "is a symbolic link"),
])
def test_feature_store_file_must_be_inside_and_hashed(tmp_path, changes, match):
    from fmrl_sdk.features.store import load_features

    folder = tmp_path / "features"
    make_features(folder)
    assert load_features(folder, ["a", "b", "c"])[0].shape == (3, 4)
    (folder / "link.safetensors").symlink_to(folder / "features.safetensors")
    edit_features_manifest(folder, **changes)
    with pytest.raises(FmrlError, match=match):
        load_features(folder, ["a", "b", "c"])


def test_feature_store_manifest_too_deep_is_an_fmrl_error(tmp_path):
    from fmrl_sdk.features.store import read_manifest

    folder = tmp_path / "features"
    make_features(folder)
    (folder / "manifest.json").write_text(DEEP)
    with pytest.raises(FmrlError, match="nested too deeply"):
        read_manifest(folder)


# ----------------------------------------------------------------------------------------------
# Dataset meta.json


@pytest.mark.parametrize("line", [DEEP, "{" * 100_000, "-" * 100_000 + "1", "{[1]: 2}"])
def test_meta_json_lines_that_cannot_be_parsed_are_fmrl_errors(tmp_path, line):
    from fmrl_sdk.data.dataset import _read_meta

    (tmp_path / "meta.json").write_text('{"asin": "a", "title": "t"}\n' + line + "\n")
    with pytest.raises(FmrlError, match=r"meta.json:2: neither JSON nor a Python dict literal"):
        _read_meta(tmp_path)
