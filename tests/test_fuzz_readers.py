"""Issue 29: property-based tests (hypothesis) for every reader of user input.

Readers and properties:

* interaction logs (fmrl_sdk/data/columnar.py read_log, what dataset.read_interactions reads with):
  - generated well-formed CSV and JSONL logs (ASCII, Unicode, digit and integer ids; integer or float
    timestamps with ties, a `ts` column, or none; quoted fields holding commas, quotes and newlines; BOMs,
    CRLF, extra columns, blank lines) read exactly as tests/reference_reader.py (the row-by-row yardstick)
    reads them: codes, ids, timestamps, per-user sequences; and through pyarrow's vectorised path, not the
    row-by-row fallback, wherever that path is meant to take the file;
  - the same log written as CSV, JSONL and Parquet reads the same, and as written;
  - byte mutations of a valid file (inserted, replaced and deleted bytes, invalid UTF-8, NUL, BOM, deep
    brackets, truncation, a field longer than Python's csv limit) give a Log or an FmrlError of one line
    starting with the file's path, never another exception; an accepted Log keeps the id rule (strings,
    non-empty, no NUL, no unpaired surrogate, at most 1,024 UTF-8 bytes: fmrl_sdk/ids.py) and finite
    timestamps; for CSV/JSONL the reference reader (the same rules, row by row) accepts exactly the same
    files, with the same rows;
  - single odd values (NUL, surrogates, over-long ids, inf/nan/bool/empty timestamps, raw Latin-1 bytes)
    are refused in one line or kept within the rules.
  (tests/test_columnar.py's comparison helpers live in that module, which tests may not import: the
  comparison against the reference reader's rows is written here.)
* catalogues (fmrl_sdk/data/catalogue.py read_catalogue), CSV/TSV/JSONL: generated catalogues round-trip
  (ids and fields as written); mutated bytes give a Catalogue or a one-line FmrlError; ids that are not
  strings or integers (floats, bools, null, lists, objects) or break the id rule are refused.
* TOML: recipes (train/recipe.py load_recipe) and device profiles (deploy/profiles.py load_profile_file):
  mutations of the shipped files give a loaded object or a one-line FmrlError; a number (or any value)
  replaced by a random TOML value (inf, nan, negative, huge, strings, arrays, tables, dates) gives an
  FmrlError naming the key, or an object whose numbers are finite and in range (integers within 64 bits);
  a recipe's paths and strings given NUL, empty, long or mistyped values, the same.
* JSON (fmrl_sdk/jsonio.py read_json_bytes, read_jsonl_objects): arbitrary bytes give a value or a one-line
  FmrlError; generated JSON without duplicate keys decodes as json.loads does.
* simulate stream lines (simulate/events.py parse_line): arbitrary bytes give None, a tuple (ids that keep
  the id rule, a finite ts) or BadLine with a kind in BAD_KINDS; never another exception; generated events
  parse as written.
* item-vector files (runtime/vectors.py read_item_vectors), .json: generated and mutated files, and files whose
  'ids' / 'vectors' are other JSON, give (ids, vectors [len(ids), S]) with ids that are strings or integers
  and keep the id rule, or a one-line FmrlError.

Every property runs derandomized (the same cases on every machine) with a fixed number of examples; the
`slow` variant of each runs five times as many. Each test counts the cases it ran; the module prints
"fuzz readers: N cases (...)" at its end and writes the counts (and how the cases ended) to
fuzz_readers_counts.json in pytest's base temporary folder.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from fmrl_sdk.data import columnar  # noqa: E402
from fmrl_sdk.data.catalogue import Catalogue, read_catalogue  # noqa: E402
from fmrl_sdk.deploy import profiles  # noqa: E402
from fmrl_sdk.errors import FmrlError  # noqa: E402
from fmrl_sdk.fileio import package_data_dir  # noqa: E402
from fmrl_sdk.jsonio import read_json_bytes, read_jsonl_objects  # noqa: E402
from fmrl_sdk.runtime.vectors import read_item_vectors  # noqa: E402
from fmrl_sdk.simulate.events import BAD_KINDS, BadLine, parse_line  # noqa: E402
from fmrl_sdk.train import recipe as recipe_module  # noqa: E402
from tests import reference_reader  # noqa: E402

try:
    import tomllib
except ModuleNotFoundError:   # Python 3.10: the package's own fallback (pyproject.toml)
    import tomli as tomllib

SLOW_FACTOR = 5
MAX_ID_BYTES = 1024     # fmrl_sdk/ids.py: the id rule every reader applies
INT64 = (-2**63, 2**63 - 1)
RECIPE_FILES = sorted(package_data_dir("recipes").glob("*.toml"))
PROFILE_FILES = sorted(package_data_dir("devices").glob("*.toml"))

COUNTS: Counter = Counter()
OUTCOMES: dict = {}     # test -> how its cases ended (read, refused, compared with the reference, ...)


def fuzz(examples: int):
    return settings(max_examples=examples, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much, HealthCheck.large_base_example])


def examples(fast: int):
    """Parametrize `n` with the fast count and, behind the slow marker, SLOW_FACTOR times as many."""
    return pytest.mark.parametrize("n", [pytest.param(fast, id="fast"),
                                         pytest.param(fast * SLOW_FACTOR, id="slow", marks=pytest.mark.slow)])


@pytest.fixture(scope="module", autouse=True)
def case_counts(request, tmp_path_factory):
    yield COUNTS
    total = sum(COUNTS.values())
    line = f"fuzz readers: {total} cases ({', '.join(f'{k} {v}' for k, v in sorted(COUNTS.items()))})"
    out = tmp_path_factory.getbasetemp() / "fuzz_readers_counts.json"
    out.write_text(json.dumps({"total": total, "tests": dict(sorted(COUNTS.items())),
                               "outcomes": dict(sorted(OUTCOMES.items()))}, indent=1))
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():   # shown whether the module passed or not
            reporter.write_line("\n" + line)
    else:
        print("\n" + line)


class Tally:
    """Counts a test's cases into COUNTS (under the test's node name) as they run, failing ones included."""

    def __init__(self, request):
        self.name, self.ran = request.node.name, 0

    def __call__(self) -> None:
        self.ran += 1
        COUNTS[self.name] += 1

    def done(self, n: int) -> None:
        assert self.ran >= n // 2, f"only {self.ran} of {n} cases ran"


def one_line_error(err: FmrlError, path) -> str:
    """The rule for every refusal: one line, starting with the file's path."""
    message = str(err)
    assert "\n" not in message and "\r" not in message, f"error is not one line: {message!r}"
    assert message.startswith(str(path)), f"error does not start with the path {str(path)!r}: {message!r}"
    return message


def id_ok(value) -> bool:
    """The id rule (fmrl_sdk/ids.py), independently: a non-empty string without NUL, Unicode text (no unpaired
    surrogate, as tests/reference_reader.py requires), at most 1,024 bytes as UTF-8."""
    if type(value) is not str or value == "" or "\0" in value:
        return False
    try:
        return len(value.encode("utf-8")) <= MAX_ID_BYTES
    except UnicodeEncodeError:
        return False


