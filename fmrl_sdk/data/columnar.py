"""Columnar interaction reader: CSV, JSONL and Parquet logs into numpy arrays, built on pyarrow.

The vectorised counterpart of `dataset.read_interactions` (which reads rows into Python tuples). It gives
the same item ids, user ids, sequences and report, on files of tens of millions of rows:

    log = read_log(path)                      # codes + ids + timestamps, every row of the file
    kept, k_report = k_core(log, min_count)   # row indices of the k-core, dataset._k_core's report
    seq = sequences(log, kept)                # item_ids, user_ids, flat items, offsets, flat timestamps
    ties(seq)                                 # dataset._ties's report (None without timestamps)

dataset.read_interactions puts these together into a Dataset (leave-one-out or a time split).

Semantics (as the row-by-row reader, tests/reference_reader.py):
- Columns `user`, `item` and `timestamp` (or `ts` when there is no `timestamp`). Ids are strings or
  integers and become their string form: the CSV field as written, str(int) for JSON/Parquet integers.
- Rows are ordered per user by (timestamp, file order). A file without timestamps (no such column, or every
  value empty) uses file order.
- Item ids are sorted as strings; users come in the order of their ids sorted as strings.
- Parquet: one file, or a directory of .parquet files (hive partitions `dir/k=v/part.parquet` included;
  a `user`/`item`/`timestamp` partition key supplies that column). File order there is the files' relative
  paths sorted as strings, then row order within each file. Parquet timestamps may be numbers, or
  timestamp/date columns (seconds since the epoch).
- Bad input raises FmrlError with one line "FILE[:LINE]: what is wrong" (CSV line numbers count records as
  the old reader did; JSONL line numbers are physical lines; Parquet names the file and its row).

CSV and JSONL are parsed by pyarrow; a file pyarrow's parser rejects (rows with a different number of fields,
mixed-type JSON columns, an id or timestamp that needs Python's parsing, a duplicated header name, a record
longer than CSV_BLOCK_BYTES, ...) is read again row by row, so that it gives the same result or the same error.

The rules, the same on both paths and in every format (the first broken one, in file order, is the error;
within a row: user, item, timestamp):
- ids: the rule of fmrl_sdk/ids.py (a string or an integer, counted by its digits; no NUL; at most
  ids.MAX_ID_BYTES bytes); an empty or absent id is "missing 'user'"; a JSON string with an unpaired
  surrogate escape ("\\ud800") is not text and is refused.
- timestamps: finite numbers. "timestamp nan is not a number", "timestamp inf is not a finite number" (also
  1e400, and a JSON integer too large for a float). When some rows have one, every row needs one (the old
  reader silently mixed timestamps with row numbers).
- text and sizes: the rules of textfiles.py (the whole file UTF-8; a CSV field at most MAX_CSV_FIELD_CHARS
  characters) and jsonio.py (a JSONL line at most MAX_JSONL_LINE_BYTES bytes). pyarrow's path reads only
  records shorter than its block (CSV_BLOCK_BYTES, far below the limit) and leaves longer ones to the
  row-by-row path, so a long value in a column nobody reads (a review text) is read, or refused, alike.
- CSV rows: each has the header's number of fields ("FILE:LINE: 4 fields, the header has 3"; an unclosed quote,
  which swallows the rest of the file into one field, shows as too few).
- JSONL duplicate keys: a repeated `user`, `item`, `timestamp` or `ts` key is refused. A repeated key the
  reader does not read ("x": 1, "x": 2) is refused only when the file is read row by row (jsonio's rule):
  pyarrow's parser skips such keys, and checking every line in Python would cost pyarrow's path its speed.

pyarrow's path checks the distinct ids (after _encode) and the timestamp array, not each row, then looks for
the first row holding a bad value: cheap on tens of millions of rows.
"""

from __future__ import annotations

import csv
import math
import mmap
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple
from urllib.parse import unquote

import numpy as np

from ..errors import FmrlError
from ..ids import MAX_ID_BYTES, id_problem, id_text, text_id_problem
from ..jsonio import read_jsonl_objects
from .textfiles import csv_field_limit, csv_problem, quoted_names, require_utf8

ID_COLUMNS = ("user", "item")
TIME_COLUMNS = ("timestamp", "ts")
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
CSV_BLOCK_BYTES = 1 << 20                  # pyarrow's CSV block: a longer record is read row by row


