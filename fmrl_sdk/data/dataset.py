"""The in-memory dataset every stage shares, and the readers that build it.

Item indices are internal integers 1..N (0 is padding); `item_ids[i - 1]` is item i's external id.
Each user's sequence is in time order. Leave-one-out: the last item is the test target, the one
before it the validation target, the rest is training history.
"""

from __future__ import annotations

import ast
import csv
import gzip
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import FmrlError
from ..fileio import read_jsonl_objects

DEMO_DATA_DIR = Path(__file__).resolve().parent / "demo"
SPLITS = ("train", "val", "test")


@dataclass
class Dataset:
    """Users' item sequences plus the item catalogue.

    sequences: one int64 array per user, internal item indices in time order.
    user_ids / item_ids: external ids (strings), item_ids[i - 1] for internal index i.
    item_meta: per item (same order as item_ids) a dict with optional title, brand, categories, price.
    """

    name: str
    source: str
    sequences: list[np.ndarray]
    user_ids: list[str]
    item_ids: list[str]
    item_meta: list[dict] = field(default_factory=list)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def num_users(self) -> int:
        return len(self.sequences)

    def history_and_target(self, split: str) -> tuple[list[np.ndarray], np.ndarray]:
        """Leave-one-out: (histories, targets) for 'val' or 'test'; 'train' has no single target."""
        cut = {"val": 2, "test": 1}.get(split)
        if cut is None:
            raise FmrlError(f"unknown split {split!r}: expected 'val' or 'test'")
        histories = [s[: len(s) - cut] for s in self.sequences]
        targets = np.array([s[len(s) - cut] for s in self.sequences], dtype=np.int64)
        return histories, targets

    def train_sequences(self) -> list[np.ndarray]:
        return [s[:-2] for s in self.sequences]

    def stats(self) -> dict:
        n = sum(len(s) for s in self.sequences)
        return {"users": self.num_users, "items": self.num_items, "interactions": n,
                "avg_length": round(n / max(1, self.num_users), 2)}


def left_pad(seqs: list[np.ndarray], length: int) -> np.ndarray:
    """Right-align the last `length` items of each sequence in a [len(seqs), length] int64 array (0 = pad)."""
    out = np.zeros((len(seqs), length), dtype=np.int64)
    for row, s in enumerate(seqs):
        s = s[-length:]
        if len(s):
            out[row, length - len(s):] = s
    return out