def json_equal(a, b) -> bool:
    """a == b for decoded JSON, NaN equal to NaN, int/float and key order as json.loads gives them."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b))
    return a == b


# ----------------------------------------------------------------------------------------------
# Byte mutations

LONG_FIELD = b"x" * 140_000            # over Python csv's field limit (131,072 characters)
INTERESTING = [
    b"\x00", b"\xef\xbb\xbf", b"\xff", b"\xfe\xff", b"\xc3", b"\xc3\x28", b"\xed\xa0\x80", b"\x80", b"\xf4\x90\x80\x80",
    b'"', b'""', b",", b",,", b"\t", b"\n", b"\r", b"\r\n", b"\n\n", b" ", b"{", b"}", b"[", b"]", b":", b"\\",
    b"\\u0000", b"\\ud800", b"\\udfff", b'"\\u0000"', b"nan", b"NaN", b"-nan", b"inf", b"-inf", b"Infinity", b"-", b"+",
    b"1e999", b"-1e999", b"1e308", b"0", b"-1", b"1.5", b"9" * 30, b"9" * 5000, b"null", b"true", b"false", b"=", b"#",
    b"'", b'"""', b"'''", b".", b"_", b"[" * 3000, b"{" * 3000, b'{"a":' * 2000, b"[[", b"]]", b"\x1a", b"\x7f",
    b"\xe2\x80\xa8", b"\xc2\x85", b"user", b"item", b"timestamp", b"ts", b"id", b"image", b"ids", b"vectors",
]
PAYLOADS = st.one_of(st.sampled_from(INTERESTING), st.sampled_from(INTERESTING), st.binary(min_size=1, max_size=12),
                     st.just(LONG_FIELD))
OPS = ("insert", "insert", "replace", "replace", "delete", "truncate", "flip", "byte", "dup_line", "drop_line")


class Blob(bytes):
    """Bytes whose repr folds long runs of one byte (b'x' * 140000), so that a failing case prints short."""

    def __repr__(self) -> str:
        parts, start = [], 0
        for match in re.finditer(rb"(.)\1{31,}", self, re.DOTALL):
            if match.start() > start:
                parts.append(repr(bytes(self[start:match.start()])))
            parts.append(f"{bytes(match.group(1))!r} * {len(match.group(0))}")
            start = match.end()
        if start < len(self) or not parts:
            parts.append(repr(bytes(self[start:])))
        return " + ".join(parts)


@st.composite
def mutated(draw, base: bytes, max_ops: int = 4) -> Blob:
    data = bytearray(base)
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.sampled_from(OPS))
        pos = draw(st.integers(0, len(data)))
        if op == "insert":
            data[pos:pos] = draw(PAYLOADS)
        elif op == "replace":
            payload = draw(PAYLOADS)
            data[pos:pos + len(payload)] = payload
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 16))]
        elif op == "truncate":
            del data[pos:]
        elif op == "flip" and pos < len(data):
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte":
            data[pos:pos + 1] = bytes([draw(st.integers(0, 255))])
        elif op in ("dup_line", "drop_line"):
            start = data.rfind(b"\n", 0, pos) + 1
            end = data.find(b"\n", pos)
            end = len(data) if end < 0 else end + 1
            if op == "dup_line":
                data[end:end] = data[start:end]
            else:
                del data[start:end]
    return Blob(data)


# ----------------------------------------------------------------------------------------------
# Interaction logs: generation and writers

NO_NUL_TEXT = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
STR_IDS = st.one_of(
    st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyzABCXYZ0123456789-_."), min_size=1, max_size=8),
    st.text(NO_NUL_TEXT, min_size=1, max_size=6),
    st.from_regex(r"\A[0-9]{1,12}\Z"),
    st.sampled_from(["nan", "NaN", "null", "NULL", "N/A", "#N/A", "None", "true", "1e5", "-0", "0", "007", " ",
                     " lead", "trail ", "a,b", 'say "hi"', "line\nbreak", "cr\rlf", "tab\there", "\ufeffbom", "日本",
                     "\U0001F600", "é", "e\u0301", "\u2028", "\x85"]),
)
INT_IDS = st.one_of(st.integers(-1000, 1000), st.integers(*INT64), st.integers(-2**70, 2**70))
IDS = st.one_of(STR_IDS, STR_IDS, INT_IDS)
INT_TIMES = st.one_of(st.integers(-10, 10), st.integers(0, 2_000_000_000), st.integers(*INT64))
FLOAT_TIMES = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([0.5, -0.0, 1.25, 1e-300]))


@st.composite
def logs(draw, max_rows: int = 30, int_ids: bool = True) -> dict:
    """{"rows": [(user, item, ts or None)], "time": None | "timestamp" | "ts", "kind": "int" | "float" | None}."""
    ids = IDS if int_ids else STR_IDS
    users = draw(st.lists(ids, min_size=1, max_size=6, unique_by=str))
    items = draw(st.lists(ids, min_size=1, max_size=8, unique_by=str))
    time = draw(st.sampled_from([None, "timestamp", "timestamp", "ts"]))
    kind = None
    if time is not None:
        kind = draw(st.sampled_from(["int", "float"]))
        pool = draw(st.lists(INT_TIMES if kind == "int" else FLOAT_TIMES, min_size=1, max_size=5))   # ties
    n = draw(st.integers(1, max_rows))
    rows = [(draw(st.sampled_from(users)), draw(st.sampled_from(items)),
             draw(st.sampled_from(pool)) if time else None) for _ in range(n)]
    return {"rows": rows, "time": time, "kind": kind}


def csv_field(value: str, quote_all: bool, delimiter: str = ",") -> str:
    """One CSV field as RFC 4180 writes it (Python's csv writer leaves a lone \\r unquoted)."""
    if quote_all or any(c in value for c in (delimiter, '"', "\r", "\n")):
        return '"' + value.replace('"', '""') + '"'
    return value


def csv_bytes(log: dict, style: dict) -> bytes:
    columns = ["user", "item"] + ([log["time"]] if log["time"] else []) + (["note"] if style["note"] else [])
    if style["empty_time"] and not log["time"]:
        columns.append("timestamp")          # a timestamp column whose every value is empty: no timestamps
    order = style["order"](columns) if style["order"] else columns
    nl = style["newline"]
    lines = [",".join(csv_field(c, style["quote_all"]) for c in order)]
    for j, (user, item, ts) in enumerate(log["rows"]):
        values = {"user": str(user), "item": str(item), "note": style["notes"][j % len(style["notes"])],
                  "timestamp": "", "ts": ""}
        if log["time"]:
            values[log["time"]] = repr(ts) if isinstance(ts, float) else str(ts)
        lines.append(",".join(csv_field(values[c], style["quote_all"]) for c in order))
    text = nl.join(lines) + nl + (nl if style["blank_end"] else "")
    return (b"\xef\xbb\xbf" if style["bom"] else b"") + text.encode("utf-8")