@dataclass
class Log:
    """Every row of an interactions file, as codes.

    user_codes / item_codes: int32 [rows], indices into user_ids / item_ids.
    user_ids / item_ids: the external ids (strings), each sorted as strings, so codes order like the ids.
    timestamps: float64 [rows], or None when the file has no timestamps (rows are then in file order).
    raw: {"users", "items", "interactions"} of the whole file (the report's "raw" counts).
    """

    source: str
    user_codes: np.ndarray
    item_codes: np.ndarray
    user_ids: list[str]
    item_ids: list[str]
    timestamps: np.ndarray | None
    raw: dict = field(default_factory=dict)

    @property
    def has_time(self) -> bool:
        return self.timestamps is not None

    @property
    def rows(self) -> int:
        return len(self.user_codes)


class Sequences(NamedTuple):
    """Users' item sequences, flat: user j's items are items[offsets[j]:offsets[j + 1]] in time order.

    items are internal indices 1..len(item_ids) (item_ids[i - 1] is item i, 0 stays padding), int64.
    timestamps: float64 [events] in the same order, or None when the file has none.
    """

    item_ids: list[str]
    user_ids: list[str]
    items: np.ndarray
    offsets: np.ndarray
    timestamps: np.ndarray | None

    def per_user(self) -> list[np.ndarray]:
        """One int64 array per user (views into `items`), as Dataset.sequences."""
        return np.split(self.items, self.offsets[1:-1]) if len(self.user_ids) else []


# ----------------------------------------------------------------------------------------------
# Public API


def read_log(path: str | Path) -> Log:
    """Read a CSV, JSONL or Parquet interactions file (or a directory of Parquet files) into a Log."""
    path = Path(path)
    if not path.exists():
        raise FmrlError(f"{path}: data not found")
    if path.is_dir():
        kind = "parquet"
    else:
        kind = FORMATS.get(path.suffix.lower())
        if kind is None:
            raise FmrlError(f"{path}: unknown data format (expected .csv, .jsonl, .parquet or a folder of .parquet)")
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise FmrlError(f"{path}: reading interactions needs pyarrow (pip install pyarrow)") from None
    if kind != "parquet":
        try:
            require_utf8(path)
        except OSError as e:
            raise FmrlError(f"{path}: cannot read ({e.strerror or _one_line(e)})") from None
    reader = {"csv": _read_csv, "jsonl": _read_jsonl, "parquet": _read_parquet}[kind]
    user_codes, user_ids, item_codes, item_ids, timestamps = reader(path)
    _release_arrow_memory()
    if len(user_codes) == 0:
        raise FmrlError(f"{path}: no interactions")
    return Log(source=str(path.resolve()), user_codes=user_codes, item_codes=item_codes, user_ids=user_ids,
               item_ids=item_ids, timestamps=timestamps,
               raw={"users": len(user_ids), "items": len(item_ids), "interactions": int(len(user_codes))})


def k_core(log: Log, min_count: int) -> tuple[np.ndarray, dict]:
    """Row indices (int64, ascending = file order) of the min_count-core, and dataset._k_core's report.

    Every user and item keeps at least min_count rows; repeated until stable. The report counts users/items
    below min_count in the file itself ("direct") and those that fell below only after other rows went
    ("cascade").
    """
    k = min_count
    n_users, n_items = len(log.user_ids), len(log.item_ids)
    users, items = log.user_codes, log.item_codes
    user_counts = np.bincount(users, minlength=n_users)
    item_counts = np.bincount(items, minlength=n_items)
    direct_users, direct_items = int((user_counts < k).sum()), int((item_counts < k).sum())
    kept: np.ndarray | None = None
    rounds = 0
    while True:
        user_ok, item_ok = user_counts >= k, item_counts >= k
        if user_ok[user_counts > 0].all() and item_ok[item_counts > 0].all():
            break   # every row left has both counts >= k: stable
        keep = user_ok[users] & item_ok[items]
        kept = np.flatnonzero(keep) if kept is None else kept[keep]
        users, items = users[keep], items[keep]
        rounds += 1
        user_counts = np.bincount(users, minlength=n_users)
        item_counts = np.bincount(items, minlength=n_items)
        del keep
    if kept is None:
        kept = np.arange(log.rows, dtype=np.int64)
    users_left, items_left = int(np.count_nonzero(user_counts)), int(np.count_nonzero(item_counts))
    return kept.astype(np.int64, copy=False), {
        "min_count": k, "rounds": rounds, "interactions_dropped": log.rows - len(kept),
        "users_dropped": n_users - users_left, "items_dropped": n_items - items_left,
        "users_below_k": direct_users, "items_below_k": direct_items,
        "users_cascade": n_users - users_left - direct_users, "items_cascade": n_items - items_left - direct_items}


