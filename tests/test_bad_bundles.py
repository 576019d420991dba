"""Crafted bundles are refused with one exact FmrlError line, before anything is used: manifest values
(schema before use), listed files (no symbolic links, nothing outside the folder), cold_start.json values,
items.json ids (the id rule, with the same line from the C runtime), unparseable JSON in any bundle file; and
the manifest an export writes names the run, not a path.

Bundles are crafted *validly* (hashes recomputed), so each test reaches the check it is about. Uses the run
and size-16 bundle of conftest's `art`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from fmrl_sdk.errors import FmrlError
from fmrl_sdk.runtime import Recommender, load_bundle
from tests.helpers import DEEP, copy_bundle, rewrite_manifest, run_app

GOLDEN_BUNDLE = Path(__file__).resolve().parent / "golden" / "tiny"


def one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text
    return text


# ----------------------------------------------------------------------------------------------
# Bundle manifest: schema before use


@pytest.mark.parametrize("changes, match", [
    ({"k_max": float("nan")}, "k_max must be an integer"),
    ({"k_max": "lots"}, "k_max must be an integer"),
    ({"k_max": 0}, "k_max must be an integer in"),
    ({"k_max": True}, "k_max must be an integer"),
    ({"k_max": 100.0}, "k_max must be an integer"),
    ({"k_max": 7375}, "k_max 7375 exceeds num_items 7374"),
    ({"num_items": None}, "num_items must be an integer"),
    ({"num_items": "many"}, "num_items must be an integer"),
    ({"num_items": 7373}, "num_items 7373 but items.json lists 7374"),
    ({"granularity": "16"}, "granularity must be an integer"),
    ({"granularity": -16}, "granularity must be an integer"),
    ({"num_blocks": 2}, r"state shape \[2, 16\] does not match"),
    ({"num_blocks": float("inf")}, "num_blocks must be an integer"),
    ({"state": {"shape": [2.0, 16]}}, "state shape"),
    ({"state": [2, 16]}, "state shape"),
    ({"state": {"shape": [2, 16], "dtype": "float16"}}, "state dtype"),
    ({"method": 5}, "method must be a non-empty string"),
    ({"format_version": True}, "unsupported format_version True"),
    ({"format_version": 1.0}, "unsupported format_version 1.0"),
    ({"executorch_version": "v99.0.0"}, "executorch_version 'v99.0.0' is not a version"),
    ({"executorch_version": "latest"}, "is not a version"),
    ({"executorch_version": ""}, "is not a version"),
    ({"executorch_version": 99}, "is not a version"),
    ({"executorch_version": "99.0.0"}, "newer than the installed"),
])
def test_manifest_values_are_validated_before_use(art, tmp_path, changes, match):
    bundle = copy_bundle(art.bundle, tmp_path / "b")
    rewrite_manifest(bundle, **changes)
    with pytest.raises(FmrlError, match=match) as e:
        Recommender.open(bundle)
    one_line(e)


def test_a_manifest_that_disagrees_with_the_program_is_an_fmrl_error(art, tmp_path):
    """num_blocks 2 and a consistent state shape [4, s], but the program holds one block."""
    bundle = copy_bundle(art.bundle, tmp_path / "b")
    manifest = json.loads((bundle / "manifest.json").read_text())
    rewrite_manifest(bundle, num_blocks=2, state={**manifest["state"], "shape": [4, manifest["granularity"]]})
    with pytest.raises(FmrlError, match=r"the program does not accept the manifest's state \[4, 16\]") as e:
        Recommender.open(bundle)
    one_line(e)


@pytest.mark.parametrize("version", ["1.5.1", "1.5.1+cpu", "1.5.0rc2", "1.4.0.dev20250101"])
def test_well_formed_older_or_equal_executorch_versions_are_accepted(art, tmp_path, version):
    bundle = copy_bundle(art.bundle, tmp_path / "b")
    rewrite_manifest(bundle, executorch_version=version)
    assert load_bundle(bundle).manifest["executorch_version"] == version


def test_sha256_entries_must_be_hex_digests(art, tmp_path):
    bundle = copy_bundle(art.bundle, tmp_path / "b")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["model.pte"] = {"sha256": "x"}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FmrlError, match="sha256 of 'model.pte' must be 64 hex digits"):
        load_bundle(bundle)
    manifest["files"] = sorted(manifest["files"])
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FmrlError, match="'files' must map file names to sha256"):
        load_bundle(bundle)


@pytest.mark.parametrize("name", ["manifest.json", "items.json", "cold_start.json"])
@pytest.mark.parametrize("content", [DEEP, '{"a": ' + "9" * 5000 + "}", "\udcff"])
def test_unparseable_bundle_json_is_an_fmrl_error(art, tmp_path, name, content):
    bundle = copy_bundle(art.bundle, tmp_path / "b")
    (bundle / name).write_bytes(content.encode("utf-8", "surrogateescape"))
    if name != "manifest.json":
        rewrite_manifest(bundle)
    with pytest.raises(FmrlError, match=f"{name}") as e:
        load_bundle(bundle)
    assert "JSON" in one_line(e) or "UTF-8" in str(e.value)


# ----------------------------------------------------------------------------------------------
# Bundle files: no symbolic links, nothing outside the folder


def test_a_listed_symlink_is_refused_even_with_a_matching_hash(art, tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_text("root:x:0:0\n")
    bundle = copy_bundle(art.bundle, tmp_path / "b")
    (bundle / "extra.txt").symlink_to(outside)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["extra.txt"] = hashlib.sha256(outside.read_bytes()).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FmrlError, match="extra.txt: is a symbolic link"):
        load_bundle(bundle)


@pytest.mark.parametrize("target", ["model.pte", "manifest.json"])
def test_required_files_and_the_manifest_cannot_be_links(art, tmp_path, target):
    bundle = copy_bundle(art.bundle, tmp_path / "b")
    real = tmp_path / f"real-{target}"
    (bundle / target).rename(real)
    (bundle / target).symlink_to(real)
    with pytest.raises(FmrlError, match=f"{target}: is a symbolic link"):
        load_bundle(bundle)


def test_a_linked_folder_inside_the_bundle_is_refused(art, tmp_path):
    bundle = copy_bundle(art.bundle, tmp_path / "b")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "x.bin").write_bytes(b"x")
    (bundle / "sub").symlink_to(tmp_path / "elsewhere")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["sub/x.bin"] = hashlib.sha256(b"x").hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FmrlError, match="sub: is a symbolic link"):
        load_bundle(bundle)


@pytest.mark.parametrize("name", ["/etc/hostname", "../b/items.json", "a/../../x", ""])
def test_listed_names_outside_the_bundle_are_refused(art, tmp_path, name):
    bundle = copy_bundle(art.bundle, tmp_path / "b")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"][name] = "0" * 64
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FmrlError, match="points outside|not a plain relative path"):
        load_bundle(bundle)


def test_the_bundle_folder_itself_may_be_reached_through_a_link(art, tmp_path):
    """Only what is inside is contained: opening `bundles/current -> bundles/v3` is normal."""
    (tmp_path / "current").symlink_to(art.bundle)
    assert load_bundle(tmp_path / "current").num_items == load_bundle(art.bundle).num_items


# ----------------------------------------------------------------------------------------------
# cold_start.json: finite values, indices in range


def write_cold(bundle: Path, **changes) -> None:
    cold = json.loads((bundle / "cold_start.json").read_text())
    for key, (position, value) in changes.items():
        cold[key][position] = value
    (bundle / "cold_start.json").write_text(json.dumps(cold))
    rewrite_manifest(bundle)


@pytest.mark.parametrize("changes, match", [
    ({"indices": (0, 7375)}, r"index 7375 outside \[1, 7374\]"),
    ({"indices": (0, 0)}, r"index 0 outside \[1, 7374\]"),
    ({"indices": (0, -1)}, r"index -1 outside"),
    ({"indices": (0, 2.0)}, r"index 2.0 outside"),
    ({"indices": (0, True)}, r"index True outside"),
    ({"indices": (1, "x")}, r"index 'x' outside"),
    ({"scores": (3, float("nan"))}, "scores holds NaN"),
    ({"scores": (3, 1e39)}, "beyond float32"),
    ({"hidden": (0, float("-inf"))}, "hidden holds NaN"),
    ({"hidden": (0, "1.0")}, "hidden must hold numbers"),
])
def test_cold_start_values_are_checked_on_open(art, tmp_path, changes, match):
    bundle = copy_bundle(art.bundle, tmp_path / "b")
    write_cold(bundle, **changes)
    with pytest.raises(FmrlError, match=match) as e:
        Recommender.open(bundle)
    assert "cold_start.json" in one_line(e)


def test_cold_start_duplicates_are_refused(art, tmp_path):
    bundle = copy_bundle(art.bundle, tmp_path / "b")
    first = json.loads((bundle / "cold_start.json").read_text())["indices"][0]
    write_cold(bundle, indices=(1, first))
    with pytest.raises(FmrlError, match="duplicate indices"):
        load_bundle(bundle)


# ----------------------------------------------------------------------------------------------
# items.json: ids under fmrl_sdk/ids.py's rule, distinct, refused alike by both runtimes


BIG = str(2 ** 70)   # an integer beyond 64 bits: Python's json reads it as an int, nlohmann as a float
# name: (JSON text of entries 5, 6 and 7 of the golden bundle's items.json (None: unchanged), what both
# runtimes say; None: both open it, entry 7's id then being OPENED[name])
ITEM_CASES = {
    "empty": ((None, None, '""'), "item 7: id must not be empty"),
    "NUL": ((None, None, '"i\\u0000x"'), "item 7: id must not contain NUL characters"),
    "5,000 bytes": ((None, None, '"' + "a" * 5000 + '"'),
                    "item 7: id is longer than 1,024 bytes (the most an id may hold)"),
    "1,025 bytes of UTF-8": ((None, None, '"' + "\u00e9" * 512 + 'a"'), "item 7: id is longer than 1,024 bytes"),
    "1,024 bytes of UTF-8": ((None, None, '"' + "\u00e9" * 512 + '"'), None),
    "a float": ((None, None, "1.5"), "item 7: id must be a string or an integer, got float"),
    "an exponent": ((None, None, "1E5"), "item 7: id must be a string or an integer, got float"),
    "true": ((None, None, "true"), "item 7: id must be a string or an integer, got bool"),
    "null": ((None, None, "null"), "item 7: id must be a string or an integer, got NoneType"),
    "a list": ((None, None, '["i5"]'), "item 7: id must be a string or an integer, got list"),
    "an object": ((None, None, '{"id": "i5"}'), "item 7: id must be a string or an integer, got dict"),
    "an integer": ((None, None, "-7"), None),
    "an integer beyond 64 bits": (('"a,b]"', '"c\\"[{"', "-" + BIG), None),   # after strings holding , ] " [ {
    "a duplicate": ((None, None, '"i1"'), "item 7: duplicate id (item 2 has it too)"),
    "an integer and its digits": ((None, '"77"', "77"), "item 7: duplicate id (item 6 has it too)"),
    "a big integer and its digits": ((None, BIG, f'"{BIG}"'), "item 7: duplicate id (item 6 has it too)"),
    "an empty list": ("[]", "expected a non-empty JSON list of item ids"),
}
OPENED = {"1,024 bytes of UTF-8": "\u00e9" * 512, "an integer": "-7", "an integer beyond 64 bits": "-" + BIG}

ITEMS_APP = r"""
lib.fmrl_item_id.restype = ctypes.c_char_p
res = {}
for name, path in args["paths"].items():
    status, rec = open_(path)
    res[name] = [status, err(), lib.fmrl_item_id(rec, 7).decode() if status == 0 else None]
    if status == 0:
        lib.fmrl_close(rec)