def jsonl_bytes(log: dict, style: dict) -> bytes:
    out = []
    for j, (user, item, ts) in enumerate(log["rows"]):
        rec = {"user": user, "item": item}
        if log["time"]:
            rec[log["time"]] = ts
        elif style["null_time"]:
            rec["timestamp"] = None
        if style["note"]:
            rec["note"] = style["notes"][j % len(style["notes"])]
        keys = style["order"](list(rec)) if style["order"] else list(rec)
        line = json.dumps({k: rec[k] for k in keys}, ensure_ascii=style["ascii"],
                          separators=(",", ":") if style["compact"] else (", ", ": "))
        out.append(line + ("\n\n  " if style["blank"] and j % 3 == 0 else ""))
    return (b"\xef\xbb\xbf" if style["bom"] else b"") + (style["newline"].join(out) + style["newline"]).encode()


def parquet_bytes(log: dict, style: dict | None = None) -> bytes:
    style = style or {}
    columns = {}
    for j, name in enumerate(("user", "item")):
        values = [r[j] for r in log["rows"]]
        if all(type(v) is int and INT64[0] <= v <= INT64[1] for v in values):
            columns[name] = pa.array(values, pa.int64())
        else:
            columns[name] = pa.array([str(v) for v in values],
                                     pa.large_string() if style.get("large") else pa.string())
            if style.get("dictionary"):
                columns[name] = columns[name].dictionary_encode()
    if log["time"]:
        columns[log["time"]] = pa.array([r[2] for r in log["rows"]],
                                        pa.int64() if log["kind"] == "int" else pa.float64())
    sink = io.BytesIO()
    pq.write_table(pa.table(columns), sink, row_group_size=style.get("row_group", 1 << 20))
    return sink.getvalue()


def shuffled(draw):
    perm = draw(st.permutations(range(6)))
    return lambda cols: [c for _, c in sorted(zip(perm, cols))]


NOTES = st.lists(st.one_of(st.text(NO_NUL_TEXT, max_size=6), st.sampled_from(['a, "b"', "x\ny", "\r\n", ""])),
                 min_size=1, max_size=3)
JSON_NOTES = st.lists(st.recursive(st.none() | st.booleans() | st.integers() | st.text(NO_NUL_TEXT, max_size=4),
                                   lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c,
                                                                                       max_size=3),
                                   max_leaves=6), min_size=1, max_size=3)


@st.composite
def csv_styles(draw) -> dict:
    return {"quote_all": draw(st.booleans()), "newline": draw(st.sampled_from(["\n", "\r\n"])),
            "bom": draw(st.booleans()), "blank_end": draw(st.booleans()), "note": draw(st.booleans()),
            "notes": draw(NOTES), "empty_time": draw(st.booleans()),
            "order": shuffled(draw) if draw(st.booleans()) else None}


@st.composite
def jsonl_styles(draw) -> dict:
    return {"ascii": draw(st.booleans()), "compact": draw(st.booleans()),
            "newline": draw(st.sampled_from(["\n", "\r\n"])),
            "bom": draw(st.booleans()), "blank": draw(st.booleans()), "note": draw(st.booleans()),
            "notes": draw(JSON_NOTES), "null_time": draw(st.booleans()),
            "order": shuffled(draw) if draw(st.booleans()) else None}


PARQUET_STYLES = st.fixed_dictionaries({"large": st.booleans(), "dictionary": st.booleans(),
                                        "row_group": st.sampled_from([1, 3, 1 << 20])})


def jsonl_fast_path_expected(log: dict) -> bool:
    """pyarrow's JSON reader takes a file whose id columns hold one type each (strings, or int64 integers)."""
    for j in (0, 1):
        kinds = {"str" if type(r[j]) is str else ("int" if INT64[0] <= r[j] <= INT64[1] else "big")
                 for r in log["rows"]}
        if len(kinds) > 1 or kinds == {"big"}:
            return False
    return True


# ----------------------------------------------------------------------------------------------
# Interaction logs: comparisons


def read_counting_fallbacks(path: Path) -> tuple[columnar.Log, bool]:
    """columnar.read_log(path), and whether it fell back to the row-by-row reader."""
    seen = []
    original = columnar._from_rows
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(columnar, "_from_rows", lambda p, rows: seen.append(p) or original(p, rows))
        log = columnar.read_log(path)
    return log, bool(seen)


def assert_log_matches_rows(log: columnar.Log, rows: list) -> None:
    """The columnar Log holds exactly the reference reader's rows (tests/reference_reader.py): ids per row,
    sorted id lists, timestamps (or none), raw counts, and each user's sequence in time order."""
    assert [log.user_ids[c] for c in log.user_codes] == [r[0] for r in rows]
    assert [log.item_ids[c] for c in log.item_codes] == [r[1] for r in rows]
    assert log.user_ids == sorted({r[0] for r in rows}) and log.item_ids == sorted({r[1] for r in rows})
    assert log.user_codes.dtype == np.int32 and log.item_codes.dtype == np.int32
    timed = any(r[4] for r in rows)
    assert log.has_time == timed
    if timed:
        assert all(r[4] for r in rows)
        assert np.array_equal(log.timestamps, np.array([r[2] for r in rows], dtype=np.float64))
    assert log.raw == {"users": len(log.user_ids), "items": len(log.item_ids), "interactions": len(rows)}
    index = {item: i + 1 for i, item in enumerate(log.item_ids)}
    ref_users, ref_seqs, ref_times = reference_reader._sequences(rows, index)
    seq = columnar.sequences(log)
    assert seq.user_ids == sorted(ref_users) == ref_users and seq.item_ids == log.item_ids
    assert all(np.array_equal(a, b) for a, b in zip(ref_seqs, seq.per_user()))
    if timed:
        assert np.array_equal(np.concatenate(ref_times), seq.timestamps)


def assert_log_as_written(log: columnar.Log, written: dict) -> None:
    assert [log.user_ids[c] for c in log.user_codes] == [str(r[0]) for r in written["rows"]]
    assert [log.item_ids[c] for c in log.item_codes] == [str(r[1]) for r in written["rows"]]
    if written["time"]:
        assert np.array_equal(log.timestamps, np.array([float(r[2]) for r in written["rows"]]))
    else:
        assert log.timestamps is None


def assert_logs_equal(a: columnar.Log, b: columnar.Log) -> None:
    assert a.user_ids == b.user_ids and a.item_ids == b.item_ids
    assert np.array_equal(a.user_codes, b.user_codes) and np.array_equal(a.item_codes, b.item_codes)
    assert (a.timestamps is None) == (b.timestamps is None)
    if a.timestamps is not None:
        assert np.array_equal(a.timestamps, b.timestamps)


def assert_log_keeps_rules(log: columnar.Log) -> None:
    """What any accepted Log must hold, whatever the bytes were: ids that keep the id rule, codes in range,
    finite timestamps."""
    bad = [i for i in log.user_ids + log.item_ids if not id_ok(i)]
    assert not bad, f"accepted ids that break the id rule: {[i[:40] for i in bad[:3]]!r}"
    assert log.rows > 0 and len(log.item_codes) == log.rows
    assert log.user_codes.min() >= 0 and log.user_codes.max() < len(log.user_ids)
    assert log.item_codes.min() >= 0 and log.item_codes.max() < len(log.item_ids)
    assert log.user_ids == sorted(set(log.user_ids)) and log.item_ids == sorted(set(log.item_ids))
    if log.timestamps is not None:
        assert len(log.timestamps) == log.rows
        assert np.isfinite(log.timestamps).all(), f"accepted timestamps that are not finite: " \
                                                  f"{log.timestamps[~np.isfinite(log.timestamps)][:3]}"