def sequences(log: Log, kept: np.ndarray | None = None) -> Sequences:
    """The kept rows (indices in ascending file order, or a boolean mask; None = all) as per-user sequences.

    item_ids: the kept items sorted as strings; user_ids: the kept users sorted as strings (the order the old
    reader produces); items ordered per user by (timestamp, file order).
    """
    if kept is None:
        users, items, times = log.user_codes, log.item_codes, log.timestamps
    else:
        kept = np.asarray(kept)
        if kept.dtype == bool:
            kept = np.flatnonzero(kept)
        users, items = log.user_codes[kept], log.item_codes[kept]
        times = None if log.timestamps is None else log.timestamps[kept]
    counts = np.bincount(users, minlength=len(log.user_ids))
    user_ids = [log.user_ids[j] for j in np.flatnonzero(counts)] if not counts.all() else list(log.user_ids)
    item_map, item_ids = _compact(items, log.item_ids)
    order = _user_time_order(users, len(log.user_ids), times)
    flat = (item_map + 1)[items[order]]   # internal indices 1..N, int64
    offsets = np.zeros(len(user_ids) + 1, dtype=np.int64)
    np.cumsum(counts[counts > 0], out=offsets[1:])
    return Sequences(item_ids, user_ids, flat, offsets, None if times is None else times[order])


def restrict(log: Log, rows: np.ndarray) -> Log:
    """The rows at `rows` (indices in ascending file order) as a log of their own: only the users and items
    that occur in them (codes renumbered, order kept), raw counts of these rows (what k_core reports on)."""
    users, items = log.user_codes[rows], log.item_codes[rows]
    user_map, user_ids = _compact(users, log.user_ids)
    item_map, item_ids = _compact(items, log.item_ids)
    return Log(log.source, user_map[users].astype(np.int32), item_map[items].astype(np.int32), user_ids, item_ids,
               None if log.timestamps is None else log.timestamps[rows],
               raw={"users": len(user_ids), "items": len(item_ids), "interactions": int(len(rows))})


def _user_time_order(users: np.ndarray, n_users: int, times: np.ndarray | None) -> np.ndarray:
    """Row order by (user, time, row): a stable sort by time (a no-op for a file in time order), then one
    sort of the unique int64 keys user * rows + position, about twice as fast as np.lexsort."""
    n = len(users)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if n_users * n >= 2**62:
        return np.lexsort((times, users)) if times is not None else np.argsort(users, kind="stable")
    by_time = None
    if times is not None and not (times[1:] >= times[:-1]).all():
        by_time = np.argsort(times, kind="stable")
        users = users[by_time]
    key = users.astype(np.int64) * n
    key += np.arange(n, dtype=np.int64)
    key.sort()
    key %= n
    return key if by_time is None else by_time[key]


def ties(seq: Sequences) -> dict | None:
    """dataset._ties: users whose test (last) or validation (second to last) event shares its timestamp with
    the event before it, and users with any tie. None when there are no timestamps."""
    if seq.timestamps is None:
        return None
    t, offsets = seq.timestamps, seq.offsets
    lengths = np.diff(offsets)
    ends = offsets[1:]
    two, three = lengths >= 2, lengths >= 3
    test = int(np.count_nonzero(t[ends[two] - 1] == t[ends[two] - 2]))
    val = int(np.count_nonzero(t[ends[three] - 2] == t[ends[three] - 3]))
    owner = np.repeat(np.arange(len(lengths)), lengths)
    tied = (t[1:] == t[:-1]) & (owner[1:] == owner[:-1])
    any_tie = int(len(np.unique(owner[1:][tied])))
    return {"users": len(lengths), "test_target_tied": test, "val_target_tied": val, "users_with_any_tie": any_tie}