out["r"] = res
"""


def items_bundle(tmp_path: Path, name: str, entries) -> Path:
    """A copy of the golden bundle whose items.json (indented, as export writes it) has `entries` as its
    entries 5-7 (or is `entries`, a whole JSON text), re-hashed."""
    bundle = copy_bundle(GOLDEN_BUNDLE, tmp_path / name)
    if isinstance(entries, str):
        (bundle / "items.json").write_text(entries)
    else:
        texts = [json.dumps(i) for i in json.loads((bundle / "items.json").read_text())]
        texts[4:7] = [new or old for new, old in zip(entries, texts[4:7])]
        (bundle / "items.json").write_text("[\n  " + ",\n  ".join(texts) + "\n]")
    rewrite_manifest(bundle)
    return bundle


def both_runtimes(cpp_build, paths: dict) -> dict:
    """{name: (Python's message or entry 7's id, C's status, C's message or entry 7's id)}"""
    c = run_app(cpp_build, ITEMS_APP, paths={name: str(path) for name, path in paths.items()})["r"]
    got = {}
    for name, path in paths.items():
        try:
            python = load_bundle(path).item_ids[6]
        except FmrlError as e:
            python = str(e)
            assert "\n" not in python
        got[name] = (python, c[name][0], c[name][1] or c[name][2])
    return got


def test_item_ids_are_refused_alike_by_both_runtimes(tmp_path, cpp_build):
    """The id rule every reader applies, on items.json: both runtimes refuse the same entries with the same
    line naming items.json and the entry, and read the same ids (an integer as its digits, beyond 64 bits too)."""
    paths = {name: items_bundle(tmp_path, f"b{i}", entries)
             for i, (name, (entries, _)) in enumerate(ITEM_CASES.items())}
    for name, (python, status, c) in both_runtimes(cpp_build, paths).items():
        said = ITEM_CASES[name][1]
        if said is None:
            assert (python, status, c) == (OPENED[name], 0, OPENED[name]), name
        else:
            assert python.startswith(f"{paths[name] / 'items.json'}: {said}"), (name, python)
            assert (status, c) == (2, python), name


def test_item_ids_json_cannot_hold_is_refused_by_both_runtimes(tmp_path, cpp_build):
    """What the C runtime's JSON reader cannot hold, both refuse, in their own words: a lone surrogate escape
    (Python: the id rule; C: invalid JSON) and an integer beyond a double (Python: over 1,024 bytes)."""
    paths = {"surrogate": items_bundle(tmp_path, "s", (None, None, '"i\\ud800"')),
             "huge": items_bundle(tmp_path, "h", (None, None, "1" + "0" * 1100))}
    got = both_runtimes(cpp_build, paths)
    items = {name: f"{path / 'items.json'}: " for name, path in paths.items()}
    assert got["surrogate"][0] == items["surrogate"] + ("item 7: id holds an unpaired surrogate (\\ud800-\\udfff): "
                                                        "not Unicode text")
    assert got["huge"][0] == items["huge"] + "item 7: id is longer than 1,024 bytes (the most an id may hold)"
    status, c = got["surrogate"][1:]
    assert status == 2 and "surrogate" in c
    assert c.startswith(items["surrogate"][:-2] + ":8: invalid JSON in items.json (")
    assert got["huge"][1:] == (2, items["huge"] + "invalid JSON in items.json (a number beyond the range of a double)")


# ----------------------------------------------------------------------------------------------
# Export: the manifest names the run, it does not record the build machine's path


def test_the_manifest_records_the_run_name_and_weights_hash_not_a_path(art):
    text = (art.bundle / "manifest.json").read_text()
    manifest = json.loads(text)
    assert manifest["run"] == {"name": art.run_dir.name,
                               "checkpoint_sha256": hashlib.sha256((art.run_dir / "model.safetensors").read_bytes()).hexdigest()}
    assert str(art.run_dir.parent) not in text and str(Path.home()) + "/" not in text
