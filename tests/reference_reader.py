"""The straightforward interaction reader, the yardstick of fmrl_sdk/data/columnar.py: one Python tuple
per row, the k-core by repeated counting, sequences by sorting rows. The SDK reads with the columnar
reader; tests/test_columnar.py holds the two equal (ids, sequences, reports, or error messages) on every case
it builds.

The same rules as the columnar reader's module docstring lists, checked row by row: the whole file UTF-8,
CSV fields of at most FIELD_LIMIT characters, ids by fmrl_sdk/ids.py (and no unpaired surrogate escape),
finite timestamps, every row or none with a timestamp."""

from __future__ import annotations

import csv
import math
from collections import Counter
from pathlib import Path

import numpy as np

from fmrl_sdk.data.dataset import Dataset
from fmrl_sdk.errors import FmrlError
from fmrl_sdk.ids import id_problem, id_text, text_id_problem
from fmrl_sdk.jsonio import MAX_JSONL_LINE_BYTES, read_jsonl_objects

Row = tuple  # (user, item, timestamp, file order, has a timestamp)
FIELD_LIMIT = MAX_JSONL_LINE_BYTES   # characters in one CSV field


def read_interaction_rows(path: Path) -> list[Row]:
    """CSV (header with user,item[,timestamp]) or JSONL ({"user", "item", "timestamp"|"ts"}) rows, file order."""
    _check_utf8(path)
    rows: list[Row] = []
    untimed = None   # line of the first row without a timestamp
    for lineno, rec, typed in _csv_records(path) if path.suffix.lower() == ".csv" else _jsonl_records(path):
        rows.append(_interaction(path, lineno, rec, len(rows), typed))
        if not rows[-1][4] and untimed is None:
            untimed = lineno
    if not rows:
        raise FmrlError(f"{path}: no interactions")
    if untimed is not None and any(r[4] for r in rows):
        raise FmrlError(f"{path}:{untimed}: no timestamp, but other rows have one (give every row a timestamp, or none)")
    return rows


def _check_utf8(path: Path) -> None:
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise FmrlError(f"{path}:{line}: not UTF-8 text") from None


def _csv_records(path: Path):
    previous = csv.field_size_limit(FIELD_LIMIT)
    lineno = 1
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = set(reader.fieldnames or [])
            if not {"user", "item"} <= fields:
                raise FmrlError(f"{path}:1: CSV header needs 'user' and 'item' columns (got {sorted(fields)})")
            for lineno, rec in enumerate(reader, 2):
                extra, given = rec.pop(None, []), [value for value in rec.values() if value is not None]
                if extra or len(given) < len(rec):
                    raise FmrlError(f"{path}:{lineno}: {len(given) + len(extra)} fields, the header has "
                                    f"{len(reader.fieldnames)}")
                yield lineno, rec, False
    except csv.Error as e:
        text = " ".join(str(e).split())
        if text.startswith("field larger than field limit"):
            text = f"a field longer than {FIELD_LIMIT:,} characters (the most a CSV field may hold)"
        else:
            text = f"malformed CSV ({'a quoted field is never closed' if text == 'unexpected end of data' else text})"
        raise FmrlError(f"{path}:{lineno + 1}: {text}") from None
    finally:
        csv.field_size_limit(previous)


def _jsonl_records(path: Path):
    for lineno, rec in read_jsonl_objects(path):
        yield lineno, rec, True


def read_interactions(path: Path, min_count: int = 5) -> Dataset:
    """Leave-one-out Dataset of a CSV/JSONL file: rows ordered by timestamp per user (file order breaks
    ties), filtered to the k-core (repeated until stable), with the report the SDK writes."""
    raw = read_interaction_rows(path)
    has_time = any(r[4] for r in raw)
    rows, k_core = _k_core(raw, min_count)
    if not rows:
        raise FmrlError(f"{path}: no interactions left after {min_count}-core filtering")
    item_ids = sorted({r[1] for r in rows})
    user_ids, sequences, times = _sequences(rows, {item: i + 1 for i, item in enumerate(item_ids)})
    if min(len(s) for s in sequences) < 3:
        raise FmrlError(f"{path}: some users have fewer than 3 interactions; use min_count >= 3")
    report = {"raw": _counts(raw), "k_core": k_core, "timestamps": _ties(times) if has_time else None,
              "metadata": {"items_with_metadata": 0, "source": None}}
    return Dataset(name=path.stem, source=str(path.resolve()), sequences=sequences, user_ids=user_ids,
                   item_ids=item_ids, item_meta=[{} for _ in item_ids], report=report,
                   file_item_ids=sorted({r[1] for r in raw}), times=times if has_time else None)