def _release_arrow_memory() -> None:
    """Hand the memory pyarrow's allocator kept from the parsed file back to the system, so that the numpy work
    after reading does not stack on top of it (about 40% of the 5M-row CSV peak)."""
    import pyarrow as pa

    try:
        pa.default_memory_pool().release_unused()
    except (AttributeError, NotImplementedError):   # older pyarrow
        pass


def _one_line(error: BaseException, limit: int = 300) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _missing(where: str, key: str) -> FmrlError:
    return FmrlError(f"{where}: missing '{key}'")


def _time_problem(value: float) -> str | None:
    """What is wrong with a timestamp (as a float), or None: NaN, or not finite (inf, -inf)."""
    if math.isnan(value):
        return "timestamp nan is not a number"
    if math.isinf(value):
        return f"timestamp {value} is not a finite number"
    return None


def _untimed(where: str) -> FmrlError:
    return FmrlError(f"{where}: no timestamp, but other rows have one (give every row a timestamp, or none)")


def _compact(codes: np.ndarray, ids: list[str]) -> tuple[np.ndarray, list[str]]:
    """(old code -> new code, ids still used) for the codes present in `codes`; order is kept."""
    used = np.bincount(codes, minlength=len(ids)) > 0
    mapping = np.cumsum(used, dtype=np.int64) - 1
    if used.all():
        return mapping, list(ids)
    return mapping, [ids[j] for j in np.flatnonzero(used)]


def _encode(parts: list) -> tuple[np.ndarray, list[str]]:
    """(int32 codes, ids sorted as strings) of the concatenated pyarrow columns `parts` (strings or integers,
    or dictionaries of them; nulls checked by the caller). Hashes each part, then sorts only the distinct ids."""
    import pyarrow as pa
    import pyarrow.compute as pc

    dictionaries, encoded = [], []
    all_used = True   # dictionary_encode's dictionary holds only values some row has; a file's may not
    for column in parts:
        if isinstance(column, pa.Array):
            column = pa.chunked_array([column])
        if pa.types.is_dictionary(column.type):
            column, all_used = column.unify_dictionaries(), False
        else:
            column = column.dictionary_encode()
        chunks = [c for c in column.chunks if len(c)]
        if not chunks:
            continue
        dictionary = chunks[0].dictionary
        if not pa.types.is_string(dictionary.type):
            dictionary = pc.cast(dictionary, pa.string())
        dictionaries.append(dictionary)
        encoded.append(chunks)
    if not dictionaries:
        return np.zeros(0, dtype=np.int32), []
    if len(dictionaries) == 1:
        values = dictionaries[0]
        sort = pc.sort_indices(values)
        ids = values.take(sort)
        order = _numpy(sort)
        rank = np.empty(len(order), dtype=np.int32)
        rank[order] = np.arange(len(order), dtype=np.int32)
        ranks = [rank]
    else:
        distinct = pc.unique(pa.concat_arrays(dictionaries))
        ids = distinct.take(pc.sort_indices(distinct))
        ranks = [_numpy(pc.index_in(d, value_set=ids)).astype(np.int32) for d in dictionaries]
    del dictionaries
    codes = np.empty(sum(len(c) for chunks in encoded for c in chunks), dtype=np.int32)
    start = 0
    for rank, chunks in zip(ranks, encoded):   # chunk by chunk: no concatenated copy of the indices
        for chunk in chunks:
            np.take(rank, _numpy(chunk.indices), out=codes[start:start + len(chunk)], mode="clip")   # (unbuffered)
            start += len(chunk)
    del encoded
    ids = ids.to_pylist()
    if not all_used:
        mapping, ids = _compact(codes, ids)
        if len(ids) != len(mapping):
            codes = mapping.astype(np.int32)[codes]
    return codes, ids


_NUMPY_TYPES = {"int8": np.int8, "int16": np.int16, "int32": np.int32, "int64": np.int64, "uint8": np.uint8,
                "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64, "float": np.float32,
                "double": np.float64}