# ----------------------------------------------------------------------------------------------
# Interaction logs: properties


@examples(120)
@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_log_fast_path_matches_reference_reader(tmp_path, request, fmt, n):
    """(a) A well-formed log reads as the reference reader reads it, through pyarrow's vectorised path."""
    path = tmp_path / f"log.{fmt}"
    tally = Tally(request)

    @fuzz(n)
    @given(log=logs(), style=csv_styles() if fmt == "csv" else jsonl_styles())
    def check(log, style):
        tally()
        path.write_bytes(csv_bytes(log, style) if fmt == "csv" else jsonl_bytes(log, style))
        rows = reference_reader.read_interaction_rows(path)
        got, fell_back = read_counting_fallbacks(path)
        assert_log_matches_rows(got, rows)
        assert_log_as_written(got, log)
        if fmt == "csv" or jsonl_fast_path_expected(log):
            assert not fell_back, "a well-formed file was read row by row, not by pyarrow"

    check()
    tally.done(n)


@examples(60)
def test_log_reads_the_same_as_csv_jsonl_and_parquet(tmp_path, request, n):
    """(b) One log written as CSV, JSONL and Parquet: the three Logs are equal, and hold what was written."""
    paths = {fmt: tmp_path / f"log.{fmt}" for fmt in ("csv", "jsonl", "parquet")}
    tally = Tally(request)

    @fuzz(n)
    @given(log=logs(), csv_style=csv_styles(), jsonl_style=jsonl_styles(), parquet_style=PARQUET_STYLES)
    def check(log, csv_style, jsonl_style, parquet_style):
        tally()
        paths["csv"].write_bytes(csv_bytes(log, csv_style))
        paths["jsonl"].write_bytes(jsonl_bytes(log, jsonl_style))
        paths["parquet"].write_bytes(parquet_bytes(log, parquet_style))
        read = {fmt: columnar.read_log(p) for fmt, p in paths.items()}
        assert_log_as_written(read["csv"], log)
        assert_logs_equal(read["csv"], read["jsonl"])
        assert_logs_equal(read["csv"], read["parquet"])

    check()
    tally.done(n)


def log_base(fmt: str):
    """Valid files to mutate (small: mutations matter more than size)."""
    if fmt == "csv":
        return st.builds(csv_bytes, logs(max_rows=6), csv_styles())
    if fmt == "jsonl":
        return st.builds(jsonl_bytes, logs(max_rows=6), jsonl_styles())
    return st.builds(parquet_bytes, logs(max_rows=6), PARQUET_STYLES)


@examples(200)
@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_mutated_log_is_read_or_refused_in_one_line(tmp_path, request, fmt, n):
    """(c) Mutated bytes of a valid log: a Log that keeps the rules, or a one-line FmrlError naming the file;
    for CSV/JSONL the reference reader (the same rules, row by row) accepts the same files, with the same rows."""
    path = tmp_path / f"mutated.{fmt}"
    tally = Tally(request)
    outcomes = OUTCOMES.setdefault(request.node.name, Counter())

    @fuzz(n)
    @given(data=log_base(fmt).flatmap(mutated))
    def check(data):
        tally()
        path.write_bytes(data)
        log = refusal = None
        try:
            log = columnar.read_log(path)
        except FmrlError as e:
            refusal = one_line_error(e, path)
            outcomes["refused"] += 1
        else:
            outcomes["read"] += 1
            assert_log_keeps_rules(log)
        if fmt == "parquet":
            return
        try:   # the yardstick applies the same rules row by row: it accepts exactly what the SDK accepts
            rows = reference_reader.read_interaction_rows(path)
        except FmrlError as e:
            assert log is None, f"the reference reader refuses what read_log accepts: {e}"
            return
        assert log is not None, f"read_log refuses what the reference reader accepts: {refusal}"
        outcomes["compared"] += 1
        assert_log_matches_rows(log, rows)

    check()
    tally.done(n)
    assert outcomes["read"] and outcomes["refused"], outcomes


# an odd timestamp as a CSV field -> the same as a JSON value
JSON_TIMES = {"inf": '"inf"', "-inf": "-Infinity", "Infinity": "Infinity", "nan": "NaN", "1e999": "1e999",
              "true": "true", "null": "null", "": '""', "1_0": '"1_0"', "0x10": '"0x10"', " 5 ": '" 5 "',
              "-1e400": "-1e400"}


@examples(40)
def test_log_edge_values_are_refused_or_kept_as_rules_say(tmp_path, request, n):
    """Single odd values in an otherwise valid CSV/JSONL log (NUL or an unpaired surrogate in an id, an id over
    1,024 bytes, invalid UTF-8, a non-finite, non-numeric or missing timestamp): a one-line FmrlError (a Log,
    keeping the rules, only for the timestamps Python's float() reads)."""
    tally = Tally(request)
    bad_ids = st.sampled_from(["a\x00b", "\x00", "x" * 2000, "é" * 600, "\ud800", "a\udc00b"])
    bad_times = st.sampled_from(sorted(JSON_TIMES))

    @fuzz(n)
    @given(fmt=st.sampled_from(["csv", "jsonl"]), where=st.integers(0, 4), what=st.sampled_from(["user", "item", "ts"]),
           bad_id=bad_ids, bad_time=bad_times, raw_utf8=st.sampled_from([None, b"\xe9", b"\xff\xfe", b"\xed\xa0\x80"]))
    def check(fmt, where, what, bad_id, bad_time, raw_utf8):
        tally()
        rows = [[f"u{j % 2}", f"i{j}", str(j)] for j in range(5)]
        col = {"user": 0, "item": 1, "ts": 2}[what]
        rows[where][col] = bad_time if what == "ts" else bad_id
        path = tmp_path / f"edge.{fmt}"
        if fmt == "csv":
            data = ("user,item,timestamp\n" + "".join(",".join(csv_field(v, False) for v in r) + "\n" for r in rows)
                    ).encode("utf-8", "surrogatepass")
        else:
            data = "".join('{"user": %s, "item": %s, "timestamp": %s}\n' % (
                json.dumps(r[0]), json.dumps(r[1]), JSON_TIMES.get(r[2], r[2])) for r in rows).encode()
        if raw_utf8 is not None and what != "ts":
            written = bad_id.encode("utf-8", "surrogatepass") if fmt == "csv" else json.dumps(bad_id).encode()[1:-1]
            data = data.replace(written, raw_utf8, 1)
        path.write_bytes(data)
        try:
            log = columnar.read_log(path)
        except FmrlError as e:
            one_line_error(e, path)
            return
        assert_log_keeps_rules(log)
        # only timestamps Python's float() reads ("1_0", " 5 ") may pass; every other odd value is refused
        shown = bad_time if what == "ts" else bad_id
        assert what == "ts" and bad_time in ("1_0", " 5 "), f"accepted: {what} = {shown!r}"

    check()
    tally.done(n)


# ----------------------------------------------------------------------------------------------
# Catalogues

FIELD_NAMES = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz_ -.0123456789"), min_size=1, max_size=8).filter(
    lambda s: s == s.strip() and s not in ("item", "item_id", "id", "image"))
