"""Replay an events.jsonl stream through the runtime, one Session per user, measuring as it goes.

For every valid event of user u: recommend k items from u's current state (cold start for a new
user), score that recommendation against the event's item (online HitRate@k / NDCG@k), then observe
the item. `online_last_event` keeps only each user's last valid event: on a stream made with
`make-stream --split test` that is exactly the offline leave-one-out test protocol. scoring.py splits
the figures by the bundle's cut (in-sample / out-of-sample, known / new users and items, windows,
popularity baselines); the report's `headline` is the out-of-sample figure whenever a cut is known.

Lines are read by `read_line`: a line longer than jsonio.MAX_JSONL_LINE_BYTES (64 MiB) is an `invalid_json`
bad line, "line longer than 67,108,864 bytes", read in blocks and never held whole; fmrl_replay does the same.

New items: with `new_items` ({id: vector}, from `--items` and the run), an event naming an item the
bundle lacks first adds it through `Recommender.add_items` (what an app does), then is scored as usual.

Snapshots (--state-dir): every N events the replay writes `snapshot.bin` atomically (temporary file,
fsync, rename): the stream position (byte offset, line number, sha256 of the bytes read so far), every
accumulated counter, the first bad-line samples, each user's last ts / last-event metrics and the
serialised Session states, then a sha256 of the whole file. `--resume` checks the snapshot, the bundle
fingerprint, the options and the stream prefix, truncates the partial --out file to the size it had at
the snapshot and continues, so a run killed at any instant resumes to the same report as an
uninterrupted run (timing and memory fields aside: latency percentiles cover the events replayed by this
process).

--out is written to a hidden sibling, `.NAME.partial`, and renamed to NAME when the replay completes: an
existing NAME is never truncated in place, and a killed run leaves NAME as it was.

One replay at a time per --state-dir and per --out: the replay holds an exclusive lock (flock) on
`STATE_DIR/simulate.lock` and on `.NAME.lock` beside --out (fmrl_replay takes the same one) from start to
end; a second one is refused before it writes anything ("DIR: in use by another simulate (pid N)"). The
OS drops a lock when its process dies, SIGKILL included; the file is removed when the replay ends.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import resource
import struct
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import FmrlError
from ..fileio import atomic_write_bytes, exclusive_lock, output_lock, raise_as_write_error, release_lock
from ..jsonio import MAX_JSONL_LINE_BYTES, read_json_bytes
from .events import BAD_KINDS, BadLine, parse_line
from .scoring import Cut, Scoring, Window

SNAPSHOT = "snapshot.bin"
LOCK = "simulate.lock"     # inside --state-dir; `.NAME.lock` beside --out
SNAPSHOT_MAGIC = b"FMRLSNAP"
SNAPSHOT_VERSION = 2   # 2: the time-aware scoring state (scoring.py) and per-user flags
MAX_BAD_SAMPLES = 100
TOO_LONG = f"line longer than {MAX_JSONL_LINE_BYTES:,} bytes"   # an invalid_json line (read_line)
SKIP_BLOCK = 1 << 20   # the rest of a line over MAX_JSONL_LINE_BYTES is read and dropped in blocks this size
TIMING_KEYS = ("latency_us", "events_per_s", "peak_rss_bytes", "seconds")


@dataclass
class Options:
    k: int = 10
    exclude_seen: bool = False
    strict: bool = False
    snapshot_every: int = 10000
    limit: int = 0                 # stop after this many replayed events (0: the whole stream)
    cut: Cut = Cut("unknown", "manifest")   # where out-of-sample starts (scoring.cut_for)
    window: Window | None = None   # report windows after a time cut


@dataclass
class Counters:
    """Everything the report is computed from (all of it goes into a snapshot)."""

    lines: int = 0                 # lines read (blank lines included)
    offset: int = 0                # bytes of the stream consumed
    events: int = 0
    hits: int = 0
    ndcg: float = 0.0
    bad: dict = field(default_factory=lambda: {kind: 0 for kind in BAD_KINDS})
    bad_samples: list = field(default_factory=list)   # [{"line", "kind", "what"}], the first MAX_BAD_SAMPLES


@dataclass(slots=True)
class UserSlot:
    """One user of the replay: their runtime Session and what the report needs of their last event."""

    session: object                # fmrl_sdk.runtime.Session
    last_ts: int | float | None = None
    last_hit: float = 0.0          # 1.0 when the last event's item was in the top k
    last_ndcg: float = 0.0         # NDCG@k of the last event
    trained: bool = False          # time cut: the user had an event in the training period (a known user)
    last_pop_hit: float = 0.0      # leave-one-out: the popularity baseline on the last event
    last_pop_ndcg: float = 0.0


def read_line(f, prefix=None) -> tuple[bytes | None, int]:
    """(line, size): the next line of the binary stream `f` ("\\n" included) and the bytes it took; (b"", 0)
    at the end. A line longer than MAX_JSONL_LINE_BYTES (its "\\n" or "\\r\\n" not counted) is (None, size):
    its first MAX_JSONL_LINE_BYTES + 2 bytes are read, the rest in SKIP_BLOCK blocks, none of it kept.
    `prefix` (a hashlib object, or None) is fed every byte the line took. fmrl_replay reads lines the same way."""
    raw = f.readline(MAX_JSONL_LINE_BYTES + 2)
    if prefix is not None:
        prefix.update(raw)
    size = len(raw)
    if size <= MAX_JSONL_LINE_BYTES or size - raw.endswith(b"\n") - raw.endswith(b"\r\n") <= MAX_JSONL_LINE_BYTES:
        return raw, size
    while not raw.endswith(b"\n"):
        raw = f.read(SKIP_BLOCK)
        if not raw:
            break
        end = raw.find(b"\n") + 1
        if end:   # the line ends inside the block: give the rest back
            f.seek(end - len(raw), os.SEEK_CUR)
            raw = raw[:end]
        if prefix is not None:
            prefix.update(raw)
        size += len(raw)
    return None, size


class Replay:
    """One simulation run. `users` maps user key -> UserSlot. Unknown items are resolved by the
    runtime (`Recommender.resolve`) and reported as bad lines."""

    def __init__(self, rec, stream: str | Path, options: Options, out: str | Path | None = None,
                 state_dir: str | Path | None = None, new_items: dict | None = None):
        self.rec, self.stream, self.opt = rec, Path(stream), options
        if not self.stream.is_file():
            raise FmrlError(f"{self.stream}: stream not found")
        if not 1 <= options.k <= rec.k_max:
            raise FmrlError(f"--k {options.k}: must be in [1, {rec.k_max}] (the bundle's k_max)")
        if options.snapshot_every < 1:
            raise FmrlError(f"--snapshot-every {options.snapshot_every}: must be >= 1")
        self.out = Path(out) if out else None
        self.partial_out = self.out.with_name(f".{self.out.name}.partial") if self.out else None
        self.state_dir = Path(state_dir) if state_dir else None
        self.c = Counters()
        self.users: dict[str, UserSlot] = {}
        self.latencies = array("q")
        self.seconds = 0.0
        self._prefix = hashlib.sha256() if self.state_dir else None
        self._out_bytes = 0
        self.scoring = Scoring(options.cut, options.k, rec.num_items, options.window)
        self.new_items = new_items or {}
        self.added: list[str] = []     # ids this replay added, in order


    # -- snapshots -----------------------------------------------------------------------------
    def _options_key(self) -> dict:
        return {"k": self.opt.k, "exclude_seen": self.opt.exclude_seen, "strict": self.opt.strict,
                "bloom": [self.rec.bloom_bits, self.rec.bloom_hashes], "cut": self.opt.cut.to_dict(),
                "window": None if self.opt.window is None else self.opt.window.text,
                "new_items": sorted(self.new_items)}

    def snapshot(self, complete: bool = False) -> None:
        if self.state_dir is None:
            return
        if self._out_file is not None:
            self._out_file.flush()
            os.fsync(self._out_file.fileno())
        c = self.c
        keys = list(self.users)
        header = {
            "version": SNAPSHOT_VERSION, "complete": complete,
            "bundle_fingerprint": self.rec.fingerprint, "options": self._options_key(),
            "stream": {"path": str(self.stream.resolve()), "offset": c.offset, "lines": c.lines,
                       "prefix_sha256": self._prefix.hexdigest()},
            "out": {"path": str(self.out.resolve()) if self.out else None, "bytes": self._out_bytes},
            "counters": {"events": c.events, "hits": c.hits, "ndcg": c.ndcg, "bad": c.bad,
                         "bad_samples": c.bad_samples},
            "scoring": self.scoring.state(),
            "added_items": self.added,
            "state_bytes": self.rec.state_bytes,
            "users": [[key, slot.last_ts, slot.last_hit, slot.last_ndcg, slot.trained, slot.last_pop_hit,
                       slot.last_pop_ndcg] for key, slot in ((k, self.users[k]) for k in keys)],
        }
        head = json.dumps(header, separators=(",", ":")).encode()
        parts = [SNAPSHOT_MAGIC, struct.pack("<IQ", SNAPSHOT_VERSION, len(head)), head]
        parts += [self.users[key].session.to_bytes() for key in keys]
        body = b"".join(parts)
        atomic_write_bytes(self.state_dir / SNAPSHOT, body + hashlib.sha256(body).digest())

    def load_snapshot(self) -> bool:
        """Restore from state_dir/snapshot.bin; False when there is none (a fresh start)."""
        path = self.state_dir / SNAPSHOT
        if not path.exists():
            return False
        data = path.read_bytes()
        if len(data) < len(SNAPSHOT_MAGIC) + 12 + 32 or not data.startswith(SNAPSHOT_MAGIC):
            raise FmrlError(f"{path}: not a simulate snapshot")
        body, digest = data[:-32], data[-32:]
        if hashlib.sha256(body).digest() != digest:
            raise FmrlError(f"{path}: snapshot is corrupt (sha256 mismatch); remove it to start over")
        version, head_len = struct.unpack_from("<IQ", body, len(SNAPSHOT_MAGIC))
        if version != SNAPSHOT_VERSION:
            raise FmrlError(f"{path}: snapshot version {version}, expected {SNAPSHOT_VERSION}")
        start = len(SNAPSHOT_MAGIC) + 12
        header = read_json_bytes(body[start:start + head_len], str(path), "the snapshot header")
        if header["bundle_fingerprint"] != self.rec.fingerprint:
            raise FmrlError(f"{path}: snapshot was made with another bundle; resume with the same --bundle")
        if header["options"] != self._options_key():
            raise FmrlError(f"{path}: snapshot options {header['options']} differ from this run's "
                            f"{self._options_key()}")
        stream = header["stream"]
        size = self.stream.stat().st_size
        if size < stream["offset"]:
            raise FmrlError(f"{self.stream}: shorter than the snapshot's position ({stream['offset']} bytes)")
        prefix = hashlib.sha256()
        with open(self.stream, "rb") as f:
            remaining = stream["offset"]
            while remaining:
                block = f.read(min(remaining, 1 << 20))
                prefix.update(block)
                remaining -= len(block)
        if prefix.hexdigest() != stream["prefix_sha256"]:
            raise FmrlError(f"{self.stream}: differs from the stream the snapshot was taken on")
        self._prefix = prefix
        out = header["out"]
        if (out["path"] is None) != (self.out is None) or (self.out and str(self.out.resolve()) != out["path"]):
            raise FmrlError(f"{path}: snapshot was taken with --out {out['path']}; resume with the same --out")
        if self.out is not None:
            partial = self.partial_out
            if header["complete"] and not partial.exists() and self.out.exists():
                os.replace(self.out, partial)  # a finished replay resumed again: it rewrites nothing
            if not partial.exists() or partial.stat().st_size < out["bytes"]:
                raise FmrlError(f"{partial}: shorter than at the snapshot; cannot resume the --out file")
            os.truncate(partial, out["bytes"])
            self._out_bytes = out["bytes"]
        counters = header["counters"]
        self.c = Counters(lines=stream["lines"], offset=stream["offset"], events=counters["events"],
                          hits=counters["hits"], ndcg=counters["ndcg"],
                          bad={**{kind: 0 for kind in BAD_KINDS}, **counters["bad"]},
                          bad_samples=counters["bad_samples"])
        self.scoring.restore(header["scoring"])
        added = header["added_items"]
        if added:   # the items the replay had added, in order, so indices and session states line up
            self.rec.add_items(added, np.stack([self.new_items[i] for i in added]))
            self.added = list(added)
        state_bytes = header["state_bytes"]
        if state_bytes != self.rec.state_bytes:
            raise FmrlError(f"{path}: state size {state_bytes} differs from the bundle's {self.rec.state_bytes}")
        offset = start + head_len
        users = header["users"]
        if len(body) != offset + len(users) * state_bytes:
            raise FmrlError(f"{path}: snapshot is truncated")
        restore = self.rec.restore
        for key, *fields in users:
            session = restore(body[offset:offset + state_bytes])
            offset += state_bytes
            self.users[key] = UserSlot(session, *fields)
        return True

    # -- the replay ----------------------------------------------------------------------------
    def _bad(self, lineno: int, kind: str, what: str) -> None:
        if self.opt.strict:
            raise FmrlError(f"{self.stream}:{lineno}: {what}")
        c = self.c
        c.bad[kind] += 1
        if len(c.bad_samples) < MAX_BAD_SAMPLES:
            c.bad_samples.append({"line": lineno, "kind": kind, "what": what})

    def run(self, resume: bool = False, progress=None) -> dict:
        """Replay the stream (from the snapshot if `resume`); returns the report. Holds the state dir's
        and --out's locks throughout (see the module docstring)."""
        if resume and self.state_dir is None:
            raise FmrlError("--resume needs --state-dir")
        with contextlib.ExitStack() as locks:
            if self.state_dir is not None:
                self.state_dir.mkdir(parents=True, exist_ok=True)
                fd = exclusive_lock(self.state_dir / LOCK, self.state_dir, "simulate")
                locks.callback(release_lock, self.state_dir / LOCK, fd)
            if self.out is not None:
                locks.enter_context(output_lock(self.out, "simulate"))
            return self._run(resume, progress)

    def _run(self, resume: bool, progress) -> dict:
        if self.state_dir is not None:
            for stale in self.state_dir.glob(f".{SNAPSHOT}.*.tmp"):  # a write cut short by a kill
                stale.unlink(missing_ok=True)
            has_snapshot = (self.state_dir / SNAPSHOT).exists()
            if has_snapshot and not resume:
                raise FmrlError(f"{self.state_dir}: holds a snapshot; pass --resume to continue it, "
                                "or remove the directory to start over")
            self.resumed = self.load_snapshot() if resume else False
        elif resume:
            raise FmrlError("--resume needs --state-dir")
        else:
            self.resumed = False
        try:
            self._replay_to_out(progress)
        except BaseException as e:
            if self.out is None:
                raise
            if self.state_dir is None:  # not resumable: the partial --out is of no use to anyone
                self.partial_out.unlink(missing_ok=True)
            raise_as_write_error(self.out, e, inside=self.partial_out)
        return self.report()

    def _replay_to_out(self, progress) -> None:
        if self.out is not None and not self.resumed:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.partial_out.write_bytes(b"")  # ours: a leftover of a killed run without --state-dir
        self._out_file = open(self.partial_out, "ab") if self.out is not None else None
        try:
            started = time.perf_counter()
            self._loop(progress)
            self.seconds = time.perf_counter() - started
            self.snapshot(complete=True)
        finally:
            if self._out_file is not None:
                self._out_file.close()
        if self.out is not None:
            os.replace(self.partial_out, self.out)

    def _loop(self, progress) -> None:
        rec, opt, c = self.rec, self.opt, self.c
        k, exclude, every, limit = opt.k, opt.exclude_seen, opt.snapshot_every, opt.limit
        new_session = rec.new_session
        users = self.users
        lat_append = self.latencies.append
        perf = time.perf_counter_ns
        gain = [1.0 / math.log2(r + 2) for r in range(k)]
        prefix = self._prefix
        out_file, admit = self._out_file, self._admit
        self._item_ids = rec.item_ids   # the --out ids, renewed when an item is added
        snapshots = self.state_dir is not None
        lineno, offset = c.lines, c.offset
        events, hits, ndcg = c.events, c.hits, c.ndcg
        task = progress.add_task("simulate", total=self.stream.stat().st_size, completed=offset,
                                 info="") if progress else None
        scoring, timed = self.scoring, opt.cut.kind == "time"
        with open(self.stream, "rb") as f:
            f.seek(offset)
            while not (limit and events >= limit):
                raw, size = read_line(f, prefix)
                if not size:
                    break
                lineno += 1
                offset += size
                try:
                    if raw is None:
                        raise BadLine("invalid_json", TOO_LONG)
                    parsed = parse_line(raw)
                    if parsed is None:  # blank line
                        continue
                    user, item, ts, obj = parsed
                    index, slot = admit(user, item, ts, timed)
                except BadLine as bad:
                    c.lines, c.offset, c.events, c.hits, c.ndcg = lineno, offset, events, hits, ndcg
                    self._bad(lineno, bad.kind, bad.what)
                    continue
                except FmrlError as e:  # the Recommender's on_unknown='raise' policy
                    raise FmrlError(f"{self.stream}:{lineno}: {e}") from None
                if slot is None:
                    slot = users[user] = UserSlot(new_session())
                if ts is not None:
                    slot.last_ts = ts
                session = slot.session
                t0 = perf()
                top, scores = session.top(k, exclude)
                ranked = top.tolist()
                rank = ranked.index(index) if index in ranked else None
                if rank is not None:
                    hits += 1
                    g = gain[rank]
                    ndcg += g
                    slot.last_hit, slot.last_ndcg = 1.0, g
                else:
                    slot.last_hit, slot.last_ndcg = 0.0, 0.0
                session.observe_index(index)
                lat_append(perf() - t0)
                events += 1
                if timed:
                    scoring.timed_event(ts, index, rank, slot.trained)
                    if ts < scoring.cut.train_end:
                        slot.trained = True
                else:
                    slot.last_pop_hit, slot.last_pop_ndcg = scoring.popularity_before(index)
                    scoring.count(index)
                if out_file is not None:
                    self._write_out(lineno, obj, slot, ranked, scores)
                if events % 4096 == 0 and task is not None:
                    progress.update(task, completed=offset, info=f"{events:,} events")
                if snapshots and events % every == 0:
                    c.lines, c.offset, c.events, c.hits, c.ndcg = lineno, offset, events, hits, ndcg
                    self.snapshot()
        c.lines, c.offset, c.events, c.hits, c.ndcg = lineno, offset, events, hits, ndcg
        if task is not None:
            progress.update(task, completed=offset, info=f"{events:,} events")

    def _admit(self, user, item, ts, timed: bool) -> tuple[int, UserSlot | None]:
        """(internal index of the item, the user's slot or None for a new user) of a parsed event; raises
        BadLine for an event the replay skips (no ts under a time cut, an unknown item, ts backwards)."""
        if timed and ts is None:
            raise BadLine("missing_ts", "no 'ts': a time cut needs every event's timestamp")
        index = self.rec.resolve(item)
        if index is None:
            index = self._add_item(item, ts, timed)
        slot = self.users.get(user)
        if ts is not None and slot is not None:
            last = slot.last_ts
            if last is not None and ts < last:
                raise BadLine("ts_backwards", f"ts {ts} < {last}, the previous ts of user {user!r}")
        return index, slot

    def _add_item(self, item, ts, timed: bool) -> int:
        """An item the bundle lacks: added from `new_items` (as an app adds an item it meets), else BadLine."""
        vector = self.new_items.get(item)
        if vector is None:
            if timed and ts >= self.opt.cut.test_from:
                self.scoring.new_items["skipped"] += 1
            raise BadLine("unknown_item", f"unknown item {item!r}")
        rec = self.rec
        rec.add_items([item], vector[None])   # as an app adds an item it meets
        self.added.append(item)
        self.scoring.new_items["added"] += 1
        self._item_ids = rec.item_ids
        return rec.resolve(item)

    def _write_out(self, lineno: int, obj: dict, slot: UserSlot, ranked: list, scores) -> None:
        """The event's line of --out: its recommendation, scores and whether it was a hit."""
        item_ids = self._item_ids
        line = json.dumps({"line": lineno, "user": obj["user"], "item": obj["item"],
                           "hit": slot.last_hit > 0, "recs": [item_ids[i - 1] for i in ranked],
                           "scores": [round(s, 6) for s in scores.tolist()]}) + "\n"
        data = line.encode()
        self._out_file.write(data)
        self._out_bytes += len(data)

    # -- report --------------------------------------------------------------------------------
    def report(self) -> dict:
        c, k = self.c, self.opt.k
        lat = np.frombuffer(self.latencies, dtype=np.int64) / 1000.0 if len(self.latencies) else np.zeros(1)
        slots = list(self.users.values())
        last_hit = sum(s.last_hit for s in slots)
        last_ndcg = sum(s.last_ndcg for s in slots)
        n_users = len(slots)
        online = {f"HitRate@{k}": c.hits / c.events if c.events else 0.0,
                  f"NDCG@{k}": c.ndcg / c.events if c.events else 0.0}
        last_event = {f"HitRate@{k}": last_hit / n_users if n_users else 0.0,
                      f"NDCG@{k}": last_ndcg / n_users if n_users else 0.0}
        last_pop = (sum(s.last_pop_hit for s in slots), sum(s.last_pop_ndcg for s in slots))
        return {
            "stream": str(self.stream),
            "bundle": str(self.rec.bundle.path),
            "profile": self.rec.manifest.get("profile"),
            "granularity": self.rec.granularity,
            "k": k,
            "exclude_seen": self.opt.exclude_seen,
            "lines": c.lines,
            "events": c.events,
            "limit": self.opt.limit or None,   # --limit: only the first `limit` events were replayed
            "bad_lines": {kind: n for kind, n in c.bad.items() if n},
            "bad_line_samples": c.bad_samples,
            "latency_us": {"p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)),
                           "p99": float(np.percentile(lat, 99)), "max": float(lat.max())},
            "events_per_s": (len(self.latencies) / self.seconds) if self.seconds > 0 else 0.0,
            **self.scoring.report(online, last_event, n_users, last_pop),
            "online": online,
            "online_last_event": last_event,
            "users": n_users,
            "state_bytes_per_user": self.rec.state_bytes,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "seconds": self.seconds,
        }