def _numpy(data) -> np.ndarray:
    """A pyarrow numeric array (or chunked array) without nulls as numpy: a read-only view of one chunk, else a
    new array. Not pyarrow's to_numpy(), whose first call imports pandas (0.3 s)."""
    import pyarrow as pa

    if isinstance(data, pa.ChunkedArray):
        if data.num_chunks == 1:
            return _numpy(data.chunk(0))
        dtype = _NUMPY_TYPES.get(str(data.type))
        if dtype is None or data.null_count:
            return data.to_numpy()
        return np.concatenate([_numpy(c) for c in data.chunks]) if data.num_chunks else np.zeros(0, dtype)
    dtype = _NUMPY_TYPES.get(str(data.type))
    if dtype is None or data.null_count:
        return data.to_numpy(zero_copy_only=False)
    dtype = np.dtype(dtype)
    return np.frombuffer(data.buffers()[1], dtype=dtype, count=len(data), offset=data.offset * dtype.itemsize)


def _first_index(mask) -> int | None:
    """Position of the first True of a numpy bool array or pyarrow boolean (chunked) array, or None."""
    if isinstance(mask, np.ndarray):
        hits = np.flatnonzero(mask)
        return int(hits[0]) if len(hits) else None
    import pyarrow.compute as pc

    found = pc.index(mask, True).as_py()
    return None if found is None or found < 0 else int(found)


def _id_error(codes: np.ndarray, ids: list[str], key: str) -> tuple[int, str] | None:
    """(row, message) of the first row whose `key` id is empty ("missing") or breaks the id rule
    (ids.text_id_problem), or None. The rule runs on the distinct ids, and only when a one-pass screen of them
    finds a NUL or an id long enough (over MAX_ID_BYTES // 4 characters) to be over MAX_ID_BYTES bytes: cheap
    on any number of rows and ids."""
    bad = np.zeros(len(ids), dtype=bool)
    bad[:1] = ids[:1] == [""]   # "" sorts first
    if max(map(len, ids), default=0) > MAX_ID_BYTES // 4 or "\0" in "".join(ids):
        bad |= np.fromiter((text_id_problem(text) is not None for text in ids), dtype=bool, count=len(ids))
    if not bad.any():
        return None
    row = _first_index(bad[codes])
    text = ids[codes[row]]
    return row, f"missing '{key}'" if text == "" else f"'{key}' {text_id_problem(text)}"