CAT_STR_IDS = st.one_of(st.text(st.sampled_from("abcdefXYZ0123456789-_. "), min_size=1, max_size=8),
                        st.text(NO_NUL_TEXT, min_size=1, max_size=6),
                        st.sampled_from(["B00001", "a,b", 'q"q', "x\ny", "日本", "nan", "null", "0"])).filter(
    lambda s: s.strip() == s and s != "")
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) |
                           st.text(NO_NUL_TEXT, max_size=8),
                           lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(NO_NUL_TEXT, max_size=4), c,
                                                                               max_size=3),
                           max_leaves=8)


@st.composite
def catalogues(draw, fmt: str) -> dict:
    key = draw(st.sampled_from(["item", "item_id", "id"]))
    fields = draw(st.lists(FIELD_NAMES, max_size=4, unique=True))
    image = draw(st.booleans())
    ids = draw(st.lists(CAT_STR_IDS | (st.integers(-10**6, 10**9) if fmt == "jsonl" else st.nothing()),
                        min_size=1, max_size=8, unique_by=lambda v: str(v)))
    rows = []
    for item in ids:
        if fmt == "jsonl":
            values = {f: draw(JSON_VALUES) for f in fields if draw(st.booleans())}   # JSONL rows may omit fields
        else:
            values = {f: draw(st.text(NO_NUL_TEXT, max_size=8) | st.sampled_from(['a, "b"', "x\ny", "\r\n", ""]))
                      for f in fields}
        img = draw(st.sampled_from(["", "img/a.jpg", " pic.png ", "http://x/y.jpg"])) if image else None
        rows.append((item, values, img))
    return {"key": key, "fields": fields, "image": image, "rows": rows,
            "order": draw(st.permutations(range(len(fields) + 2)))}


def catalogue_bytes(cat: dict, fmt: str, bom: bool = False) -> bytes:
    columns = [cat["key"], *cat["fields"]] + (["image"] if cat["image"] else [])
    order = [c for _, c in sorted(zip(cat["order"], columns))] + columns[len(cat["order"]):]
    if fmt == "jsonl":
        lines = []
        for item, values, img in cat["rows"]:
            rec = {cat["key"]: item, **values, **({"image": img} if cat["image"] else {})}
            lines.append(json.dumps({k: rec[k] for k in order if k in rec}))
        text = "\n".join(lines) + "\n"
    else:
        delim = "\t" if fmt == "tsv" else ","
        out = [delim.join(csv_field(c, False, delim) for c in order)]
        for item, values, img in cat["rows"]:
            rec = {cat["key"]: str(item), **values, **({"image": img} if cat["image"] else {})}
            out.append(delim.join(csv_field(rec[c], False, delim) for c in order))
        text = "\n".join(out) + "\n"
    return (b"\xef\xbb\xbf" if bom else b"") + text.encode()


def assert_catalogue_keeps_rules(cat: Catalogue) -> None:
    bad = [i for i in cat.rows if not id_ok(i)]
    assert not bad, f"catalogue accepted ids that break the id rule: {[i[:40] for i in bad[:3]]!r}"
    assert cat.key in ("item", "item_id", "id") and cat.rows
    assert set(cat.images) <= set(cat.rows)


@examples(80)
@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_catalogue_round_trips(tmp_path, request, fmt, n):
    """A generated catalogue (any key column, quoted fields with delimiters and newlines, JSON values, images,
    a BOM) reads back with its ids, fields and image paths as written."""
    path = tmp_path / f"items.{fmt}"
    tally = Tally(request)

    @fuzz(n)
    @given(cat=catalogues(fmt), bom=st.booleans())
    def check(cat, bom):
        tally()
        path.write_bytes(catalogue_bytes(cat, fmt, bom))
        got = read_catalogue(path)
        assert got.key == cat["key"]
        assert list(got.rows) == [str(item) for item, _, _ in cat["rows"]]
        for item, values, img in cat["rows"]:
            assert got.rows[str(item)] == values
            if img not in (None, ""):
                assert got.images[str(item)] == img.strip()
            else:
                assert str(item) not in got.images
        assert set(got.fields) == set(cat["fields"]) if fmt != "jsonl" else set(got.fields) <= set(cat["fields"])
        assert_catalogue_keeps_rules(got)

    check()
    tally.done(n)


@examples(200)
@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_mutated_catalogue_is_read_or_refused_in_one_line(tmp_path, request, fmt, n):
    """Mutated bytes of a valid catalogue: a Catalogue whose ids keep the id rule, or a one-line FmrlError."""
    path = tmp_path / f"items.{fmt}"
    tally = Tally(request)
    outcomes = OUTCOMES.setdefault(request.node.name, Counter())

    @fuzz(n)
    @given(data=st.builds(lambda c, bom: catalogue_bytes(c, fmt, bom), catalogues(fmt), st.booleans()).flatmap(mutated))
    def check(data):
        tally()
        path.write_bytes(data)
        try:
            got = read_catalogue(path)
        except FmrlError as e:
            one_line_error(e, path)
            outcomes["refused"] += 1
            return
        outcomes["read"] += 1
        assert isinstance(got, Catalogue)
        assert_catalogue_keeps_rules(got)

    check()
    tally.done(n)
    assert outcomes["read"] and outcomes["refused"], outcomes


@examples(40)
def test_catalogue_ids_are_strings_or_integers(tmp_path, request, n):
    """A JSONL catalogue row whose id is a float, bool, null, list, object, or a string that breaks the id
    rule (NUL, unpaired surrogate, over 1,024 bytes) is refused with one line naming the file."""
    path = tmp_path / "items.jsonl"
    tally = Tally(request)
    bad = st.one_of(st.floats(), st.booleans(), st.none(), st.just([]), st.just(["a"]), st.just({"a": 1}),
                    st.sampled_from(["a\x00b", "x" * 1100, "\ud800", "a\udfff"]))

    @fuzz(n)
    @given(value=bad, where=st.integers(0, 3))
    def check(value, where):
        tally()
        rows = [{"item": f"i{j}", "title": "t"} for j in range(4)]
        rows[where]["item"] = value
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        with pytest.raises(FmrlError) as info:
            read_catalogue(path)
        one_line_error(info.value, path)

    check()
    tally.done(n)


# ----------------------------------------------------------------------------------------------
# TOML: recipes and device profiles

TOML_LITERALS = [
    "inf", "-inf", "+inf", "nan", "-nan", "+nan", "0", "-0", "-1", "1", "2", "3", "0.0", "-0.0", "-0.5", "0.5", "0.99",
    "1.0", "1e308", "1e309", "-1e309", "5e-324", "9223372036854775807", "-9223372036854775808", "9223372036854775808",
    "99999999999999999999999999", '"8"', '"abc"', '""', '"\\u0000"', "'nan'", "true", "false", "[]", "[1, 2]",
    '["8", "16"]', "[8, 16, 32]", "[8, 8]", "[16, 8]", "[0, 8]", "[inf]", "[nan, 1]", "[1.5, 2]",
    "[1, 2, 3, 4, 5, 6, 7, 8]",
    "[1e309]", "[-1, 2]", "[9223372036854775808]", "{}", "{ a = 1 }", "1979-05-27", "07:32:00",
    "1979-05-27T07:32:00Z", "0x10", "0o7", "0b1", "1_000", "[[1]]", '"xnnpack"', '["fp32"]', '["int8", "int8"]',
    '"a\\u0000b"', '"   "', '"../elsewhere"', '"~"', "'C:\\x'", '"time"', '"2003-01-01"', '"0.8"', '"hybrid"',
    "[" * 2000 + "1" + "]" * 2000, "{ a = " * 500 + "1" + " }" * 500,
]


