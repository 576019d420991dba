"""The straightforward interaction reader, the yardstick of fmrl_sdk/data/columnar.py: one Python tuple
per row, the k-core by repeated counting, sequences by sorting rows. The SDK reads with the columnar
reader; tests/test_columnar.py holds the two equal (ids, sequences, reports) on every case it builds."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np

from fmrl_sdk.data.dataset import Dataset
from fmrl_sdk.errors import FmrlError
from fmrl_sdk.fileio import read_jsonl_objects

Row = tuple  # (user, item, timestamp, file order, has a timestamp)


def read_interaction_rows(path: Path) -> list[Row]:
    """CSV (header with user,item[,timestamp]) or JSONL ({"user", "item", "timestamp"|"ts"}) rows, file order."""
    rows: list[Row] = []
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = set(reader.fieldnames or [])
            if not {"user", "item"} <= fields:
                raise FmrlError(f"{path}:1: CSV header needs 'user' and 'item' columns (got {sorted(fields)})")
            for lineno, rec in enumerate(reader, 2):
                rows.append(_interaction(path, lineno, rec, len(rows)))
    else:
        for lineno, rec in read_jsonl_objects(path):
            rows.append(_interaction(path, lineno, rec, len(rows)))
    if not rows:
        raise FmrlError(f"{path}: no interactions")
    return rows


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


def _interaction(path: Path, lineno: int, rec: dict, order: int) -> Row:
    for key in ("user", "item"):
        if rec.get(key) in (None, ""):
            raise FmrlError(f"{path}:{lineno}: missing '{key}'")
    ts = rec.get("timestamp", rec.get("ts"))
    given = ts not in (None, "")
    try:
        ts = float(ts) if given else float(order)
    except (TypeError, ValueError):
        raise FmrlError(f"{path}:{lineno}: timestamp {ts!r} is not a number") from None
    return str(rec["user"]), str(rec["item"]), ts, order, given


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
