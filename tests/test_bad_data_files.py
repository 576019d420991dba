"""Data and feature files that cannot be used are one-line FmrlErrors: the feature store's file stays
inside its folder and matches its hash, a features manifest nested too deeply, meta.json lines that are
neither JSON nor a Python dict literal, gzip files that are corrupt; interaction logs (CSV, JSONL, Parquet)
follow one set of rules (ids, finite timestamps, UTF-8, field sizes) whichever path reads them.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fmrl_sdk.data import columnar, textfiles
from fmrl_sdk.errors import FmrlError
from fmrl_sdk.ids import MAX_ID_BYTES
from tests.helpers import DEEP


def one_line_error(call, *args) -> str:
    with pytest.raises(FmrlError) as info:
        call(*args)
    message = str(info.value)
    assert message and "\n" not in message and message.strip() == message
    return message


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


@pytest.mark.parametrize("line, message", [
    (b'{"asin": "b", "title": "\xff"}', "not UTF-8 text"),
    (b'{"asin": ["b"]}', "'asin' must be a string or an integer, got list"),
    (b"{'asin': b'b'}", "'asin' must be a string or an integer, got bytes"),
    (b'{"asin": ""}', "'asin' must not be empty"),
    (b'{"asin": "b\\u0000"}', "'asin' must not contain NUL characters"),
])
@pytest.mark.parametrize("name", ["meta.json", "meta.json.gz"])
def test_meta_json_lines_with_bad_text_or_ids_are_fmrl_errors(tmp_path, name, line, message):
    from fmrl_sdk.data.dataset import _read_meta

    data = b'{"asin": "a", "title": "t"}\n' + line + b"\n"
    (tmp_path / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    assert one_line_error(_read_meta, tmp_path) == f"{tmp_path / name}:2: {message}"


def test_meta_json_gz_that_is_corrupt_or_cut_short_is_an_fmrl_error(tmp_path):
    from fmrl_sdk.data.dataset import _read_meta

    rng = np.random.default_rng(0)
    lines = b"".join(b'{"asin": "a%d", "title": "%s"}\n' % (j, rng.bytes(30).hex().encode()) for j in range(3000))
    whole = gzip.compress(lines)
    path = tmp_path / "meta.json.gz"
    flipped = bytearray(whole)
    flipped[-6] ^= 0xFF   # the CRC at the end
    for data, reason in ((b"not gzip at all", "Not a gzipped file"), (b"\x1f\x8b" + b"garbage" * 10, "Unknown compression"),
                         (whole[:len(whole) // 2], "Compressed file ended"), (bytes(flipped), "CRC check failed")):
        path.write_bytes(data)
        message = one_line_error(_read_meta, tmp_path)
        assert message.startswith(f"{path}:") and ": cannot read gzip data (" in message and reason in message, message
    path.write_bytes(whole[:len(whole) // 2])
    assert 1000 < int(one_line_error(_read_meta, tmp_path).split(":")[1]) < 3000   # where the data ends
    scrambled = bytearray(whole)   # may inflate to lines of garbage before zlib notices: an error on one of them
    scrambled[len(whole) // 2: len(whole) // 2 + 64] = bytes(64)
    path.write_bytes(bytes(scrambled))
    assert one_line_error(_read_meta, tmp_path).startswith(f"{path}:")


def test_meta_json_bom_and_blank_lines(tmp_path):
    from fmrl_sdk.data.dataset import _read_meta

    (tmp_path / "meta.json").write_bytes(b'\xef\xbb\xbf{"asin": "a"}\n\n  \n{"asin": 7, "title": "t"}\n')
    assert _read_meta(tmp_path) == {"a": {"asin": "a"}, "7": {"asin": 7, "title": "t"}}


# ----------------------------------------------------------------------------------------------
# Interaction logs: the same rules whichever path reads the file (pyarrow's columnar one or row by row)

BASE = [{"user": f"u{u}", "item": f"i{r}", "timestamp": 1000 * u + r} for u in range(30) for r in range(6)]
WAYS = {"csv": ("columnar", "rows"), "jsonl": ("any", "rows"), "parquet": ("columnar",)}


def bad_log(folder: Path, kind: str, last, note: str | None = None) -> tuple[Path, str]:
    """The base log (30 users x 6 rows) as `kind`, then `last` (bytes of a line, or a Parquet row as a dict) as
    its last row; (file, 'FILE:LINE' of that row). note: a fourth CSV column holding `note` in every row."""
    path = folder / f"log.{kind}"
    if kind == "parquet":
        rows = BASE + [last]
        pq.write_table(pa.table({key: [r[key] for r in rows] for key in ("user", "item", "timestamp")}), path)
        return path, f"{path}: row {len(rows)}"
    if kind == "jsonl":
        path.write_bytes("".join(json.dumps(r) + "\n" for r in BASE).encode() + last + b"\n")
        return path, f"{path}:{len(BASE) + 1}"
    tail = "" if note is None else f",{note}"
    lines = ["user,item,timestamp" + (",note" if note is not None else "")]
    lines += [f"{r['user']},{r['item']},{r['timestamp']}{tail}" for r in BASE]
    path.write_bytes("\n".join(lines).encode() + b"\n" + last + b"\n")
    return path, f"{path}:{len(BASE) + 2}"


def outcome(path: Path, way: str = "any") -> str:
    """read_log's answer: its one-line error, or 'N rows, U users, I items'. way: "any" (read_log chooses),
    "columnar" (pyarrow's path only: falling back to row by row fails), "rows" (pyarrow's parsers refuse)."""
    import pyarrow.csv as pcsv
    import pyarrow.json as pj

    def refused(*args, **kwargs):
        raise pa.ArrowInvalid("made to refuse by the test")

    def no_fallback(path, rows):
        raise AssertionError(f"{path} was read row by row")

    with pytest.MonkeyPatch.context() as mp:
        if way == "columnar":
            mp.setattr(columnar, "_from_rows", no_fallback)
        elif way == "rows":
            mp.setattr(pcsv, "read_csv", refused)
            mp.setattr(pj, "read_json", refused)
        try:
            log = columnar.read_log(path)
        except FmrlError as e:
            assert "\n" not in str(e)
            return str(e)
    return f"{log.rows} rows, {len(log.user_ids)} users, {len(log.item_ids)} items"


def assert_refused(folder: Path, kind: str, last, message: str, **options) -> None:
    path, where = bad_log(folder, kind, last, **options)
    for way in WAYS[kind]:
        assert outcome(path, way) == f"{where}: {message}", way


@pytest.mark.parametrize("kind, last", [
    ("csv", b"u1,i\x001,5000"),
    ("jsonl", b'{"user": "u1", "item": "i\\u00001", "timestamp": 5}'),
    ("parquet", {"user": "u1", "item": "i\x001", "timestamp": 5}),
])
def test_nul_inside_an_id_is_refused(tmp_path, kind, last):
    assert_refused(tmp_path, kind, last, "'item' must not contain NUL characters")


@pytest.mark.parametrize("kind, last, shown", [
    ("csv", b"u1,i1,inf", "inf"), ("csv", b"u1,i1,-inf", "-inf"), ("csv", b"u1,i1,1e400", "inf"),
    ("csv", b"u1,i1,-Infinity", "-inf"),
    ("jsonl", b'{"user": "u1", "item": "i1", "timestamp": Infinity}', "inf"),
    ("jsonl", b'{"user": "u1", "item": "i1", "timestamp": -Infinity}', "-inf"),
    ("jsonl", b'{"user": "u1", "item": "i1", "timestamp": 1e400}', "inf"),
    ("jsonl", b'{"user": "u1", "item": "i1", "timestamp": "inf"}', "inf"),
    ("jsonl", b'{"user": "u1", "item": "i1", "timestamp": 1' + b"0" * 400 + b"}", "inf"),
    ("parquet", {"user": "u1", "item": "i1", "timestamp": float("inf")}, "inf"),
    ("parquet", {"user": "u1", "item": "i1", "timestamp": -float("inf")}, "-inf"),
])
def test_timestamps_must_be_finite_numbers(tmp_path, kind, last, shown):
    assert_refused(tmp_path, kind, last, f"timestamp {shown} is not a finite number")


@pytest.mark.parametrize("kind, last", [
    ("csv", b"u1,i1,nan"), ("jsonl", b'{"user": "u1", "item": "i1", "timestamp": NaN}'),
    ("parquet", {"user": "u1", "item": "i1", "timestamp": float("nan")}),
])
def test_nan_timestamps_keep_their_message(tmp_path, kind, last):
    assert_refused(tmp_path, kind, last, "timestamp nan is not a number")


@pytest.mark.parametrize("kind, last, note", [
    ("jsonl", b'{"user": "u1", "item": "i\xff", "timestamp": 5}', None),
    ("jsonl", b'{"user": "u1", "item": "i1", "timestamp": 5, "review": "\xff"}', None),   # a field not read
    ("csv", b"u1,i\xff,5000", None),
    ("csv", b"u1,i1,5000,\xe9t\xe9", "ok"),   # a column not read (Latin-1)
])
def test_text_that_is_not_utf8_names_its_line(tmp_path, kind, last, note):
    assert_refused(tmp_path, kind, last, "not UTF-8 text", note=note)


def test_a_csv_header_that_is_not_utf8_is_line_1(tmp_path):
    path = tmp_path / "log.csv"
    path.write_bytes(b"user,item,timestamp,r\xe9sum\xe9\nu1,i1,1,x\n")
    assert outcome(path) == f"{path}:1: not UTF-8 text"


@pytest.mark.parametrize("kind, last", [
    ("csv", b"u1," + b"x" * 140_000 + b",5000"),   # read by pyarrow; row by row, over the csv module's default
    ("csv", "u1,{},5000".format("\u00e9" * 513).encode()),   # 513 characters, 1,026 bytes
    ("jsonl", b'{"user": "u1", "item": "' + b"x" * 2000 + b'", "timestamp": 5}'),
    ("jsonl", b'{"user": "u1", "item": 1' + b"0" * 1100 + b', "timestamp": 5}'),   # an integer: its digits
    ("parquet", {"user": "u1", "item": "x" * 2000, "timestamp": 5}),
])
def test_ids_longer_than_max_id_bytes_are_refused(tmp_path, kind, last):
    assert_refused(tmp_path, kind, last, f"'item' is longer than {MAX_ID_BYTES:,} bytes (the most an id may hold)")


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet"])
def test_ids_of_exactly_max_id_bytes_are_read(tmp_path, kind):
    item = "\u00e9" * (MAX_ID_BYTES // 2)
    last = {"user": "u1", "item": item, "timestamp": 5}
    last = last if kind == "parquet" else (json.dumps(last) if kind == "jsonl" else f"u1,{item},5").encode()
    path, _ = bad_log(tmp_path, kind, last)
    assert {outcome(path, way) for way in WAYS[kind]} == {"181 rows, 30 users, 7 items"}


def test_a_long_value_in_a_column_not_read_is_read_alike(tmp_path):
    """A review text of 140,000 characters (pyarrow's path) or 2 MiB (longer than pyarrow's block: row by row):
    read the same both ways. The csv module's own limit (131,072) no longer decides; MAX_CSV_FIELD_CHARS does."""
    import csv

    before = csv.field_size_limit()
    for size in (140_000, 2 << 20):
        path, _ = bad_log(tmp_path, "csv", b"u1,i1,5000," + b"r" * size, note="ok")
        assert {outcome(path, way) for way in ("any", "rows")} == {"181 rows, 30 users, 6 items"}
    assert textfiles.MAX_CSV_FIELD_CHARS >= columnar.CSV_BLOCK_BYTES   # longer fields never reach pyarrow's path
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(textfiles, "MAX_CSV_FIELD_CHARS", 3 << 19)
        assert outcome(path) == f"{path}:182: a field longer than {3 << 19:,} characters (the most a CSV field may hold)"
    assert csv.field_size_limit() == before   # the csv module's setting is restored