def training_arrays(dataset: Dataset, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Next-item training pairs, each [users, max_len], left-padded.

    For a training sequence s, inputs are [0, s_0, ..., s_{n-2}] and targets [s_0, ..., s_{n-1}], both
    cut to the last max_len: the first target is predicted from an empty history (a learned prior),
    as in the reference implementation.
    """
    starts = [np.concatenate([[0], s]) for s in dataset.train_sequences()]
    inputs = left_pad([t[:-1] for t in starts], max_len)
    targets = left_pad([t[1:] for t in starts], max_len)
    return inputs, targets


# ----------------------------------------------------------------------------------------------
# Readers


def load_dataset(path: str | Path, min_count: int = 5) -> Dataset:
    """Read a P5 Amazon folder, or a CSV/JSONL interactions file (k-core filtered). 'demo' = packaged set."""
    if str(path) == "demo":
        path = DEMO_DATA_DIR
    path = Path(path)
    if not path.exists():
        raise FmrlError(f"{path}: data not found")
    if path.is_dir():
        if not (path / "sequential_data.txt").exists():
            raise FmrlError(f"{path}: not a P5 data folder (no sequential_data.txt)")
        return read_p5_folder(path)
    if path.suffix.lower() in (".csv", ".jsonl", ".json"):
        return read_interactions(path, min_count=min_count)
    raise FmrlError(f"{path}: unknown data format (expected a P5 folder, .csv or .jsonl)")


def read_p5_folder(folder: Path) -> Dataset:
    """P5 layout: sequential_data.txt ('user item item ...'), datamaps.json (id2item), meta.json(.gz)."""
    maps_path = folder / "datamaps.json"
    id2item: dict[str, str] = {}
    id2user: dict[str, str] = {}
    if maps_path.exists():
        maps = _read_json_file(maps_path)
        id2item = maps.get("id2item", {})
        id2user = maps.get("id2user", {})
    seq_path = folder / "sequential_data.txt"
    users, sequences = [], []
    max_item = 0
    with open(seq_path) as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            try:
                nums = [int(p) for p in parts]
            except ValueError:
                raise FmrlError(f"{seq_path}:{lineno}: expected integers 'user item item ...'") from None
            if len(nums) < 2 or min(nums[1:]) < 1:
                raise FmrlError(f"{seq_path}:{lineno}: need a user and at least one item id >= 1")
            users.append(id2user.get(parts[0], parts[0]))
            seq = np.asarray(nums[1:], dtype=np.int64)
            sequences.append(seq)
            max_item = max(max_item, int(seq.max()))
    if not sequences:
        raise FmrlError(f"{seq_path}: no interactions")
    short = [i for i, s in enumerate(sequences) if len(s) < 3]
    if short:
        raise FmrlError(f"{seq_path}:{short[0] + 1}: user has {len(sequences[short[0]])} items; "
                        "leave-one-out needs at least 3")
    num_items = max(max_item, len(id2item))
    item_ids = [id2item.get(str(i), str(i)) for i in range(1, num_items + 1)]
    meta_by_asin = _read_meta(folder)
    item_meta = [meta_by_asin.get(a, {}) for a in item_ids]
    return Dataset(name=folder.name, source=str(folder.resolve()), sequences=sequences,
                   user_ids=users, item_ids=item_ids, item_meta=item_meta)


def _read_json_file(path: Path):
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise FmrlError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None


def _read_meta(folder: Path) -> dict[str, dict]:
    """meta.json[.gz]: one item per line, JSON or a Python dict literal (parsed with ast.literal_eval)."""
    for name in ("meta.json.gz", "meta.json", "meta.jsonl"):
        path = folder / name
        if path.exists():
            break
    else:
        return {}
    opener = gzip.open if path.suffix == ".gz" else open
    out: dict[str, dict] = {}
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                try:
                    rec = ast.literal_eval(line)
                except (ValueError, SyntaxError):
                    raise FmrlError(f"{path}:{lineno}: neither JSON nor a Python dict literal") from None
            if not isinstance(rec, dict) or "asin" not in rec:
                raise FmrlError(f"{path}:{lineno}: expected an object with an 'asin' key")
            out[str(rec["asin"])] = {k: rec[k] for k in ("title", "brand", "categories", "price") if k in rec}
    return out


def read_interactions(path: Path, min_count: int = 5) -> Dataset:
    """CSV (header with user,item[,timestamp]) or JSONL ({"user", "item", "timestamp"|"ts"}) interactions.

    Rows are ordered by timestamp per user (file order breaks ties), then filtered to the k-core
    (every user and item with at least `min_count` interactions, repeated until stable).
    """
    rows: list[tuple[str, str, float, int]] = []
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as f:
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
    rows = _k_core(rows, min_count)
    if not rows:
        raise FmrlError(f"{path}: no interactions left after {min_count}-core filtering")
    rows.sort(key=lambda r: (r[0], r[2], r[3]))
    item_ids = sorted({r[1] for r in rows})
    index = {item: i + 1 for i, item in enumerate(item_ids)}
    users: dict[str, list[int]] = {}
    for user, item, _, _ in rows:
        users.setdefault(user, []).append(index[item])
    user_ids = list(users)
    sequences = [np.asarray(users[u], dtype=np.int64) for u in user_ids]
    if min(len(s) for s in sequences) < 3:
        raise FmrlError(f"{path}: some users have fewer than 3 interactions; use min_count >= 3")
    return Dataset(name=path.stem, source=str(path.resolve()), sequences=sequences,
                   user_ids=user_ids, item_ids=item_ids, item_meta=[{} for _ in item_ids])


def _interaction(path: Path, lineno: int, rec: dict, order: int) -> tuple[str, str, float, int]:
    for key in ("user", "item"):
        if rec.get(key) in (None, ""):
            raise FmrlError(f"{path}:{lineno}: missing '{key}'")
    ts = rec.get("timestamp", rec.get("ts", order))
    try:
        ts = float(ts) if ts not in (None, "") else float(order)
    except (TypeError, ValueError):
        raise FmrlError(f"{path}:{lineno}: timestamp {ts!r} is not a number") from None
    return str(rec["user"]), str(rec["item"]), ts, order


def _k_core(rows: list, k: int) -> list:
    while True:
        users = Counter(r[0] for r in rows)
        items = Counter(r[1] for r in rows)
        kept = [r for r in rows if users[r[0]] >= k and items[r[1]] >= k]
        if len(kept) == len(rows):
            return kept
        rows = kept
