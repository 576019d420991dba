"""The in-memory dataset every stage shares, and the readers that build it.

Item indices are internal integers 1..N (0 is padding); `item_ids[i - 1]` is item i's external id.
Each user's sequence is in time order. Two splits (split.py): leave-one-out (the last item is the test
target, the one before it the validation target, the rest is training history) and time (global cuts:
training events before val_from, every later event a validation or test target in its window).
"""

from __future__ import annotations

import ast
import gzip
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import FmrlError
from ..ids import id_problem, id_text
from ..jsonio import MAX_JSONL_LINE_BYTES, read_json
from . import columnar
from .catalogue import Catalogue, read_catalogue
from .split import SplitSpec, TimeCuts, resolve_cuts

DEMO_DATA_DIR = Path(__file__).resolve().parent / "demo"
SPLITS = ("train", "val", "test")


@dataclass
class Dataset:
    """Users' item sequences plus the item catalogue.

    sequences: one int64 array per user, internal item indices in time order.
    user_ids / item_ids: external ids (strings), item_ids[i - 1] for internal index i.
    item_meta: per item (same order as item_ids) every field of its metadata (P5 meta or --items catalogue).
    report: what the reader found and dropped (see `data_report`): raw counts, k-core drops, timestamp ties,
      catalogue alignment.
    catalogue: the --items catalogue, if one was given.
    file_item_ids: every item of the interactions file, before k-core filtering (None: same as item_ids).
    times: one float64 array per user, the events' unix timestamps (None: the data has none).
    cuts: the time split's cuts (None: leave-one-out). Then `sequences` hold every user of the file with
      their events of known items (items of the training k-core), and `train_users` marks the users of
      the training k-core, whose events before cuts.val_from are the training data.
    """

    name: str
    source: str
    sequences: list[np.ndarray]
    user_ids: list[str]
    item_ids: list[str]
    item_meta: list[dict] = field(default_factory=list)
    report: dict = field(default_factory=dict)
    catalogue: Catalogue | None = None
    file_item_ids: list[str] | None = None
    times: list[np.ndarray] | None = None
    cuts: TimeCuts | None = None
    train_users: np.ndarray | None = None

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def num_users(self) -> int:
        return len(self.sequences)

    def split_info(self) -> dict:
        """{"kind": "leave-one-out"} or the time split's cuts (recorded in runs and bundle manifests)."""
        return self.cuts.to_dict() if self.cuts is not None else {"kind": "leave-one-out"}

    def target_positions(self, split: str) -> list[np.ndarray]:
        """Per user, the positions (int64, ascending) of the events that are `split`'s targets ('val' or
        'test'): leave-one-out, the second to last or the last; time, every event in the split's window."""
        if split not in ("val", "test"):
            raise FmrlError(f"unknown split {split!r}: expected 'val' or 'test'")
        if self.cuts is None:
            cut = 2 if split == "val" else 1
            return [np.array([len(s) - cut], dtype=np.int64) for s in self.sequences]
        lo, hi = (self.cuts.val_from, self.cuts.test_from) if split == "val" else (self.cuts.test_from, np.inf)
        return [np.arange(np.searchsorted(t, lo, "left"), np.searchsorted(t, hi, "left"), dtype=np.int64)
                for t in self.times]

    def history_and_target(self, split: str) -> tuple[list[np.ndarray], np.ndarray]:
        """One (history, target) per user that has a target in `split`: the user's first target and
        everything before it (leave-one-out: every user, the paper's protocol)."""
        histories, targets = [], []
        for s, positions in zip(self.sequences, self.target_positions(split)):
            if len(positions):
                histories.append(s[:positions[0]])
                targets.append(s[positions[0]])
        return histories, np.array(targets, dtype=np.int64)

    def train_sequences(self) -> list[np.ndarray]:
        """Per user, the events training may use (time split: empty for users outside the training k-core)."""
        if self.cuts is None:
            return [s[:-2] for s in self.sequences]
        return [s[:np.searchsorted(t, self.cuts.val_from, "left")] if keep else s[:0]
                for s, t, keep in zip(self.sequences, self.times, self.train_users)]

    def subset(self, users) -> "Dataset":
        """The same dataset restricted to the users at positions `users` (data-parallel evaluation)."""
        pick = lambda values: None if values is None else [values[u] for u in users]  # noqa: E731
        return Dataset(self.name, self.source, pick(self.sequences), pick(self.user_ids), self.item_ids,
                       self.item_meta, self.report, self.catalogue, self.file_item_ids, pick(self.times),
                       self.cuts, None if self.train_users is None else self.train_users[users])

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