def toml_float(x: float) -> str:
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    text = repr(x)
    return text if any(c in text for c in ".en") else text + ".0"


TOML_VALUES = st.one_of(st.sampled_from(TOML_LITERALS), st.sampled_from(TOML_LITERALS),
                        st.integers(-2**70, 2**70).map(str), st.integers(-5, 300).map(str),
                        st.floats().map(toml_float), st.floats(-2, 2).map(toml_float))


SECTIONS = (("data", recipe_module.DataSection), ("model", recipe_module.ModelSection),
            ("train", recipe_module.TrainSection))
NUMERIC_RECIPE_KEYS = [(section, f.name) for section, cls in SECTIONS for f in dataclasses.fields(cls)
                       if isinstance(getattr(cls(), f.name), (int, float, list))
                       and not isinstance(getattr(cls(), f.name), bool)]
# numbers first and twice as often: they are what the issue names; strings and booleans too (paths, names)
RECIPE_KEYS = NUMERIC_RECIPE_KEYS * 2 + [(section, f.name) for section, cls in SECTIONS
                                         for f in dataclasses.fields(cls)]
PROFILE_KEYS = ["memory_budget_bytes", "latency_budget_ms", "speed_factor", "threads"] * 2 + \
    ["precisions", "name", "description", "backend"]


def set_toml_key(text: str, section: str | None, key: str, literal: str) -> str:
    """`text` with `key = literal` in [section] (None: the top level): an existing line for the key removed
    and the new one put first in the table (the table added when the file lacks it)."""
    lines = text.split("\n")
    current, out = None, []
    for line in lines:
        header = re.match(r"\s*\[([^\]]+)\]", line)
        if header:
            current = header.group(1).strip()
        elif current == section and re.match(rf"\s*{re.escape(key)}\s*=", line):
            continue
        out.append(line)
    new = f"{key} = {literal}"
    if section is None:
        return new + "\n" + "\n".join(out)
    for j, line in enumerate(out):
        if re.match(rf"\s*\[{re.escape(section)}\]", line):
            out.insert(j + 1, new)
            return "\n".join(out)
    return "\n".join(out) + f"\n[{section}]\n{new}\n"


def recipe_problems(r) -> list[str]:
    """What a loaded recipe may not hold, checked independently of Recipe.validate."""
    d, m, t = r.data, r.model, r.train
    problems = []
    for section in (d, m, t):
        for f in dataclasses.fields(section):
            v = getattr(section, f.name)
            for x in (v if isinstance(v, list) else [v]):
                if isinstance(x, float) and not math.isfinite(x):
                    problems.append(f"{f.name} = {x} is not finite")
                if isinstance(x, int) and not isinstance(x, bool) and not INT64[0] <= x <= INT64[1]:
                    problems.append(f"{f.name} = {x} does not fit 64 bits")
    need = [(d.max_len >= 1, "max_len"), (d.min_count >= 1, "min_count"), (0 <= d.stride <= d.max_len, "stride"),
            (bool(m.sizes) and m.sizes[0] >= 1 and all(b > a for a, b in zip(m.sizes, m.sizes[1:])), "sizes"),
            (m.num_blocks >= 1, "num_blocks"), (0 <= m.dropout < 1, "dropout"), (0 <= m.lru_dropout < 1, "lru_dropout"),
            (0 <= m.r_min < m.r_max <= 1, "r_min/r_max"), (m.id_dims >= 0, "id_dims"),
            (t.epochs >= 1, "epochs"), (t.batch_size >= 1, "batch_size"), (t.eval_batch_size >= 1, "eval_batch_size"),
            (t.lr > 0, "lr"), (t.weight_decay >= 0, "weight_decay"), (t.grad_clip > 0, "grad_clip"),
            (t.warmup_steps >= 0, "warmup_steps"), (t.patience >= 1, "patience"), (t.threads >= 0, "threads"),
            (t.length_buckets >= 0, "length_buckets"), (t.item_chunk >= 1, "item_chunk"),
            (t.num_negatives >= 1, "num_negatives"), (t.val_users >= 0, "val_users"),
            (0 <= t.label_smoothing < 1, "label_smoothing"), (all(w >= 0 for w in t.size_weights), "size_weights")]
    problems += [f"{what} out of range" for ok, what in need if not ok]
    return problems


def profile_problems(p) -> list[str]:
    problems = []
    if not (isinstance(p.memory_budget_bytes, int) and 1 <= p.memory_budget_bytes <= INT64[1]):
        problems.append(f"memory_budget_bytes = {p.memory_budget_bytes}")
    for key in ("latency_budget_ms", "speed_factor"):
        v = getattr(p, key)
        if not (isinstance(v, float) and math.isfinite(v) and v > 0):
            problems.append(f"{key} = {v}")
    if not (isinstance(p.threads, int) and 1 <= p.threads <= 2**31 - 1):   # the C runtime's threads is an int
        problems.append(f"threads = {p.threads}")
    if not p.precisions or any(x not in profiles.PRECISIONS for x in p.precisions):
        problems.append(f"precisions = {p.precisions}")
    return problems


def load_toml(kind: str, path: Path):
    return recipe_module.load_recipe(path) if kind == "recipe" else profiles.load_profile_file(path)


@examples(150)
@pytest.mark.parametrize("kind", ["recipe", "profile"])
def test_mutated_shipped_toml_loads_or_is_refused_in_one_line(tmp_path, request, kind, n):
    files = RECIPE_FILES if kind == "recipe" else PROFILE_FILES
    assert files, "no shipped TOML files found"
    path = tmp_path / f"{kind}.toml"
    tally = Tally(request)
    outcomes = OUTCOMES.setdefault(request.node.name, Counter())

    @fuzz(n)
    @given(data=st.sampled_from([f.read_bytes() for f in files]).flatmap(mutated))
    def check(data):
        tally()
        path.write_bytes(data)
        try:
            loaded = load_toml(kind, path)
        except FmrlError as e:
            one_line_error(e, path)
            outcomes["refused"] += 1
            return
        outcomes["loaded"] += 1
        problems = recipe_problems(loaded) if kind == "recipe" else profile_problems(loaded)
        assert not problems, problems

    check()
    tally.done(n)
    assert outcomes["loaded"] and outcomes["refused"], outcomes


