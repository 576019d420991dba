"""make-stream: turn a dataset into an events.jsonl stream.

Data with timestamps (CSV/JSONL) keeps its real timestamps and real order: events sorted by timestamp,
ties in file order (so each user's events are in the same order as in training and evaluation).
- time split: every row of the file, new users and events of items the run never saw included, as
  an app would meet them; `--split val` stops before test_from, `--split train` before val_from.
- leave-one-out: the rows the dataset kept (its k-core); `--split val` drops each user's last event,
  `--split train` the last two.
Data without timestamps (P5 folders) has no real order: each user's sequence up to the split is
interleaved with the others' by a seeded random merge (the owner of each slot is a shuffled multiset of
user ids) and given synthetic, strictly increasing timestamps (start + 60 s per event).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..data import columnar
from ..data.dataset import Dataset
from ..errors import FmrlError
from ..fileio import atomic_open

SPLIT_CUT = {"test": 0, "val": 1, "train": 2}
START_TS = 1_700_000_000
STEP_S = 60


def split_sequences(sequences, split: str) -> list[np.ndarray]:
    if split not in SPLIT_CUT:
        raise FmrlError(f"--split {split!r}: expected test, val or train")
    cut = SPLIT_CUT[split]
    return [s[: len(s) - cut] for s in sequences]


def interleave(lengths: list[int], seed: int) -> np.ndarray:
    """Owner (user position) of every slot of the merged stream, len = sum(lengths)."""
    owners = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    np.random.default_rng(seed).shuffle(owners)
    return owners


def write_stream(out: str | Path, user_ids: list[str], item_ids: list[str], sequences, split: str = "test",
                 seed: int = 0) -> dict:
    """Synthetic order (data without timestamps): write the stream atomically; returns
    {"users", "events", "split", "seed", "order": "synthetic"}."""
    out = Path(out)
    seqs = split_sequences(sequences, split)
    owners = interleave([len(s) for s in seqs], seed)
    cursor = np.zeros(len(seqs), dtype=np.int64)
    with atomic_open(out, "w", encoding="utf-8") as f:
        for position, owner in enumerate(owners.tolist()):
            item = int(seqs[owner][cursor[owner]])
            cursor[owner] += 1
            f.write(json.dumps({"user": user_ids[owner], "item": item_ids[item - 1],
                                "ts": START_TS + STEP_S * position}) + "\n")
    return {"users": int(sum(1 for s in seqs if len(s))), "events": int(len(owners)), "split": split, "seed": seed,
            "order": "synthetic"}


def timed_events(dataset: Dataset, split: str = "test") -> list[tuple]:
    """Real order (data with timestamps): (user, item, ts) of the file's rows in the stream (see the
    module docstring), sorted by timestamp with file order breaking ties."""
    if split not in SPLIT_CUT:
        raise FmrlError(f"--split {split!r}: expected test, val or train")
    log = columnar.read_log(dataset.source)
    ts = log.timestamps
    order = np.argsort(ts, kind="stable")                       # time, then file order
    if dataset.cuts is not None:
        end = {"test": np.inf, "val": dataset.cuts.test_from, "train": dataset.cuts.val_from}[split]
        rows = order[ts[order] < end]
    else:
        in_users = np.isin(np.asarray(log.user_ids, dtype=object), dataset.user_ids)
        in_items = np.isin(np.asarray(log.item_ids, dtype=object), dataset.item_ids)
        rows = order[in_users[log.user_codes[order]] & in_items[log.item_codes[order]]]   # the k-core's rows
        drop = SPLIT_CUT[split]
        if drop:   # without each user's last `drop` events: keep those with at least `drop` after them
            users = log.user_codes[rows]
            by_user = np.argsort(users, kind="stable")            # each user's events, in stream order
            counts = np.bincount(users, minlength=len(log.user_ids))
            rank = np.empty(len(rows), dtype=np.int64)
            rank[by_user] = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
            rows = rows[counts[users] - 1 - rank >= drop]
    return [(log.user_ids[u], log.item_ids[i], t)
            for u, i, t in zip(log.user_codes[rows].tolist(), log.item_codes[rows].tolist(), ts[rows].tolist())]


def write_timed_stream(out: str | Path, events: list[tuple], split: str) -> dict:
    """Write (user, item, ts) events atomically with their real timestamps (whole seconds as integers)."""
    with atomic_open(Path(out), "w", encoding="utf-8") as f:
        for user, item, ts in events:
            f.write(json.dumps({"user": user, "item": item, "ts": int(ts) if float(ts).is_integer() else ts}) + "\n")
    return {"users": len({e[0] for e in events}), "events": len(events), "split": split, "order": "real"}


def make_stream(out: str | Path, dataset: Dataset, split: str = "test", seed: int = 0) -> dict:
    """The stream of `dataset` (real order when it has timestamps, else synthetic), written atomically."""
    if dataset.times is not None:
        return write_timed_stream(out, timed_events(dataset, split), split)
    return write_stream(out, dataset.user_ids, dataset.item_ids, dataset.sequences, split, seed)