def training_windows(length: int, max_len: int, stride: int = 0) -> list[tuple[int, int, int]]:
    """Windows (end, new_from, new_to) over a history of `length` targets, latest first.

    A window holds targets [end - max_len, end) and trains those in [new_from, new_to), always its last
    ones. stride 0: one window, the last max_len targets (the paper). 0 < stride <= max_len: then, going
    back, one window per `stride` earlier targets, each ending at the first target already trained, until
    the first target is reached. Every target is trained exactly once; in the extra windows each has at least
    max_len - stride items of context (all earlier items for targets near the start).
    """
    windows = [(length, max(0, length - max_len), length)]
    to = windows[0][1]
    while stride and to > 0:
        start = max(0, to - stride) if to > max_len else 0
        windows.append((to, start, to))
        to = start
    return windows


def training_arrays(dataset: Dataset, max_len: int, stride: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Next-item training pairs, each [rows, max_len], left-padded; one row per window (see training_windows).

    For a training sequence s, inputs are [0, s_0, ..., s_{n-2}] and targets [s_0, ..., s_{n-1}], both
    cut to a window of max_len: the first target is predicted from an empty history (a learned prior),
    as in the reference implementation. Targets another window already trains are 0 (no loss).
    """
    inputs, targets = [], []
    for s in dataset.train_sequences():
        padded = np.concatenate([[0], s])
        for end, new_from, new_to in training_windows(len(s), max_len, stride):
            window_targets = padded[1:end + 1].copy()
            window_targets[:new_from] = 0
            window_targets[new_to:] = 0
            inputs.append(padded[:end])
            targets.append(window_targets)
    return left_pad(inputs, max_len), left_pad(targets, max_len)


def target_usage(dataset: Dataset, max_len: int, stride: int = 0) -> dict:
    """How many training targets an epoch uses with this max_len/stride: {"targets", "used", "rows", "fraction"}."""
    lengths = [len(s) for s in dataset.train_sequences()]
    total = sum(lengths)
    windows = [training_windows(n, max_len, stride) for n in lengths]
    used = sum(new_to - new_from for w in windows for _, new_from, new_to in w)
    return {"targets": total, "used": used, "rows": sum(len(w) for w in windows),
            "fraction": round(used / total, 4) if total else 1.0}


# ----------------------------------------------------------------------------------------------
# Readers


def load_dataset(path: str | Path, min_count: int = 5, items: str | Path | None = None,
                 strict: bool = False, split: SplitSpec | None = None) -> Dataset:
    """Read a P5 Amazon folder, or a CSV/JSONL interactions file (k-core filtered). 'demo' = packaged set.

    items: a catalogue file (JSONL/CSV keyed by item, see catalogue.py) that replaces the items' metadata;
    its alignment with the data is counted in `report["catalogue"]` (strict: items without a row are an error).
    split: leave-one-out (default) or a time split (needs timestamps: CSV/JSONL data with a timestamp on
    every row).
    """
    path = _data_path(path)
    split = split or SplitSpec()
    if is_p5_folder(path):
        if split.is_time:
            raise FmrlError(f"{path}: a P5 folder has no timestamps; split = 'time' needs CSV/JSONL data with a "
                            "timestamp on every row")
        dataset = read_p5_folder(path)
    else:
        dataset = read_interactions(path, min_count=min_count, split=split)
    return _with_catalogue(dataset, items, strict)


def load_items(path: str | Path, items: str | Path | None = None, strict: bool = False) -> Dataset:
    """Every item of the data, before any k-core filtering (what `featurize` embeds), without sequences.

    Features keyed by these ids stay valid for every [data] min_count.
    """
    path = _data_path(path)
    if is_p5_folder(path):
        dataset = read_p5_folder(path)
    else:
        dataset = Dataset(name=path.stem, source=str(path.resolve()), sequences=[], user_ids=[],
                          item_ids=list(columnar.read_log(path).item_ids))
        dataset.item_meta = [{} for _ in dataset.item_ids]
    return _with_catalogue(dataset, items, strict)


def is_p5_folder(path: Path) -> bool:
    return path.is_dir() and (path / "sequential_data.txt").exists()


def _data_path(path: str | Path) -> Path:
    if str(path) == "demo":
        path = DEMO_DATA_DIR
    path = Path(path)
    if not path.exists():
        raise FmrlError(f"{path}: data not found")
    if path.is_dir():
        if not (path / "sequential_data.txt").exists() and not any(path.rglob("*.parquet")) \
                and not any(path.rglob("*.pq")):
            raise FmrlError(f"{path}: neither a P5 data folder (no sequential_data.txt) nor a folder of Parquet files")
    elif path.suffix.lower() not in columnar.FORMATS:
        raise FmrlError(f"{path}: unknown data format (expected a P5 folder, .csv, .jsonl, .parquet or a folder "
                        "of .parquet files)")
    return path


def _with_catalogue(dataset: Dataset, items: str | Path | None, strict: bool) -> Dataset:
    if items is None or str(items) == "":
        return dataset
    catalogue = read_catalogue(items)
    alignment = catalogue.align(dataset.item_ids, dataset.file_item_ids)
    if strict and alignment["missing"]:
        raise FmrlError(f"{catalogue.path}: {alignment['missing']} of {alignment['items']} items of the data have "
                        f"no row (first: {alignment['first_missing']!r}); --strict needs every item")
    dataset.item_meta = [catalogue.rows.get(item, {}) for item in dataset.item_ids]
    dataset.catalogue = catalogue
    dataset.report["catalogue"] = alignment
    return dataset


def read_p5_folder(folder: Path) -> Dataset:
    """P5 layout: sequential_data.txt ('user item item ...'), datamaps.json (id2item), meta.json(.gz).

    datamaps.json and meta.json are optional: without them items are named by their numbers and have
    no metadata (train with item_embedding = "id", or give a catalogue with --items).
    """
    maps_path = folder / "datamaps.json"
    id2item: dict[str, str] = {}
    id2user: dict[str, str] = {}
    if maps_path.exists():
        maps = read_json(maps_path)
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
    n = sum(len(s) for s in sequences)
    report = {"raw": {"users": len(sequences), "items": num_items, "interactions": n},
              "k_core": None, "timestamps": None,
              "metadata": {"items_with_metadata": sum(bool(m) for m in item_meta),
                           "source": "meta.json" if meta_by_asin else None}}
    return Dataset(name=folder.name, source=str(folder.resolve()), sequences=sequences,
                   user_ids=users, item_ids=item_ids, item_meta=item_meta, report=report)


def _read_meta(folder: Path) -> dict[str, dict]:
    """meta.json[.gz]: one item per line, JSON or a Python dict literal (parsed with ast.literal_eval), whose
    'asin' is an id (fmrl_sdk/ids.py). Every field is kept (asin included), so any of them can be used in a
    text template. Each problem is one FmrlError line, "FILE:LINE: what" (_meta_lines, _meta_record).
    """
    for name in ("meta.json.gz", "meta.json", "meta.jsonl"):
        path = folder / name
        if path.exists():
            break
    else:
        return {}
    out: dict[str, dict] = {}
    for lineno, line in _meta_lines(path):
        rec = _meta_record(path, lineno, line)
        out[id_text(rec["asin"])] = rec
    return out


def _meta_lines(path: Path):
    """(line number, text) of each non-blank line of a meta file, gzip-compressed when it ends in .gz. Text
    that is not UTF-8 (a byte order mark at the start allowed), a line longer than a JSONL line may be, gzip data
    that is corrupt or cut short, and an unreadable file are FmrlErrors naming the line."""
    opener = gzip.open if path.suffix == ".gz" else open
    lineno = 0
    try:
        with opener(path, "rb") as f:
            while raw := f.readline(MAX_JSONL_LINE_BYTES + 2):   # + "\r\n"
                lineno += 1
                if len(raw.rstrip(b"\r\n")) > MAX_JSONL_LINE_BYTES:
                    raise FmrlError(f"{path}:{lineno}: line longer than {MAX_JSONL_LINE_BYTES:,} bytes")
                try:
                    line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8").strip()
                except UnicodeDecodeError:
                    raise FmrlError(f"{path}:{lineno}: not UTF-8 text") from None
                if line:
                    yield lineno, line
    except (OSError, EOFError, zlib.error) as e:   # gzip.BadGzipFile is an OSError
        what = " gzip data" if path.suffix == ".gz" else ""
        reason = getattr(e, "strerror", None) or " ".join(str(e).split()) or type(e).__name__
        raise FmrlError(f"{path}:{lineno + 1}: cannot read{what} ({reason})") from None


def _meta_record(path: Path, lineno: int, line: str) -> dict:
    """One meta line as a dict with an 'asin' that is an id."""
    try:
        rec = json.loads(line)
    except (ValueError, RecursionError):  # also nesting too deep for the parser
        try:
            rec = ast.literal_eval(line)
        except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError):
            raise FmrlError(f"{path}:{lineno}: neither JSON nor a Python dict literal") from None
    if not isinstance(rec, dict) or "asin" not in rec:
        raise FmrlError(f"{path}:{lineno}: expected an object with an 'asin' key")
    problem = id_problem(rec["asin"])
    if problem:
        raise FmrlError(f"{path}:{lineno}: 'asin' {problem}")
    return rec


def read_interactions(path: Path, min_count: int = 5, split: SplitSpec | None = None) -> Dataset:
    """CSV/JSONL/Parquet interactions (columnar.py), ordered and filtered.

    Rows are ordered by timestamp per user (file order breaks ties), then filtered to the k-core
    (every user and item with at least `min_count` interactions, repeated until stable). What the filter
    dropped and how many users' last events share a timestamp are recorded in `report`.
    A time split filters only the events before val_from (the training data) and keeps every later event
    of every user whose item survived that filter (see `_time_split`).
    """
    log = columnar.read_log(path)
    if split is not None and split.is_time:
        return _time_split(path, log, min_count, split)
    kept, k_core = columnar.k_core(log, min_count)
    if len(kept) == 0:
        raise FmrlError(f"{path}: no interactions left after {min_count}-core filtering")
    seq = columnar.sequences(log, kept)
    if np.diff(seq.offsets).min() < 3:
        raise FmrlError(f"{path}: some users have fewer than 3 interactions; use min_count >= 3")
    report = {"raw": dict(log.raw), "k_core": k_core, "timestamps": columnar.ties(seq),
              "metadata": {"items_with_metadata": 0, "source": None}}
    return _dataset(path, log, seq, report)


def _dataset(path: Path, log: columnar.Log, seq: columnar.Sequences, report: dict, **split) -> Dataset:
    times = None if seq.timestamps is None else np.split(seq.timestamps, seq.offsets[1:-1])
    return Dataset(name=path.stem, source=str(path.resolve()), sequences=seq.per_user(), user_ids=seq.user_ids,
                   item_ids=seq.item_ids, item_meta=[{} for _ in seq.item_ids], report=report,
                   file_item_ids=list(log.item_ids), times=times, **split)


def _time_split(path: Path, log: columnar.Log, min_count: int, spec: SplitSpec) -> Dataset:
    """A time split (split.py): the k-core of the events before val_from is the training data and names
    the known items; the dataset holds every user of the file with all their events of known items (the
    context and targets of validation and test). Events after val_from naming other items (new items) are
    left out and counted in the report, as are the users and events on each side of the cuts."""
    if log.timestamps is None:
        raise FmrlError(f"{path}: split = 'time' needs timestamps (a timestamp or ts column on every row)")
    cuts = resolve_cuts(spec, log.timestamps, str(path))
    before = np.flatnonzero(log.timestamps < cuts.val_from)
    training = columnar.restrict(log, before)
    kept, k_core = columnar.k_core(training, min_count)
    k_core["of"] = {**training.raw, "what": "the events before val_from"}   # what the k-core filtered
    if len(kept) == 0:
        raise FmrlError(f"{path}: no training events left after {min_count}-core filtering of the events before "
                        f"val_from ({cuts.to_dict()['val_from_iso']})")
    kept = before[kept]
    known = np.zeros(len(log.item_ids), dtype=bool)
    known[log.item_codes[kept]] = True
    trained = np.zeros(len(log.user_ids), dtype=bool)
    trained[log.user_codes[kept]] = True
    seq = columnar.sequences(log, known[log.item_codes])
    user_index = {u: j for j, u in enumerate(log.user_ids)}
    train_users = trained[[user_index[u] for u in seq.user_ids]]
    report = {"raw": dict(log.raw), "k_core": k_core, "timestamps": columnar.ties(seq),
              "metadata": {"items_with_metadata": 0, "source": None},
              "split": _time_split_report(log, cuts, trained, known, len(kept))}
    return _dataset(path, log, seq, report, cuts=cuts, train_users=train_users)


def _time_split_report(log: columnar.Log, cuts: TimeCuts, trained: np.ndarray, known: np.ndarray,
                       train_events: int) -> dict:
    """Events, users and items on each side of the cuts; new users (no event before val_from) and events
    naming new items (not in the training k-core) in each window. trained / known: per user / item code."""
    ts, users, items = log.timestamps, log.user_codes, log.item_codes
    seen_before = np.zeros(len(log.user_ids), dtype=bool)
    seen_before[users[ts < cuts.val_from]] = True
    out = {**cuts.to_dict(),
           "train": {"events_before_val_from": int((ts < cuts.val_from).sum()), "events_trained": train_events,
                     "users_trained": int(trained.sum()), "items": int(known.sum())}}
    for name, (lo, hi) in {"val": (cuts.val_from, cuts.test_from), "test": (cuts.test_from, np.inf)}.items():
        window = (ts >= lo) & (ts < hi)
        u, i = users[window], items[window]
        present = np.unique(u)
        out[name] = {"events": int(window.sum()), "users": len(present), "items": len(np.unique(i)),
                     "new_users": int((~seen_before[present]).sum()),
                     "events_of_new_users": int((~seen_before[u]).sum()),
                     "events_of_new_items": int((~known[i]).sum()),
                     "users_without_training_events": int((~trained[present]).sum())}
    return out


def data_report(dataset: Dataset, max_len: int, stride: int = 0) -> dict:
    """Everything a user should check before training: counts, drops, ties, catalogue, target usage."""
    return {"name": dataset.name, "source": dataset.source, **dataset.stats(), **dataset.report,
            "max_len": max_len, "stride": stride, "training_targets": target_usage(dataset, max_len, stride)}


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


def report_line(dataset: Dataset, max_len: int, stride: int = 0) -> str:
    """The data report in one line (printed by `train`; `fmrl-sdk data inspect` shows it in full)."""
    stats, r = dataset.stats(), dataset.report
    parts = [f"{stats['users']:,} users, {stats['items']:,} items, {stats['interactions']:,} interactions"]
    k = r.get("k_core")
    if k:
        raw = k.get("of") or r["raw"]   # a time split filters only the events before val_from
        parts.append(f"{k['min_count']}-core{' of ' + raw['what'] if 'what' in raw else ''} dropped "
                     f"{k['users_dropped']:,} users ({_pct(k['users_dropped'], raw['users'])}), "
                     f"{k['items_dropped']:,} items ({_pct(k['items_dropped'], raw['items'])})")
    ties = r.get("timestamps")
    if ties and not r.get("split"):   # leave-one-out: file order then decides which item is the target
        parts.append(f"{_pct(ties['test_target_tied'], ties['users'])} of users' test targets tie in time "
                     "(file order decides)")
    usage = target_usage(dataset, max_len, stride)
    parts.append(f"max_len {max_len}{f' stride {stride}' if stride else ''} trains "
                 f"{_pct(usage['used'], usage['targets'])} of {usage['targets']:,} targets")
    cat = r.get("catalogue")
    if cat:
        parts.append(f"catalogue covers {cat['matched']:,}/{cat['items']:,} items"
                     + (f", {cat['unknown']:,} rows for items not in the data ignored" if cat["unknown"] else ""))
    elif not any(dataset.item_meta):
        parts.append("no item metadata")
    return "data: " + "; ".join(parts)