@examples(150)
@pytest.mark.parametrize("kind", ["recipe", "profile"])
def test_toml_value_replaced_is_refused_naming_the_key_or_in_range(tmp_path, request, kind, n):
    """A shipped file with one key's value replaced by a random TOML value: an FmrlError of one line that
    names the key, or a loaded object whose numbers are all finite and in range."""
    files = RECIPE_FILES if kind == "recipe" else PROFILE_FILES
    path = tmp_path / f"{kind}.toml"
    tally = Tally(request)
    outcomes = OUTCOMES.setdefault(request.node.name, Counter())
    keys = RECIPE_KEYS if kind == "recipe" else [(None, k) for k in PROFILE_KEYS]

    @fuzz(n)
    @given(text=st.sampled_from([f.read_text() for f in files]), where=st.sampled_from(keys), literal=TOML_VALUES)
    def check(text, where, literal):
        tally()
        section, key = where
        edited = set_toml_key(text, section, key, literal)
        too_deep = False
        try:
            tomllib.loads(edited)
        except tomllib.TOMLDecodeError:   # a literal TOML itself refuses: not this test's subject
            return
        except RecursionError:            # nested too deeply for the parser: one line, no key to name
            too_deep = True
        path.write_text(edited)
        try:
            loaded = load_toml(kind, path)
        except FmrlError as e:
            message = one_line_error(e, path)
            assert too_deep or key in message, f"the error does not name {key!r}: {message!r}"
            outcomes["refused"] += 1
            return
        outcomes["loaded"] += 1
        problems = recipe_problems(loaded) if kind == "recipe" else profile_problems(loaded)
        assert not problems, f"{key} = {literal} loaded: {problems}"

    check()
    tally.done(n)
    assert outcomes["refused"], outcomes


STRING_RECIPE_KEYS = [("data", "path"), ("data", "features"), ("data", "items"), ("train", "init_from"),
                      ("data", "split"), ("data", "test_from"), ("data", "val_from"), ("model", "item_embedding"),
                      ("train", "loss"), ("train", "select_on")]
STRING_LITERALS = ['"a\\u0000b"', '"\\u0000"', '""', '"   "', '"../elsewhere"', '"~/x"', '"x\\ny"', '"\\ud7ff"',
                   '"' + "p" * 5000 + '"', '"time"', '"2003-01-01"', '"0.8"', '"9999-99-99"', '"nan"', '"inf"',
                   "1e309", "-1", "0.5", "nan", "[]", "true"]


@examples(40)
def test_recipe_paths_and_strings_are_refused_naming_the_key_or_loaded(tmp_path, request, n):
    """Path and string keys of a recipe given odd strings (NUL, empty, very long, newlines) or other types."""
    path = tmp_path / "recipe.toml"
    tally = Tally(request)

    @fuzz(n)
    @given(text=st.sampled_from([f.read_text() for f in RECIPE_FILES]), where=st.sampled_from(STRING_RECIPE_KEYS),
           literal=st.sampled_from(STRING_LITERALS))
    def check(text, where, literal):
        tally()
        path.write_text(set_toml_key(text, where[0], where[1], literal))
        try:
            loaded = recipe_module.load_recipe(path)
        except FmrlError as e:
            message = one_line_error(e, path)
            assert where[1] in message, f"the error does not name {where[1]!r}: {message!r}"
            return
        assert not recipe_problems(loaded)

    check()
    tally.done(n)


# ----------------------------------------------------------------------------------------------
# JSON

JSON_DOCS = st.recursive(st.none() | st.booleans() | st.integers() | st.integers(-10**40, 10**40) |
                         st.floats(allow_nan=False) | st.text(st.characters(blacklist_categories=("Cs",)), max_size=8),
                         lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=5), c, max_size=4),
                         max_leaves=12)


def json_text(doc, ascii_: bool, indent) -> str:
    return json.dumps(doc, ensure_ascii=ascii_, indent=indent)


JSON_BYTES = st.builds(lambda d, a, i, bom: (b"\xef\xbb\xbf" if bom else b"") + json_text(d, a, i).encode("utf-8"),
                       JSON_DOCS, st.booleans(), st.sampled_from([None, 0, 2]), st.booleans())


@examples(300)
def test_json_bytes_decode_or_are_refused_in_one_line(request, n):
    """Arbitrary and mutated bytes: a value equal to json.loads' (where that takes them too), or a one-line
    FmrlError naming the file."""
    name = "/fuzz/data.json"
    tally = Tally(request)

    @fuzz(n)
    @given(data=st.one_of(st.binary(max_size=64), JSON_BYTES.flatmap(mutated), JSON_BYTES))
    def check(data):
        tally()
        try:
            value = read_json_bytes(data, name)
        except FmrlError as e:
            one_line_error(e, name)
            return
        text = (data[3:] if data.startswith(b"\xef\xbb\xbf") else data).decode("utf-8")
        assert json_equal(value, json.loads(text))

    check()
    tally.done(n)