def test_an_unpaired_surrogate_escape_in_a_jsonl_id_is_refused(tmp_path):
    assert_refused(tmp_path, "jsonl", b'{"user": "u1", "item": "i\\ud800", "timestamp": 5}',
                   "'item' holds an unpaired surrogate (\\ud800-\\udfff): not Unicode text")


def test_several_bad_rows_report_the_earliest_and_the_rule_runs_on_distinct_ids(tmp_path, monkeypatch):
    rows = [dict(r) for r in BASE * 20]   # 3,600 rows
    rows[900]["timestamp"] = float("inf")
    rows[800]["item"] = "i" * 2000
    rows[700]["user"] = "u\x00"
    calls = []
    monkeypatch.setattr(columnar, "text_id_problem", lambda text, rule=columnar.text_id_problem: calls.append(text)
                        or rule(text))

    def write(kind: str) -> Path:
        path = tmp_path / f"many.{kind}"
        if kind == "csv":
            path.write_text("user,item,timestamp\n" + "".join(f"{r['user']},{r['item']},{r['timestamp']}\n" for r in rows))
        else:
            pq.write_table(pa.table({key: [r[key] for r in rows] for key in ("user", "item", "timestamp")}), path)
        return path

    for kind, lines in (("csv", 2), ("parquet", 1)):   # row 700 (0-based) is CSV line 702, Parquet "row 701"
        path = write(kind)
        where = f"{path}:" if kind == "csv" else f"{path}: row "
        calls.clear()
        assert outcome(path, "columnar") == f"{where}{700 + lines}: 'user' must not contain NUL characters"
        assert len(calls) <= 31 + 7 + 2   # the distinct users and items, and each message: not the rows
        rows[700]["user"] = "u1"
        assert outcome(write(kind), "columnar") == \
            f"{where}{800 + lines}: 'item' is longer than 1,024 bytes (the most an id may hold)"
        rows[800]["item"] = "i1"
        assert outcome(write(kind), "columnar") == f"{where}{900 + lines}: timestamp inf is not a finite number"
        rows[700]["user"], rows[800]["item"] = "u\x00", "i" * 2000
    assert outcome(write("csv"), "rows") == outcome(write("csv"), "columnar")


