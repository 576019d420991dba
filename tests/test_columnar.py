"""The columnar reader (fmrl_sdk.data.columnar) gives exactly what the row-by-row reader gives.

Every case reads the same rows with the straightforward reader (tests/reference_reader.py, CSV or JSONL) and
with the SDK's columnar reader (`dataset.read_interactions`)
(CSV, JSONL, Parquet, hive-partitioned Parquet) and compares item ids, user ids, each user's sequence and
the report; then bad input: one-line FmrlErrors.
"""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from fmrl_sdk.data import columnar, dataset  # noqa: E402
from fmrl_sdk.errors import FmrlError  # noqa: E402
from tests import reference_reader  # noqa: E402
from tests.conftest import write_small_interactions  # noqa: E402

DEMO = dataset.DEMO_DATA_DIR


# ----------------------------------------------------------------------------------------------
# Helpers


def assert_same(old: dataset.Dataset, new: dataset.Dataset) -> None:
    assert new.item_ids == old.item_ids
    assert new.user_ids == old.user_ids
    assert new.file_item_ids == old.file_item_ids
    assert len(new.sequences) == len(old.sequences)
    for a, b in zip(old.sequences, new.sequences):
        assert b.dtype == np.int64 and np.array_equal(a, b)
    assert (new.times is None) == (old.times is None)
    for a, b in zip(old.times or [], new.times or []):
        assert np.array_equal(a, b)
    assert new.report == old.report
    assert new.stats() == old.stats()


def check(reference: Path, *paths: Path, min_count: int = 5, row_by_row: bool = False) -> dataset.Dataset:
    """Old reader on `reference`; columnar reader on it and on each of `paths` (same rows): all equal.
    Also the low-level API: read_log + k_core + sequences against the reference k-core on the same rows.
    Unless row_by_row, the files must take pyarrow's vectorised path (not the row-by-row fallback)."""
    old = reference_reader.read_interactions(reference, min_count=min_count)
    rows = reference_reader.read_interaction_rows(reference)
    _, old_k = reference_reader._k_core(rows, min_count)
    for path in (reference, *paths):
        with pytest.MonkeyPatch.context() as mp:
            if not row_by_row:
                mp.setattr(columnar, "_from_rows", _no_fallback)
            assert_same(old, dataset.read_interactions(path, min_count=min_count))
            log = columnar.read_log(path)
        assert log.raw == old.report["raw"] and log.has_time == any(r[4] for r in rows)
        assert log.user_codes.dtype == np.int32 and log.item_codes.dtype == np.int32
        kept, report = columnar.k_core(log, min_count)
        assert report == old_k
        mask = np.zeros(log.rows, dtype=bool)
        mask[kept] = True
        for selection in (kept, mask):
            seq = columnar.sequences(log, selection)
            assert seq.item_ids == old.item_ids and seq.user_ids == old.user_ids
            assert seq.offsets[-1] == len(seq.items) and len(seq.offsets) == len(seq.user_ids) + 1
            assert all(np.array_equal(a, b) for a, b in zip(old.sequences, seq.per_user()))
            assert (seq.timestamps is None) == (not log.has_time)
    return old


def _no_fallback(path, rows):
    raise AssertionError(f"{path} was read row by row")


def write_csv(path: Path, rows: list[dict], fields=("user", "item", "timestamp")) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_parquet(path: Path, rows: list[dict], fields=("user", "item", "timestamp"), **types) -> Path:
    columns = {f: pa.array([r.get(f) for r in rows], type=types.get(f)) for f in fields}
    pq.write_table(pa.table(columns), path)
    return path


def write_hive(folder: Path, rows: list[dict], parts: int = 3, fields=("user", "item", "timestamp")) -> Path:
    """Contiguous slices of `rows` into folder/chunk=00/part-0.parquet, ... (file order = row order)."""
    bounds = np.linspace(0, len(rows), parts + 1).astype(int)
    for j in range(parts):
        (folder / f"chunk={j:02d}").mkdir(parents=True)
        write_parquet(folder / f"chunk={j:02d}" / "part-0.parquet", rows[bounds[j]:bounds[j + 1]], fields)
    (folder / "_SUCCESS").write_text("")
    (folder / "chunk=00" / ".hidden.parquet").write_text("not parquet, and hidden")
    return folder


def csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [dict(r) for r in csv.DictReader(f)]


def demo_rows(rng: np.random.Generator) -> list[dict]:
    """The packaged demo (a P5 folder) as interaction rows: ASIN/reviewer ids, timestamps with ties (every
    two consecutive events share one), rows shuffled so that file order differs from time order."""
    maps = json.loads((DEMO / "datamaps.json").read_text())
    rows = []
    for line in (DEMO / "sequential_data.txt").read_text().split("\n"):
        parts = line.split()
        if not parts:
            continue
        user = maps["id2user"][parts[0]]
        for pos, item in enumerate(parts[1:]):
            rows.append({"user": user, "item": maps["id2item"][item], "timestamp": 1_300_000_000 + 86400 * (pos // 2)})
    return [rows[j] for j in rng.permutation(len(rows))]


def error(call, *args, **kwargs) -> str:
    with pytest.raises(FmrlError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message.strip() == message and message
    return message


# ----------------------------------------------------------------------------------------------
# Same results


def test_small_interactions_csv_jsonl_parquet(tmp_path):
    ref = write_small_interactions(tmp_path / "small.csv")
    rows = csv_rows(ref)
    as_numbers = [{**r, "timestamp": int(r["timestamp"])} for r in rows]
    check(ref, write_jsonl(tmp_path / "small.jsonl", as_numbers),
          write_parquet(tmp_path / "small.parquet", as_numbers),
          write_hive(tmp_path / "hive", as_numbers))
    # hive partitioned by user: the user column comes from the path (file order changes, but only across users)
    for user in sorted({r["user"] for r in rows}):
        (tmp_path / "by_user" / f"user={user}").mkdir(parents=True)
        write_parquet(tmp_path / "by_user" / f"user={user}" / "data.parquet",
                      [r for r in as_numbers if r["user"] == user], fields=("item", "timestamp"))
    check(ref, tmp_path / "by_user")


def test_demo_converted_to_csv_jsonl_parquet(tmp_path):
    rows = demo_rows(np.random.default_rng(1))
    ref = write_csv(tmp_path / "demo.csv", rows)
    old = check(ref, write_jsonl(tmp_path / "demo.jsonl", rows), write_parquet(tmp_path / "demo.parquet", rows),
                write_hive(tmp_path / "demo_hive", rows, parts=4))
    assert old.report["timestamps"]["users_with_any_tie"] > 100   # ties are exercised
    # without the k-core, per-user sequences are the P5 sequences (up to the order within each tied pair)
    loaded = dataset.load_dataset("demo")
    p5 = {u: [loaded.item_ids[i - 1] for i in s] for u, s in zip(loaded.user_ids, loaded.sequences)}
    seq = columnar.sequences(columnar.read_log(tmp_path / "demo.parquet"))
    assert sorted(seq.user_ids) == sorted(p5) and len(seq.items) == sum(map(len, p5.values()))
    for user, items in zip(seq.user_ids, seq.per_user()):
        ids = [seq.item_ids[i - 1] for i in items]
        assert [sorted(ids[j:j + 2]) for j in range(0, len(ids), 2)] == \
               [sorted(p5[user][j:j + 2]) for j in range(0, len(ids), 2)]


def test_timestamp_ties_and_duplicate_rows(tmp_path):
    rng = np.random.default_rng(2)
    n = 6000
    rows = [{"user": f"u{int(u)}", "item": f"i{int(i)}", "timestamp": int(t)}
            for u, i, t in zip(rng.integers(0, 300, n), rng.zipf(1.3, n) % 200, rng.integers(0, 4, n))]
    rows += [rows[j] for j in rng.integers(0, n, 300)]            # exact duplicates, appended
    rows = [rows[j] for j in rng.permutation(len(rows))]
    ref = write_csv(tmp_path / "ties.csv", rows)
    old = check(ref, write_jsonl(tmp_path / "ties.jsonl", rows), write_parquet(tmp_path / "ties.parquet", rows),
                min_count=3)
    assert old.report["timestamps"]["test_target_tied"] > 0 and old.report["timestamps"]["val_target_tied"] > 0


def test_float_timestamps_and_ts_column(tmp_path):
    rng = np.random.default_rng(3)
    rows = [{"user": f"u{j % 40}", "item": f"i{int(rng.integers(30))}", "ts": float(rng.choice([0.5, 1.25, -3.0, 1e9]))}
            for j in range(1500)]
    ref = write_csv(tmp_path / "ts.csv", rows, fields=("user", "item", "ts"))
    check(ref, write_jsonl(tmp_path / "ts.jsonl", rows), write_parquet(tmp_path / "ts.parquet", rows,
                                                                       fields=("user", "item", "ts")))


def test_no_timestamp_column_uses_file_order(tmp_path):
    rows = csv_rows(write_small_interactions(tmp_path / "small.csv"))
    rows = [rows[j] for j in np.random.default_rng(4).permutation(len(rows))]
    ref = write_csv(tmp_path / "plain.csv", rows, fields=("user", "item"))
    plain = [{"user": r["user"], "item": r["item"]} for r in rows]
    old = check(ref, write_jsonl(tmp_path / "plain.jsonl", plain),
                write_parquet(tmp_path / "plain.parquet", rows, fields=("user", "item")),
                write_hive(tmp_path / "plain_hive", rows, fields=("user", "item")))
    assert old.report["timestamps"] is None
    # a timestamp column whose every value is empty: also file order
    empty = write_csv(tmp_path / "empty_ts.csv", [{**r, "timestamp": ""} for r in rows])
    assert_same(old, dataset.read_interactions(empty))
    assert not columnar.read_log(empty).has_time


def test_k_core_over_several_rounds(tmp_path):
    rng = np.random.default_rng(5)
    rows = []
    for u in range(400):   # sparse and skewed: dropping rare items pushes users below k, and so on
        for _ in range(int(rng.integers(2, 9))):
            rows.append({"user": f"user{u}", "item": f"it{int(rng.zipf(1.6)) % 150}",
                         "timestamp": int(rng.integers(100))})
    ref = write_csv(tmp_path / "cascade.csv", rows)
    check(ref, write_parquet(tmp_path / "cascade.parquet", rows), min_count=5)
    _, report = reference_reader._k_core(reference_reader.read_interaction_rows(ref), 5)
    assert report["rounds"] >= 3 and report["users_cascade"] > 0 and report["items_cascade"] > 0


def test_integer_ids_become_their_string_form(tmp_path):
    rng = np.random.default_rng(6)
    rows = [{"user": int(u), "item": int(i), "timestamp": int(t)}
            for u, i, t in zip(rng.integers(0, 50, 2000), rng.integers(0, 40, 2000) * 1000 - 7,
                               rng.integers(0, 50, 2000))]
    ref = write_csv(tmp_path / "ints.csv", rows)
    check(ref, write_jsonl(tmp_path / "ints.jsonl", rows), write_parquet(tmp_path / "ints.parquet", rows),
          write_parquet(tmp_path / "int32.parquet", rows, user=pa.int16(), item=pa.int32()))
    # JSON mixing strings, integers and integers beyond int64 in one column (the row reader's path)
    mixed = [{**r, "user": str(r["user"]) if j % 3 else r["user"]} for j, r in enumerate(rows)]
    mixed[5]["item"] = 10**20
    mixed_csv = write_csv(tmp_path / "mixed.csv", mixed)
    check(mixed_csv)
    check(mixed_csv, write_jsonl(tmp_path / "mixed.jsonl", mixed), row_by_row=True)


def test_unicode_ids_sort_like_python_strings_and_time_ordered_files(tmp_path):
    rng = np.random.default_rng(7)
    names = ["é", "e", "Z", "z", "日本", "\U0001F600x", "\uffff", "a b", " lead", "ä\u0301", "Ω", "10", "9", "-1"]
    rows = [{"user": str(rng.choice(names)) + str(j % 3), "item": str(rng.choice(names)), "timestamp": j // 7}
            for j in range(3000)]   # a log in time order (the sort skips its time pass)
    check(write_csv(tmp_path / "uni.csv", rows), write_jsonl(tmp_path / "uni.jsonl", rows),
          write_parquet(tmp_path / "uni.parquet", rows), min_count=3)


def test_files_pyarrow_does_not_parse_are_read_row_by_row(tmp_path):
    base = csv_rows(write_small_interactions(tmp_path / "small.csv"))
    header = "\ufeffuser,item,timestamp,note\n"
    lines = [f'{r["user"]},"{r["item"]}",{r["timestamp"]}' + (',"a, quoted\nnewline"' if j % 7 == 0 else ",x")
             for j, r in enumerate(base)]   # (rows with more fields than the header: refused, RULE_CASES)
    under = tmp_path / "underscore.csv"   # 1_000: Python's float() takes it, pyarrow does not
    under.write_text("user,item,timestamp\n" + "".join(f'{r["user"]},{r["item"]},1_00{r["timestamp"]}\n' for r in base))
    dup = tmp_path / "duplicate_header.csv"
    dup.write_text("user,item,item,timestamp\n"
                   + "".join(f'{r["user"]},zz,{r["item"]},{r["timestamp"]}\n' for r in base))
    long_note = tmp_path / "long_note.csv"   # a record longer than pyarrow's block, a field over the csv default
    long_note.write_text("user,item,timestamp,note\n" + "".join(
        f'{r["user"]},{r["item"]},{r["timestamp"]},{"x" * (2 << 20) if j == 5 else "ok"}\n' for j, r in enumerate(base)))
    for path in (under, dup, long_note):
        with pytest.MonkeyPatch.context() as mp:
            seen = []
            mp.setattr(columnar, "_from_rows", lambda p, rows, f=columnar._from_rows: seen.append(p) or f(p, rows))
            assert_same(reference_reader.read_interactions(path), dataset.read_interactions(path))
            assert seen == [path]
    quoted = tmp_path / "quoted.csv"   # BOM, quotes, newlines inside values, blank lines: pyarrow reads these
    quoted.write_text(header + "\n".join(lines) + "\n\n", encoding="utf-8")
    check(quoted)
    jl = tmp_path / "blank_lines.jsonl"
    jl.write_text("\ufeff" + "".join(json.dumps(r) + ("\n\n  \n" if j % 9 == 0 else "\n") for j, r in enumerate(base)),
                  encoding="utf-8")
    assert_same(reference_reader.read_interactions(jl), dataset.read_interactions(jl))


def test_ts_and_timestamp_keys_in_jsonl(tmp_path):
    rows = csv_rows(write_small_interactions(tmp_path / "small.csv"))
    both = [{"user": r["user"], "item": r["item"], "timestamp": int(r["timestamp"]), "ts": 5} for r in rows]
    path = write_jsonl(tmp_path / "both.jsonl", both)   # "timestamp" wins over "ts"
    assert_same(reference_reader.read_interactions(path), dataset.read_interactions(path))
    only_ts = [{"user": r["user"], "item": r["item"], "ts": int(r["timestamp"])} for r in rows]
    path = write_jsonl(tmp_path / "ts.jsonl", only_ts)
    assert_same(reference_reader.read_interactions(path), dataset.read_interactions(path))


# ----------------------------------------------------------------------------------------------
# Bad input: one line, FmrlError, the same message as the row reader where it had one


def test_csv_errors_match_the_row_reader(tmp_path):
    cases = {
        "no_item.csv": "user,timestamp\nu1,1\n",
        "empty_user.csv": "user,item,timestamp\nu1,i1,1\n,i2,2\nu3,i3,3\n",
        "empty_item.csv": "user,item,timestamp\nu1,i1,1\nu2,i2,2\nu3,,3\n",
        "bad_time.csv": "user,item,timestamp\nu1,i1,1\nu2,i2,soon\n",
        "short_row.csv": "user,item,timestamp\nu1,i1,1\nu2\n",
        "empty.csv": "",
        "header_only.csv": "user,item\n",
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        expected = error(reference_reader.read_interactions, tmp_path / name)
        assert error(columnar.read_log, tmp_path / name) == expected, name
    assert error(columnar.read_log, tmp_path / "empty_user.csv").endswith("empty_user.csv:3: missing 'user'")


def ids_up_to_the_limit_rows() -> list[dict]:
    """Ids of 200 to 1,024 bytes (some multi-byte), among short ones: the id screen lets them through."""
    rows = [{"user": f"u{j % 20}", "item": f"i{j % 15}", "timestamp": j} for j in range(600)]
    for j in range(0, 600, 7):
        rows[j]["item"] = "\u00e9" * (100 + j % 413) if j % 2 else "x" * (200 + j % 825)
    for j in (3, 23, 43):
        rows[j]["user"] = "\u00e9" * 512   # exactly 1,024 bytes
    return rows


def test_ids_up_to_the_limit(tmp_path):
    rows = ids_up_to_the_limit_rows()
    check(write_csv(tmp_path / "long.csv", rows), write_jsonl(tmp_path / "long.jsonl", rows),
          write_parquet(tmp_path / "long.parquet", rows), min_count=1)


def row_by_row(path: Path) -> str:
    """read_log's error with pyarrow's parsers refusing every file (the row-by-row path only)."""
    import pyarrow.csv as pcsv
    import pyarrow.json as pj

    def refuse(*args, **kwargs):
        raise pa.ArrowInvalid("refused by the test")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pcsv, "read_csv", refuse)
        mp.setattr(pj, "read_json", refuse)
        return error(columnar.read_log, path)


RULE_CASES = {   # each breaks one rule on its last row (or two, on different rows: the earlier is reported)
    "nul_item.csv": b"u1,i\x001,3\n",
    "extra_field.csv": b"u1,i1,3,x\n", "fewer_fields.csv": b"u1,i1\n",   # were read (extra ignored, no timestamp)
    "unclosed_quote.csv": b'"u1,i1,3\n',                                    # was "missing 'item'"
    "nul_user.jsonl": b'{"user": "u\\u0000", "item": "i1", "timestamp": 3}\n',
    "inf.csv": b"u1,i1,inf\n", "minus_inf.csv": b"u1,i1,-inf\n", "e400.csv": b"u1,i1,1e400\n",
    "nan.csv": b"u1,i1,nan\n", "nan.jsonl": b'{"user": "u1", "item": "i1", "timestamp": NaN}\n',
    "infinity.jsonl": b'{"user": "u1", "item": "i1", "timestamp": Infinity}\n',
    "minus_infinity.jsonl": b'{"user": "u1", "item": "i1", "timestamp": -Infinity}\n',
    "e400.jsonl": b'{"user": "u1", "item": "i1", "timestamp": 1e400}\n',
    "inf_text.jsonl": b'{"user": "u1", "item": "i1", "ts": "inf"}\n',
    "huge_int_time.jsonl": b'{"user": "u1", "item": "i1", "timestamp": -1' + b"0" * 400 + b"}\n",
    "bool_time.jsonl": b'{"user": "u1", "item": "i1", "timestamp": false}\n',
    "long_item.csv": b"u1," + b"y" * 140_000 + b",3\n",
    "wide_item.csv": "u1,{},3\n".format("\u00e9" * 513).encode(),
    "long_user.jsonl": b'{"user": "' + b"u" * 1025 + b'", "item": "i1", "timestamp": 3}\n',
    "huge_int_item.jsonl": b'{"user": "u1", "item": 9' + b"9" * 1024 + b', "timestamp": 3}\n',
    "float_user.jsonl": b'{"user": 1.0, "item": "i1", "timestamp": 3}\n',
    "surrogate.jsonl": b'{"user": "u1", "item": "\\udc00i", "timestamp": 3}\n',
    "latin1_item.csv": b"u1,caf\xe9,3\n", "latin1_item.jsonl": b'{"user": "u1", "item": "caf\xe9", "timestamp": 3}\n',
    "latin1_other.jsonl": b'{"user": "u1", "item": "i1", "timestamp": 3, "note": "caf\xe9"}\n',
    "untimed.csv": b"u1,i1,\n", "untimed.jsonl": b'{"user": "u1", "item": "i1"}\n',
    "two_errors.csv": b"u1,i\x00,inf\nu\x00,i1,nan\n",
    "two_errors.jsonl": b'{"user": "u1", "item": "i1", "timestamp": Infinity}\n{"user": "u1", "item": "i\\u0000"}\n',
}


def test_broken_rules_give_the_row_readers_message(tmp_path):
    """Every rule of the columnar module docstring, broken in CSV and JSONL: the reference reader's message,
    on pyarrow's path and row by row alike."""
    rows = [{"user": f"u{j % 5}", "item": f"i{j % 4}", "timestamp": j} for j in range(40)]
    for name, last in RULE_CASES.items():
        path = tmp_path / name
        if name.endswith(".csv"):
            good = write_csv(tmp_path / "good.csv", rows).read_bytes()
        else:
            good = write_jsonl(tmp_path / "good.jsonl", rows).read_bytes()
        path.write_bytes(good + last)
        expected = error(reference_reader.read_interactions, path)
        assert expected.startswith(f"{path}:4") and error(columnar.read_log, path) == expected, name
        assert row_by_row(path) == expected, name


def test_csv_and_jsonl_that_are_not_utf8(tmp_path):
    for name in ("latin1.csv", "latin1.jsonl"):
        path = tmp_path / name
        row = b'{"user": "u\xe9", "item": "i", "ts": 1}\n' if name.endswith("jsonl") else b"u\xe9,i,1\n"
        path.write_bytes((b"" if name.endswith("jsonl") else b"user,item,ts\n") + row * 3)
        assert error(columnar.read_log, path) == f"{path}:{1 if name.endswith('jsonl') else 2}: not UTF-8 text"


def test_some_rows_without_timestamp_is_an_error(tmp_path):
    path = tmp_path / "mixed.csv"
    path.write_text("user,item,timestamp\nu1,i1,1\nu1,i2,\nu1,i3,3\nu2,i1,\n")
    assert error(columnar.read_log, path).startswith(f"{path}:3: no timestamp, but other rows have one")
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"user": "u1", "item": "i1"}\n\n{"user": "u1", "item": "i2", "timestamp": 4}\n')
    assert error(columnar.read_log, path).startswith(f"{path}:1: no timestamp")
    path = write_parquet(tmp_path / "mixed.parquet", [{"user": "a", "item": "b", "timestamp": 1},
                                                      {"user": "a", "item": "c", "timestamp": None}])
    assert error(columnar.read_log, path) == f"{path}: row 2: no timestamp, but other rows have one " \
                                             "(give every row a timestamp, or none)"
    folder = tmp_path / "parts"
    write_hive(folder, [{"user": "a", "item": "b", "timestamp": 1}] * 4, parts=2)
    write_parquet(folder / "chunk=01" / "part-1.parquet", [{"user": "a", "item": "b"}], fields=("user", "item"))
    assert error(columnar.read_log, folder).startswith(f"{folder / 'chunk=01' / 'part-1.parquet'}: row 1: no timestamp")
    for name, text in (("nan.csv", "user,item,timestamp\nu1,i1,1\nu1,i2,nan\n"),
                       ("nan.jsonl", '{"user": "u1", "item": "i1", "timestamp": NaN}\n')):
        (tmp_path / name).write_text(text)
        assert "timestamp nan is not a number" in error(columnar.read_log, tmp_path / name)


def test_jsonl_wrong_types(tmp_path):
    cases = {
        "float_user.jsonl": ('{"user": 1, "item": "a", "ts": 1}\n{"user": 1.5, "item": "a", "ts": 2}\n',
                             ":2: 'user' must be"),
        "list_item.jsonl": ('{"user": "u", "item": ["a"], "ts": 1}\n',
                            ":1: 'item' must be a string or an integer, got list"),
        "bool_user.jsonl": ('{"user": "u", "item": "a"}\n{"user": true, "item": "a"}\n', ":2: 'user' must be"),
        "bool_time.jsonl": ('{"user": "u", "item": "a", "timestamp": true}\n', ":1: timestamp True is not a number"),
        "no_item.jsonl": ('{"user": "u", "item": "a"}\n\n{"user": "u"}\n', ":3: missing 'item'"),
        "not_object.jsonl": ('{"user": "u", "item": "a"}\n[1, 2]\n', ":2: expected a JSON object, got list"),
        "bad_json.jsonl": ('{"user": "u", "item": "a"}\n{"user": \n', ":2: invalid JSON"),
        "str_time.jsonl": ('{"user": "u", "item": "a", "ts": 1}\n{"user": "u", "item": "a", "ts": "later"}\n',
                           ":2: timestamp 'later' is not a number"),
    }
    for name, (text, expected) in cases.items():
        (tmp_path / name).write_text(text)
        assert expected in error(columnar.read_log, tmp_path / name), name


def test_parquet_wrong_types_missing_columns_and_corrupt_files(tmp_path):
    good = [{"user": "u", "item": "a", "timestamp": 1}]
    path = write_parquet(tmp_path / "float_user.parquet", [{"user": 1.5, "item": "a", "timestamp": 1}])
    assert error(columnar.read_log, path) == f"{path}: column 'user' has type double; expected strings or integers"
    path = write_parquet(tmp_path / "list_item.parquet", [{"user": "u", "item": ["a"], "timestamp": 1}])
    assert "column 'item' has type list" in error(columnar.read_log, path)
    path = write_parquet(tmp_path / "str_time.parquet", [{"user": "u", "item": "a", "timestamp": "1"}])
    assert "column 'timestamp' has type string; expected numbers" in error(columnar.read_log, path)
    path = write_parquet(tmp_path / "no_user.parquet", good, fields=("item", "timestamp"))
    assert error(columnar.read_log, path) == f"{path}: no 'user' column (columns: 'item', 'timestamp')"
    path = write_parquet(tmp_path / "null_item.parquet", good * 3 + [{"user": "u", "item": None, "timestamp": 2}])
    assert error(columnar.read_log, path) == f"{path}: row 4: missing 'item'"
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1" + bytes(range(256)) * 4 + b"PAR1")
    assert error(columnar.read_log, corrupt).startswith(f"{corrupt}: not a readable Parquet file (")
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(write_parquet(tmp_path / "whole.parquet", good * 100).read_bytes()[:-30])
    assert error(columnar.read_log, truncated).startswith(f"{truncated}: not a readable Parquet file")
    folder = write_hive(tmp_path / "hive", good * 6, parts=2)
    (folder / "chunk=01" / "part-9.parquet").write_bytes(b"garbage")
    assert error(columnar.read_log, folder).startswith(f"{folder / 'chunk=01' / 'part-9.parquet'}: not a readable")
    (tmp_path / "empty_dir").mkdir()
    assert "no .parquet files" in error(columnar.read_log, tmp_path / "empty_dir")
    assert "data not found" in error(columnar.read_log, tmp_path / "nowhere.parquet")
    (tmp_path / "data.txt").write_text("user,item\n")
    assert "unknown data format" in error(columnar.read_log, tmp_path / "data.txt")


def test_parquet_timestamp_types(tmp_path):
    rows = [{"user": "u", "item": f"i{j}", "timestamp": j % 3} for j in range(6)]
    base = columnar.sequences(columnar.read_log(write_parquet(tmp_path / "n.parquet", rows)))
    stamped = write_parquet(tmp_path / "t.parquet", [{**r, "timestamp": r["timestamp"] * 10**6} for r in rows],
                            timestamp=pa.timestamp("us"))
    seq = columnar.sequences(columnar.read_log(stamped))
    assert np.array_equal(seq.items, base.items) and np.array_equal(seq.timestamps, base.timestamps)


def test_k_core_leaves_nothing(tmp_path):
    path = write_csv(tmp_path / "tiny.csv", [{"user": "u", "item": "i", "timestamp": 1}] * 2)
    assert error(dataset.read_interactions, path) == error(reference_reader.read_interactions, path)
    kept, report = columnar.k_core(columnar.read_log(path), 5)
    assert len(kept) == 0 and report["interactions_dropped"] == 2


def test_random_logs_match_the_row_reader(tmp_path):
    """Many small random logs (ties, duplicates, sparse users/items, time present or not, min_count 1..6):
    the same Dataset, or the same error, as the row reader."""
    rng = np.random.default_rng(8)
    for case in range(40):
        n = int(rng.integers(1, 400))
        timed = case % 4 != 0
        users = rng.integers(0, int(rng.integers(1, 40)), n)
        items = rng.integers(0, int(rng.integers(1, 60)), n) ** 2
        stamps = rng.integers(0, int(rng.integers(1, 30)), n)
        rows = [{"user": f"u{u}", "item": str(i), "timestamp": int(t) if timed else ""}
                for u, i, t in zip(users, items, stamps)]
        path = write_csv(tmp_path / f"random{case}.csv", rows)
        min_count = int(rng.integers(1, 7))
        try:
            old = reference_reader.read_interactions(path, min_count=min_count)
        except FmrlError as e:
            assert error(dataset.read_interactions, path, min_count=min_count) == str(e)
            continue
        assert_same(old, dataset.read_interactions(path, min_count=min_count))