@examples(150)
def test_generated_json_decodes_as_json_loads(request, n):
    tally = Tally(request)

    @fuzz(n)
    @given(doc=JSON_DOCS, ascii_=st.booleans(), indent=st.sampled_from([None, 0, 2]), bom=st.booleans())
    def check(doc, ascii_, indent, bom):
        tally()
        text = json_text(doc, ascii_, indent)
        data = (b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8")
        assert json_equal(read_json_bytes(data, "x.json"), json.loads(text))
        assert json_equal(read_json_bytes(data, "x.json"), doc)

    check()
    tally.done(n)


@examples(150)
def test_jsonl_objects_read_or_refused_in_one_line(tmp_path, request, n):
    """Generated JSONL files (objects, blank lines, CRLF, BOM) give every object with its line number; mutated
    ones give objects or a one-line FmrlError naming the file."""
    path = tmp_path / "lines.jsonl"
    tally = Tally(request)
    objects = st.lists(st.dictionaries(st.text(max_size=5), JSON_DOCS, max_size=4), min_size=1, max_size=6)

    def jsonl(objs, newline, blank, bom):
        lines = []
        for o in objs:
            lines.append(json.dumps(o))
            lines += [" "] * blank
        return (b"\xef\xbb\xbf" if bom else b"") + newline.join(lines).encode() + newline.encode()

    generated = st.builds(lambda o, nl, b, bom: (o, jsonl(o, nl, b, bom)), objects, st.sampled_from(["\n", "\r\n"]),
                          st.integers(0, 2), st.booleans())

    @fuzz(n)
    @given(case=generated, mutate=st.booleans(), data=st.data())
    def check(case, mutate, data):
        tally()
        objs, raw = case
        if mutate:
            raw = data.draw(mutated(raw))
        path.write_bytes(raw)
        try:
            got = list(read_jsonl_objects(path))
        except FmrlError as e:
            assert mutate, f"a generated file was refused: {e}"
            one_line_error(e, path)
            return
        assert all(isinstance(o, dict) for _, o in got)
        if not mutate:
            assert [o for _, o in got] == objs or all(json_equal(a, b) for (_, a), b in zip(got, objs))
            assert len(got) == len(objs)

    check()
    tally.done(n)


# ----------------------------------------------------------------------------------------------
# simulate stream lines


def event_lines():
    ids = st.one_of(STR_IDS.filter(lambda s: "\0" not in s), st.integers(*INT64), st.integers(-2**80, 2**80))
    ts = st.one_of(st.none(), st.integers(-10**6, 10**12), st.floats(allow_nan=False, allow_infinity=False))
    event = st.fixed_dictionaries({"user": ids, "item": ids},
                                  optional={"ts": ts, "event": st.text(max_size=5), "extra": JSON_DOCS})
    return st.tuples(event, st.booleans(), st.booleans())


@examples(500)
def test_stream_lines_never_raise_other_exceptions(request, n):
    tally = Tally(request)
    kinds = OUTCOMES.setdefault(request.node.name, Counter())
    valid = event_lines().map(lambda t: json.dumps(t[0], ensure_ascii=t[1]).encode())

    odd = st.sampled_from([b'{"user": "\\ud800", "item": "i"}', b'{"user": "u", "item": "a\\udc00"}',
                           b'{"user": "\\ud83d\\ude00", "item": "i"}', b'{"user": "u\\u0000", "item": "i"}',
                           b'{"user": "u", "item": "i", "ts": 1e400}', b'{"user": "u", "item": "i", "ts": true}',
                           b'{"user": "u", "item": "i"}\x00', b'\xef\xbb\xbf{"user": 1, "item": 2}',
                           b'{"user": 1.0, "item": "i"}', b'{"user": "u", "item": "' + b"x" * 1100 + b'"}'])

    @fuzz(n)
    @given(raw=st.one_of(st.binary(max_size=64), valid.flatmap(mutated), JSON_BYTES.flatmap(mutated), odd))
    def check(raw):
        tally()
        try:
            out = parse_line(raw)
        except BadLine as e:
            assert e.kind in BAD_KINDS, e.kind
            assert isinstance(e.what, str)
            kinds[e.kind] += 1
            return
        if out is None:
            body = raw[3:] if raw.startswith(b"\xef\xbb\xbf") else raw
            assert not body.strip(), raw   # blank: ASCII whitespace (\v and \f too, as fmrl_replay's is_blank)
            kinds["blank"] += 1
            return
        user, item, ts, obj = out
        assert id_ok(user) and id_ok(item), (user[:40], item[:40])
        assert ts is None or (type(ts) in (int, float) and math.isfinite(ts)), ts
        assert type(obj) is dict
        kinds["event"] += 1

    check()
    tally.done(n)
    assert kinds["event"] and len(kinds) >= 3, kinds


@examples(150)
def test_valid_stream_lines_parse_as_written(request, n):
    tally = Tally(request)

    @fuzz(n)
    @given(case=event_lines(), bom=st.booleans(), crlf=st.booleans())
    def check(case, bom, crlf):
        tally()
        event, ascii_, _ = case
        raw = ((b"\xef\xbb\xbf" if bom else b"") + json.dumps(event, ensure_ascii=ascii_).encode()
               + (b"\r" if crlf else b""))
        expect_bad = any(not id_ok(str(event[k])) for k in ("user", "item"))
        try:
            user, item, ts, obj = parse_line(raw)
        except BadLine as e:
            assert expect_bad and e.kind == "wrong_type", (e.kind, e.what)
            return
        assert not expect_bad
        assert (user, item, ts) == (str(event["user"]), str(event["item"]), event.get("ts"))
        assert json_equal(obj, event)

    check()
    tally.done(n)


# ----------------------------------------------------------------------------------------------
# Item-vector files (.json)

VECTOR_FILES = st.builds(
    lambda ids, dim, seed, meta: json.dumps({**meta, "ids": ids,
                                             "vectors": np.random.default_rng(seed).normal(size=(len(ids), dim))
                                             .astype(np.float32).tolist()}).encode(),
    st.lists(st.one_of(STR_IDS.filter(id_ok), st.integers(-10**6, 10**6)), min_size=1, max_size=5, unique_by=str),
    st.integers(1, 6), st.integers(0, 2**32 - 1),
    st.fixed_dictionaries({"format": st.just("fmrl-sdk/item-vectors"), "size": st.sampled_from([4, 8]),
                           "run": st.just("run"), "features": st.none(), "input_hash": st.just("abc")}))


@examples(200)
def test_item_vector_json_reads_or_is_refused_in_one_line(tmp_path, request, n):
    path = tmp_path / "vectors.json"
    tally = Tally(request)
    outcomes = OUTCOMES.setdefault(request.node.name, Counter())

    @fuzz(n)
    @given(data=st.one_of(VECTOR_FILES, VECTOR_FILES.flatmap(mutated), VECTOR_FILES.flatmap(mutated)))
    def check(data):
        tally()
        path.write_bytes(data)
        try:
            ids, vectors = read_item_vectors(path)
        except FmrlError as e:
            one_line_error(e, path)
            outcomes["refused"] += 1
            return
        outcomes["read"] += 1
        raw = json.loads(data.decode("utf-8-sig"))
        raw_ids = raw["ids"]
        assert all(type(i) in (str, int) for i in raw_ids), f"accepted ids of other types: {raw_ids!r}"[:300]
        assert ids == [str(i) for i in raw_ids] and all(id_ok(i) for i in ids)
        assert isinstance(vectors, np.ndarray) and vectors.dtype == np.float32
        assert vectors.ndim == 2 and vectors.shape[0] == len(ids) and vectors.shape[1] >= 1, \
            f"vectors of shape {vectors.shape} for {len(ids)} ids"

    check()
    tally.done(n)
    assert outcomes["read"] and outcomes["refused"], outcomes


@examples(80)
def test_item_vector_json_structure_is_checked(tmp_path, request, n):
    """'ids' and 'vectors' replaced by other JSON (ids of every type, ragged, flat or empty vectors, counts
    that differ): ids that are strings or integers and vectors [len(ids), S], or a one-line FmrlError."""
    path = tmp_path / "vectors.json"
    tally = Tally(request)
    outcomes = OUTCOMES.setdefault(request.node.name, Counter())
    any_id = st.one_of(STR_IDS, st.integers(-10**6, 10**6), st.floats(), st.booleans(), st.none(), st.just([]),
                       st.just({}), st.sampled_from(["a\x00b", "\ud800", "x" * 1100]))
    row = st.lists(st.one_of(st.floats(-1e3, 1e3), st.integers(-5, 5)), min_size=0, max_size=3)
    vectors = st.one_of(st.lists(row, max_size=4), st.lists(st.floats(-1, 1), max_size=4), JSON_DOCS,
                        st.lists(st.lists(row, max_size=2), max_size=2))

    @fuzz(n)
    @given(ids=st.one_of(st.lists(any_id, max_size=4), JSON_DOCS), vectors=vectors)
    def check(ids, vectors):
        tally()
        path.write_text(json.dumps({"format": "fmrl-sdk/item-vectors", "size": 4, "ids": ids, "vectors": vectors}))
        try:
            got_ids, got = read_item_vectors(path)
        except FmrlError as e:
            one_line_error(e, path)
            outcomes["refused"] += 1
            return
        outcomes["read"] += 1
        assert isinstance(ids, list) and all(type(i) in (str, int) for i in ids), f"accepted ids {ids!r}"
        assert got_ids == [str(i) for i in ids] and all(id_ok(i) for i in got_ids), f"accepted ids {ids!r}"
        assert got.dtype == np.float32 and got.shape[0] == len(ids), f"vectors {got.shape} for {len(ids)} ids"
        assert got.ndim == 2 and got.shape[1] >= 1 or (len(ids) == 0 and got.size == 0), f"vectors {got.shape}"

    check()
    tally.done(n)
    assert outcomes["refused"], outcomes