def test_duplicate_keys_in_jsonl_lines(tmp_path):
    """A repeated user/item/timestamp key is refused; a repeated key the reader does not read is not looked at
    by pyarrow's path (as the columnar module says), and refused row by row (the JSON reader's rule)."""
    for key in ("user", "item", "timestamp"):
        line = b'{"user": "u1", "item": "i1", "timestamp": 5, "%s": "x"}' % key.encode()
        path, where = bad_log(tmp_path, "jsonl", line)
        assert outcome(path) == outcome(path, "rows") == f"{where}: invalid JSON (duplicate key '{key}')"
    path, where = bad_log(tmp_path, "jsonl", b'{"user": "u1", "item": "i1", "timestamp": 5, "x": 1, "x": 2}')
    assert outcome(path) == "181 rows, 30 users, 6 items"
    assert outcome(path, "rows") == f"{where}: invalid JSON (duplicate key 'x')"


@pytest.mark.parametrize("name,replacement,message", [
    (b"timestamp", b"\x80", "not a readable Parquet file (a column name is not UTF-8 text)"),   # was a traceback
    (b"item", b"\n", "no 'item' column (columns: 'user', '\\ntem', 'timestamp')"),             # was two lines
])
def test_parquet_column_names_that_are_not_text_are_one_line(tmp_path, name, replacement, message):
    """Found by tests/test_fuzz_readers.py: one byte of a column name changed in the file's schema."""
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"user": ["0"], "item": ["0"], "timestamp": [1]}), good)
    data = good.read_bytes()
    at = data.index(name)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(data[:at] + replacement + data[at + 1:])
    with pytest.raises(FmrlError) as e:
        columnar.read_log(bad)
    assert str(e.value) == f"{bad}: {message}"