def _times(column) -> tuple[np.ndarray | None, int | None, tuple[int, str] | None]:
    """(float64 timestamps or None when all are missing, first row without one, (row, message) of the first
    timestamp that is not a finite number or None) of a float64 pyarrow (chunked) array."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(column)
    if column.null_count == n:
        return None, None, None
    first_null = None
    if column.null_count:
        first_null = _first_index(pc.is_null(column))
        column = pc.fill_null(column, pa.scalar(0.0))
    values = _numpy(column)
    if not values.flags.writeable:   # a view of pyarrow's buffer: the Log gets its own array
        values = values.copy()
    finite = np.isfinite(values)
    if finite.all():
        return values, first_null, None
    row = int(np.argmin(finite))
    return values, first_null, (row, _time_problem(float(values[row])))


# ----------------------------------------------------------------------------------------------
# CSV


def _csv_header(path: Path) -> list[str]:
    """The header row as csv.DictReader reads it (first record, BOM removed)."""
    try:
        with csv_field_limit(), open(path, newline="", encoding="utf-8-sig") as f:
            return next(csv.reader(f), [])
    except csv.Error as e:
        raise FmrlError(f"{path}:1: {csv_problem(e)}") from None


def _read_csv(path: Path):
    import pyarrow as pa
    import pyarrow.csv as pcsv

    header = _csv_header(path)
    fields = set(header)
    if not {"user", "item"} <= fields:
        raise FmrlError(f"{path}:1: CSV header needs 'user' and 'item' columns (got {sorted(fields)})")
    if len(fields) != len(header):   # a repeated column name: the row-by-row reader keeps the last one
        return _from_rows(path, _csv_rows(path))
    time_name = next((c for c in TIME_COLUMNS if c in fields), None)
    names = ["user", "item"] + ([time_name] if time_name else [])
    types = {"user": pa.string(), "item": pa.string()}   # then hashed: faster than dictionary columns
    if time_name:
        types[time_name] = pa.float64()
    try:
        table = pcsv.read_csv(
            path, read_options=pcsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
            parse_options=pcsv.ParseOptions(newlines_in_values=True),
            convert_options=pcsv.ConvertOptions(include_columns=names, column_types=types, null_values=[""],
                                                strings_can_be_null=False, quoted_strings_can_be_null=True))
    except (pa.ArrowInvalid, pa.ArrowKeyError, pa.ArrowTypeError, pa.ArrowNotImplementedError, ValueError):
        # rows with another number of fields, a timestamp only Python parses ("1_000"), bad UTF-8, ...
        return _from_rows(path, _csv_rows(path))
    user_codes, user_ids = _encode([table.column("user")])
    item_codes, item_ids = _encode([table.column("item")])
    errors = [_id_error(user_codes, user_ids, "user"), _id_error(item_codes, item_ids, "item")]
    times = first_untimed = None
    if time_name:
        times, first_untimed, time_error = _times(table.column(time_name))
        errors.append(time_error)
    del table
    _raise_first(errors, first_untimed, lambda row: f"{path}:{row + 2}")
    return user_codes, user_ids, item_codes, item_ids, times


def _raise_first(errors: list[tuple[int, str] | None], first_untimed: int | None, where) -> None:
    """Raise the error (row, message) of the earliest row (the row-by-row reader's order: errors holds the user's,
    the item's and the timestamp's, in that order), then the rule that every row or none has a timestamp.
    where(row) -> 'FILE:LINE' for a 0-based row."""
    found = [(error[0], rank, error[1]) for rank, error in enumerate(errors) if error is not None]
    if found:
        row, _, message = min(found)
        raise FmrlError(f"{where(row)}: {message}")
    if first_untimed is not None:
        raise _untimed(where(first_untimed))


# ----------------------------------------------------------------------------------------------
# Row by row (the old reader's rules): CSV/JSONL files pyarrow's parser does not take


def _row(path: Path, lineno: int, rec: dict, typed: bool) -> tuple[str, str, float | None]:
    """(user, item, timestamp or None) of one record. typed: JSON values (ids must be strings or integers);
    else CSV fields (strings)."""
    where = f"{path}:{lineno}"
    ids = []
    for key in ID_COLUMNS:
        value = rec.get(key)
        if value in (None, ""):
            raise _missing(where, key)
        problem = id_problem(value) if typed else text_id_problem(value)
        if problem:
            raise FmrlError(f"{where}: '{key}' {problem}")
        ids.append(id_text(value))
    ts = rec.get("timestamp", rec.get("ts"))
    if ts in (None, ""):
        return ids[0], ids[1], None
    value = _number(ts)
    if value is None:
        raise FmrlError(f"{where}: timestamp {_short_repr(ts)} is not a number")
    problem = _time_problem(value)
    if problem:
        raise FmrlError(f"{where}: {problem}")
    return ids[0], ids[1], value


def _number(value) -> float | None:
    """A timestamp field as a float (an integer too large for one is inf or -inf), or None for what is not a
    number (text float() does not take, a bool, a list, ...)."""
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf
    except (TypeError, ValueError):
        return None


def _short_repr(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _csv_rows(path: Path):
    lineno = 1
    try:
        with csv_field_limit(), open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = set(reader.fieldnames or [])
            if not {"user", "item"} <= fields:
                raise FmrlError(f"{path}:1: CSV header needs 'user' and 'item' columns (got {sorted(fields)})")
            for lineno, rec in enumerate(reader, 2):
                if None in rec or None in rec.values():   # more fields than the header (under None), or fewer
                    count = len(rec) - 1 + len(rec[None]) if None in rec else sum(v is not None for v in rec.values())
                    raise FmrlError(f"{path}:{lineno}: {count} fields, the header has {len(reader.fieldnames)}")
                yield lineno, _row(path, lineno, rec, typed=False)
    except csv.Error as e:
        raise FmrlError(f"{path}:{lineno + 1}: {csv_problem(e)}") from None


def _jsonl_rows(path: Path):
    for lineno, rec in read_jsonl_objects(path):
        yield lineno, _row(path, lineno, rec, typed=True)


def _from_rows(path: Path, rows):
    """Codes/ids/timestamps from (lineno, (user, item, ts)) records, with the every-row-or-none rule."""
    import pyarrow as pa

    users, items, times = [], [], []
    first_untimed = None
    for lineno, (user, item, ts) in rows:
        users.append(user)
        items.append(item)
        times.append(ts)
        if ts is None and first_untimed is None:
            first_untimed = lineno
    if not users:
        raise FmrlError(f"{path}: no interactions")
    timed = first_untimed is None
    if not timed and any(t is not None for t in times):
        raise _untimed(f"{path}:{first_untimed}")
    user_codes, user_ids = _encode([pa.array(users, pa.string())])
    del users
    item_codes, item_ids = _encode([pa.array(items, pa.string())])
    del items
    stamps = np.asarray(times, dtype=np.float64) if timed else None
    return user_codes, user_ids, item_codes, item_ids, stamps


# ----------------------------------------------------------------------------------------------
# JSONL


def _json_type(value, number):
    import pyarrow as pa

    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        return pa.string()
    if isinstance(value, int) and -2**63 <= value < 2**63:
        return number
    if isinstance(value, float):
        return pa.float64() if number == pa.float64() else None
    return None


def _read_jsonl(path: Path):
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.json as pj

    records = read_jsonl_objects(path)
    try:
        first = next(records, None)
    finally:
        records.close()
    if first is None:
        raise FmrlError(f"{path}: no interactions")
    first = first[1]
    schema = []
    for key in ID_COLUMNS:
        schema.append((key, _json_type(first.get(key), pa.int64())))
    for key in TIME_COLUMNS:
        value = first.get(key)
        schema.append((key, pa.float64() if value is None else _json_type(value, pa.float64())))
    if any(t is None for _, t in schema):   # a type pyarrow cannot hold as we need: the row reader decides
        return _from_rows(path, _jsonl_rows(path))
    try:
        table = pj.read_json(path, parse_options=pj.ParseOptions(explicit_schema=pa.schema(schema),
                                                                 unexpected_field_behavior="ignore"))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
        return _from_rows(path, _jsonl_rows(path))
    user, item = table.column("user"), table.column("item")
    if user.null_count or item.null_count:
        return _from_rows(path, _jsonl_rows(path))   # raises "missing" with the line number
    stamp, short = table.column("timestamp"), table.column("ts")
    if short.null_count == len(short) or stamp.null_count == 0:
        times = stamp
    elif stamp.null_count == len(stamp) and not _mentions(path, b'"timestamp"'):
        times = short
    else:   # "timestamp": null next to "ts": the row reader knows which key a row has
        return _from_rows(path, _jsonl_rows(path))
    if pa.types.is_string(times.type):
        try:
            times = pc.cast(times, pa.float64())
        except (pa.ArrowInvalid, ValueError):
            return _from_rows(path, _jsonl_rows(path))
    del table
    times, first_untimed, time_error = _times(times)
    user_codes, user_ids = _encode([user])
    item_codes, item_ids = _encode([item])
    if first_untimed is not None or time_error or _id_error(user_codes, user_ids, "user") \
            or _id_error(item_codes, item_ids, "item"):
        return _from_rows(path, _jsonl_rows(path))   # raises with the line number
    return user_codes, user_ids, item_codes, item_ids, times


def _mentions(path: Path, needle: bytes) -> bool:
    with open(path, "rb") as f:
        try:
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                return m.find(needle) >= 0
        except ValueError:   # empty file
            return False


# ----------------------------------------------------------------------------------------------
# Parquet


def _parquet_files(path: Path) -> list[tuple[Path, dict[str, str]]]:
    """(file, hive partition values) in file order: relative paths sorted; hidden and _-prefixed parts skipped."""
    if path.is_file():
        return [(path, {})]
    found = []
    for file in path.rglob("*"):
        rel = file.relative_to(path)
        if file.suffix.lower() not in (".parquet", ".pq") or not file.is_file() \
                or any(part.startswith((".", "_")) for part in rel.parts):
            continue
        values = dict(unquote(p).split("=", 1) for p in rel.parts[:-1] if "=" in p)
        found.append((rel.as_posix(), file, values))
    if not found:
        raise FmrlError(f"{path}: no .parquet files in this folder")
    return [(file, values) for _, file, values in sorted(found, key=lambda f: f[0])]


def _id_type_ok(t) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t) \
        or (hasattr(pa.types, "is_string_view") and pa.types.is_string_view(t))


def _seconds(column, file: Path, name: str):
    """A Parquet timestamp column as float64 (chunked); FmrlError for a type that is not a time or number."""
    import pyarrow as pa
    import pyarrow.compute as pc

    t = column.type
    if pa.types.is_dictionary(t):
        column, t = column.cast(t.value_type), t.value_type
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t) or pa.types.is_null(t):
        return pc.cast(column, pa.float64(), safe=False)
    if pa.types.is_timestamp(t):
        scale = {"s": 1, "ms": 1e3, "us": 1e6, "ns": 1e9}[t.unit]
        return pc.divide(pc.cast(pc.cast(column, pa.int64()), pa.float64()), scale)   # UTC, whatever the tz
    if pa.types.is_date(t):
        days = pc.cast(pc.cast(column, pa.date32()), pa.int32()).cast(pa.float64())
        return pc.multiply(days, 86400.0)
    raise FmrlError(f"{file}: column '{name}' has type {t}; expected numbers (or a timestamp/date)")


def _read_parquet(path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    users, items, stamps, sizes, files = [], [], [], [], []
    for file, partition in _parquet_files(path):
        try:   # (pq.ParquetFile, not pq.read_table: that imports pandas, 0.3 s)
            with pq.ParquetFile(file) as opened:
                schema = opened.schema_arrow
        except (pa.ArrowException, OSError) as e:
            raise FmrlError(f"{file}: not a readable Parquet file ({_one_line(e)})") from None
        except UnicodeDecodeError:   # a column name that is not UTF-8
            raise FmrlError(f"{file}: not a readable Parquet file (a column name is not UTF-8 text)") from None
        names = set(schema.names)
        for key in (*ID_COLUMNS, *TIME_COLUMNS):
            if len(schema.get_all_field_indices(key)) > 1:
                raise FmrlError(f"{file}: column '{key}' appears more than once")
        for key in ID_COLUMNS:
            if key not in names and key not in partition:
                raise FmrlError(f"{file}: no '{key}' column (columns: {quoted_names(schema.names)})")
            if key in names and not _id_type_ok(schema.field(key).type):
                raise FmrlError(f"{file}: column '{key}' has type {schema.field(key).type}; "
                                "expected strings or integers")
        time_name = next((c for c in TIME_COLUMNS if c in names or c in partition), None)
        columns = [c for c in ("user", "item", time_name) if c in names]
        strings = [c for c in columns if c in ID_COLUMNS   # read as dictionaries: already half encoded
                   and (pa.types.is_string(schema.field(c).type) or pa.types.is_large_string(schema.field(c).type))]
        try:
            with pq.ParquetFile(file, read_dictionary=strings or None) as opened:
                table = opened.read(columns=columns)
        except (pa.ArrowException, OSError) as e:
            raise FmrlError(f"{file}: not a readable Parquet file ({_one_line(e)})") from None
        n = table.num_rows
        for key in ("user", "item", time_name):
            if key is not None and key not in names:   # a hive partition key: one value for the whole file
                value = partition[key]
                if key in ID_COLUMNS:
                    column = pa.chunked_array([pa.DictionaryArray.from_arrays(
                        pa.array(np.zeros(n, dtype=np.int32)), pa.array([value]))])
                else:
                    try:
                        column = pa.chunked_array([pa.array(np.full(n, float(value)))])
                    except ValueError:
                        raise FmrlError(f"{file}: partition {key}={value!r} is not a number") from None
                table = table.append_column(key, column)
        for key in ID_COLUMNS:
            column = table.column(key)
            if column.null_count:
                raise _missing(f"{file}: row {_first_index(column.is_null()) + 1}", key)
        users.append(table.column("user"))
        items.append(table.column("item"))
        stamps.append(_seconds(table.column(time_name), file, time_name) if time_name
                      else pa.chunked_array([pa.nulls(n, pa.float64())]))
        sizes.append(n)
        files.append(file)
        del table
    offsets = np.concatenate([[0], np.cumsum(sizes)])

    def where(row: int) -> str:
        part = int(np.searchsorted(offsets, row, side="right")) - 1
        return f"{files[part]}: row {row - offsets[part] + 1}"

    user_codes, user_ids = _encode(users)
    del users
    item_codes, item_ids = _encode(items)
    del items
    times, first_untimed, time_error = _times(pa.chunked_array([c for s in stamps for c in s.chunks],
                                                               type=pa.float64()))
    errors = [_id_error(user_codes, user_ids, "user"), _id_error(item_codes, item_ids, "item"), time_error]
    _raise_first(errors, first_untimed, where)
    return user_codes, user_ids, item_codes, item_ids, times