def _counts(rows: list[Row]) -> dict:
    return {"users": len({r[0] for r in rows}), "items": len({r[1] for r in rows}), "interactions": len(rows)}


def _sequences(rows: list[Row], index: dict[str, int]) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """(user ids sorted, item index sequences, timestamp sequences) of the rows whose item is in `index`,
    each user's events ordered by (timestamp, file order)."""
    users: dict[str, list[int]] = {}
    times: dict[str, list[float]] = {}
    for user, item, ts, _, _ in sorted(rows, key=lambda r: (r[0], r[2], r[3])):
        i = index.get(item)
        if i is not None:
            users.setdefault(user, []).append(i)
            times.setdefault(user, []).append(ts)
    user_ids = list(users)
    return (user_ids, [np.asarray(users[u], dtype=np.int64) for u in user_ids],
            [np.asarray(times[u], dtype=np.float64) for u in user_ids])


def _interaction(path: Path, lineno: int, rec: dict, order: int, typed: bool) -> Row:
    """One row; typed: a JSON object (ids are strings or integers), else a CSV record (strings)."""
    for key in ("user", "item"):
        value = rec.get(key)
        if value is None or value == "":
            raise FmrlError(f"{path}:{lineno}: missing '{key}'")
        problem = id_problem(value) if typed else text_id_problem(value)
        if problem is not None:
            raise FmrlError(f"{path}:{lineno}: '{key}' {problem}")
    ts = rec.get("timestamp", rec.get("ts"))
    given = ts is not None and ts != ""
    seconds = _seconds(ts) if given else float(order)
    if seconds is None:
        shown = repr(ts) if len(repr(ts)) <= 60 else repr(ts)[:60] + "..."
        raise FmrlError(f"{path}:{lineno}: timestamp {shown} is not a number")
    if math.isnan(seconds):
        raise FmrlError(f"{path}:{lineno}: timestamp nan is not a number")
    if math.isinf(seconds):
        raise FmrlError(f"{path}:{lineno}: timestamp {seconds} is not a finite number")
    return id_text(rec["user"]), id_text(rec["item"]), seconds, order, given


def _seconds(value) -> float | None:
    """float(value); an integer beyond a float's range is infinite; None for what is not a number (bools too)."""
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except OverflowError:
        return float("inf") if value > 0 else float("-inf")
    except (TypeError, ValueError):
        return None


def _k_core(rows: list[Row], k: int) -> tuple[list[Row], dict]:
    """Rows of the k-core, and what was dropped: users/items below k in the file itself ("direct") and
    those that fell below k only after other rows were removed ("cascade")."""
    users = Counter(r[0] for r in rows)
    items = Counter(r[1] for r in rows)
    raw_users, raw_items = len(users), len(items)
    direct_users = sum(c < k for c in users.values())
    direct_items = sum(c < k for c in items.values())
    rounds, kept = 0, rows
    while True:
        keep = [r for r in kept if users[r[0]] >= k and items[r[1]] >= k]
        if len(keep) == len(kept):
            break
        kept, rounds = keep, rounds + 1
        users = Counter(r[0] for r in kept)
        items = Counter(r[1] for r in kept)
    users_left, items_left = len(users), len(items)   # the counters of `kept`
    return kept, {
        "min_count": k, "rounds": rounds, "interactions_dropped": len(rows) - len(kept),
        "users_dropped": raw_users - users_left, "items_dropped": raw_items - items_left,
        "users_below_k": direct_users, "items_below_k": direct_items,
        "users_cascade": raw_users - users_left - direct_users, "items_cascade": raw_items - items_left - direct_items}


def _ties(times: list) -> dict:
    """Users whose test (last) or validation (second to last) event shares its timestamp with the event
    before it: file order then decides which item is the target."""
    test = sum(len(t) >= 2 and bool(t[-1] == t[-2]) for t in times)
    val = sum(len(t) >= 3 and bool(t[-2] == t[-3]) for t in times)
    any_tie = sum(len(np.unique(t)) < len(t) for t in times)
    return {"users": len(times), "test_target_tied": test, "val_target_tied": val, "users_with_any_tie": any_tie}
