"""What a replay's figures mean in time: in-sample or out-of-sample, known or new users and items, a
bundle's decay window by window, and popularity baselines over the same events.

The cut comes from the bundle's manifest (`split`, recorded from the run at export) or `--score-from`:
- time: events before val_from are the training period (in-sample), events in [val_from, test_from) the
  validation window (held out, but chose the checkpoint), events from test_from on out-of-sample;
- leave-one-out: each user's last event is out-of-sample (the offline test target); the all-events
  figure is mostly in-sample (every event but each user's last two was trained on);
- unknown: a bundle that records no split and no --score-from; nothing is called out-of-sample.

Popularity baselines score the same events with a most-popular list, ranked by count (ties: the lower
internal index first), so every figure has its lift beside it:
- time: `before_cut`, the counts of every event before test_from, frozen at the cut; `trailing`, the counts
  of the events in the trailing window (the --window span before the event, or its last N events);
- leave-one-out: the counts of every event before the scored one.
A hit at rank r (0-based, r < k) adds 1 to HitRate@k and 1 / log2(r + 2) to NDCG@k, as for the model.
"""

from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import dataclass

import numpy as np

from ..data.split import iso, parse_cut
from ..errors import FmrlError

PHASES = ("in_sample", "validation", "out_of_sample")
GROUPS = ("known_user", "new_user", "known_item", "new_item")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
DEFAULT_WINDOW = "7d"


@dataclass(frozen=True)
class Cut:
    """Where out-of-sample starts. kind: time | leave-one-out | unknown; source: manifest | --score-from."""

    kind: str
    source: str
    val_from: float | None = None     # time: end of the training period (None: only test_from is known)
    test_from: float | None = None

    @property
    def train_end(self) -> float | None:
        return self.val_from if self.val_from is not None else self.test_from

    def to_dict(self) -> dict:
        out = {"kind": self.kind, "source": self.source}
        if self.kind == "time":
            out.update(val_from=self.val_from, test_from=self.test_from, test_from_iso=iso(self.test_from),
                       val_from_iso=None if self.val_from is None else iso(self.val_from))
        return out


def cut_for(manifest: dict, score_from: str | None) -> Cut:
    """The cut from --score-from (a unix timestamp or an ISO date) or else the bundle's manifest."""
    if score_from is not None:
        kind, value = parse_cut(score_from, "--score-from")
        if kind != "time":
            raise FmrlError(f"--score-from {score_from!r}: expected a unix timestamp or an ISO date")
        return Cut("time", "--score-from", None, value)
    split = manifest.get("split")
    if not isinstance(split, dict):
        return Cut("unknown", "manifest")
    if split.get("kind") == "time":
        return Cut("time", "manifest", float(split["val_from"]), float(split["test_from"]))
    if split.get("kind") == "leave-one-out":
        return Cut("leave-one-out", "manifest")
    return Cut("unknown", "manifest")


@dataclass(frozen=True)
class Window:
    """Report windows after the cut: `seconds` of stream time, or `events` out-of-sample events."""

    text: str
    seconds: float = 0.0
    events: int = 0


def parse_window(text: str) -> Window:
    """'7d', '12h', '30m', '3600s', '2w' (stream time) or '5000' (events)."""
    text = text.strip()
    if re.fullmatch(r"[1-9]\d*", text):
        return Window(text, events=int(text))
    m = re.fullmatch(r"([1-9]\d*)([smhdw])", text)
    if not m:
        raise FmrlError(f"--window {text!r}: expected a span such as 1d, 7d, 12h, 30m, 2w or a number of events")
    return Window(text, seconds=int(m.group(1)) * UNITS[m.group(2)])


def popularity_rank(counts: np.ndarray, index: int) -> int:
    """0-based rank of item `index` in a most-popular list: items counted more, then equal counts with a
    lower index, come first (counts [1 + items], row 0 unused)."""
    c = counts[index]
    return int(np.count_nonzero(counts[1:] > c) + np.count_nonzero(counts[1:index] == c))


class Scoring:
    """Accumulates the time-aware part of the report, event by event (all of it goes into snapshots)."""

    def __init__(self, cut: Cut, k: int, num_items: int, window: Window | None):
        self.cut, self.k, self.window = cut, k, window
        self.num_items = num_items              # export-time items; larger indices were added by the replay
        self.gain = [1.0 / math.log2(r + 2) for r in range(k)]
        self.phases = {p: [0, 0, 0.0] for p in PHASES}          # events, hits, ndcg
        self.groups = {g: [0, 0, 0.0] for g in GROUPS}
        self.baselines = {"before_cut": [0, 0.0], "trailing": [0, 0.0]}   # hits, ndcg (out-of-sample)
        self.windows: dict[int, list] = {}      # index -> [events, hits, ndcg, pop hits, pop ndcg, trail hits,
        #                                          trail ndcg, first ts, last ts]
        self.new_items = {"skipped": 0, "added": 0}
        self.counts = np.zeros(num_items + 1, dtype=np.int64)   # popularity: events per item
        self.trail_counts = np.zeros(num_items + 1, dtype=np.int64)
        self.trail: deque = deque()            # (ts or event number, index) inside the trailing window
        self.frozen: np.ndarray | None = None   # time: the before-cut ranks of every item, fixed at the cut
        self.oos_events = 0
        self.timed_events = 0                   # every scored event under a time cut (trailing positions)

    # -- per event -----------------------------------------------------------------------------------
    def phase(self, ts) -> str | None:
        """The phase of an event with timestamp `ts` under a time cut (None: not a time cut)."""
        cut = self.cut
        if cut.kind != "time":
            return None
        if ts >= cut.test_from:
            return "out_of_sample"
        if cut.val_from is not None and ts >= cut.val_from:
            return "validation"
        return "in_sample"

    def _grow(self, index: int) -> None:
        if index >= len(self.counts):
            extra = index + 1 - len(self.counts)
            self.counts = np.concatenate([self.counts, np.zeros(extra, dtype=np.int64)])
            self.trail_counts = np.concatenate([self.trail_counts, np.zeros(extra, dtype=np.int64)])
            if self.frozen is not None:
                self.frozen = np.concatenate([self.frozen, self._frozen_ranks(np.zeros(extra, np.int64))[-extra:]])

    def _frozen_ranks(self, extra: np.ndarray | None = None) -> np.ndarray:
        counts = self.counts if extra is None else np.concatenate([self.counts, extra])
        order = np.lexsort((np.arange(1, len(counts)), -counts[1:]))   # by count desc, then index
        ranks = np.zeros(len(counts), dtype=np.int64)
        ranks[1 + order] = np.arange(len(order))
        return ranks

    def _hit(self, rank: int | None) -> tuple[int, float]:
        return (1, self.gain[rank]) if rank is not None and rank < self.k else (0, 0.0)

    def popularity_before(self, index: int) -> tuple[int, float]:
        """Leave-one-out: the popularity list of every event so far scored against item `index`."""
        self._grow(index)
        return self._hit(popularity_rank(self.counts, index))

    def count(self, index: int) -> None:
        """Leave-one-out and unknown cuts: count an event for the running popularity list."""
        self._grow(index)
        self.counts[index] += 1

    def timed_event(self, ts, index: int, rank: int | None, known_user: bool) -> None:
        """A scored event under a time cut: its phase, and for out-of-sample ones the groups, windows and
        baselines (scored before this event joins the trailing counts)."""
        self._grow(index)
        phase = self.phase(ts)
        hit, gain = self._hit(rank)
        acc = self.phases[phase]
        acc[0] += 1
        acc[1] += hit
        acc[2] += gain
        if phase != "out_of_sample":
            self.counts[index] += 1
        else:
            if self.frozen is None:
                self.frozen = self._frozen_ranks()
            pop = self._hit(int(self.frozen[index]))
            self._expire(ts)
            trail = self._hit(popularity_rank(self.trail_counts, index))
            for name, (h, g) in (("before_cut", pop), ("trailing", trail)):
                self.baselines[name][0] += h
                self.baselines[name][1] += g
            for group in ("known_user" if known_user else "new_user",
                          "known_item" if index <= self.num_items else "new_item"):
                g_acc = self.groups[group]
                g_acc[0] += 1
                g_acc[1] += hit
                g_acc[2] += gain
            if self.window is not None:
                w = (self.oos_events // self.window.events if self.window.events
                     else int((ts - self.cut.test_from) // self.window.seconds))
                row = self.windows.setdefault(w, [0, 0, 0.0, 0, 0.0, 0, 0.0, ts, ts])
                for j, v in enumerate((1, hit, gain, pop[0], pop[1], trail[0], trail[1])):
                    row[j] += v
                row[8] = ts
            self.oos_events += 1
        self.timed_events += 1
        self.trail.append((self.timed_events if self.window is not None and self.window.events else ts, index))
        self.trail_counts[index] += 1

    def _expire(self, ts) -> None:
        """Drop events that left the trailing window (its span before `ts`, or its last N events)."""
        w = self.window or parse_window(DEFAULT_WINDOW)
        trail, counts = self.trail, self.trail_counts
        if w.events:
            while trail and trail[0][0] <= self.timed_events - w.events:
                counts[trail.popleft()[1]] -= 1
        else:
            while trail and trail[0][0] < ts - w.seconds:
                counts[trail.popleft()[1]] -= 1

    # -- snapshots -------------------------------------------------------------------------------------
    def state(self) -> dict:
        return {"phases": self.phases, "groups": self.groups, "baselines": self.baselines,
                "windows": [[w, *row] for w, row in sorted(self.windows.items())], "new_items": self.new_items,
                "counts": self.counts.tolist(), "trail": [list(e) for e in self.trail],
                "oos_events": self.oos_events, "timed_events": self.timed_events, "frozen": None if self.frozen is None else self.frozen.tolist()}

    def restore(self, state: dict) -> None:
        self.phases, self.groups = state["phases"], state["groups"]
        self.baselines, self.new_items = state["baselines"], state["new_items"]
        self.windows = {w: row for w, *row in state["windows"]}
        self.counts = np.asarray(state["counts"], dtype=np.int64)
        self.trail = deque(tuple(e) for e in state["trail"])
        self.trail_counts = np.zeros(len(self.counts), dtype=np.int64)
        for _, index in self.trail:
            self.trail_counts[index] += 1
        self.oos_events, self.timed_events = state["oos_events"], state["timed_events"]
        self.frozen = None if state["frozen"] is None else np.asarray(state["frozen"], dtype=np.int64)

    # -- report ----------------------------------------------------------------------------------------
    def _metrics(self, events: int, hits: float, ndcg: float) -> dict:
        k = self.k
        return {"events": events, f"HitRate@{k}": hits / events if events else 0.0,
                f"NDCG@{k}": ndcg / events if events else 0.0}

    def report(self, online: dict, last_event: dict, users: int, last_popularity: tuple[float, float]) -> dict:
        """The time-aware keys of the replay report: "split", "headline", "phases", "out_of_sample"."""
        k, cut = self.k, self.cut
        hr, nd = f"HitRate@{k}", f"NDCG@{k}"
        if cut.kind == "time":
            phases = {p: self._metrics(*self.phases[p]) for p in PHASES}
            oos = phases["out_of_sample"]
            n = oos["events"]
            base = {name: self._metrics(n, *acc) for name, acc in self.baselines.items()}
            base["trailing"]["span"] = (self.window or parse_window(DEFAULT_WINDOW)).text
            label = f"out-of-sample: events from {iso(cut.test_from)} ({n:,})"
            out = {"by_user": {g.split("_")[0]: self._metrics(*self.groups[g]) for g in ("known_user", "new_user")},
                   "by_item": {g.split("_")[0]: self._metrics(*self.groups[g]) for g in ("known_item", "new_item")},
                   "new_item_events": dict(self.new_items),
                   "popularity": base,
                   "lift": {name: {m: (oos[m] / b[m] if b[m] else None) for m in (hr, nd)}
                            for name, b in base.items()},
                   "windows": [self._window_row(w, row) for w, row in sorted(self.windows.items())],
                   "window": None if self.window is None else self.window.text}
            headline = {"label": label, **oos}
        elif cut.kind == "leave-one-out":
            phases = {"all_events_in_sample": online}
            pop = {"events": users, hr: last_popularity[0] / users if users else 0.0,
                   nd: last_popularity[1] / users if users else 0.0}
            out = {"popularity": {"before_event": pop},
                   "lift": {"before_event": {m: (last_event[m] / pop[m] if pop[m] else None) for m in (hr, nd)}}}
            headline = {"label": f"out-of-sample: each user's last event ({users:,})", "events": users, **last_event}
        else:
            phases = {"all_events_unknown": online}
            out = {}
            headline = {"label": "all events; in-sample status unknown (the bundle records no split: "
                                 "pass --score-from)", **online}
        return {"split": cut.to_dict(), "headline": headline, "phases": phases, "out_of_sample": out}

    def _window_row(self, w: int, row: list) -> dict:
        k = self.k
        events, hits, ndcg, ph, pn, th, tn, first, last = row
        out = {"window": w, "first_ts": first, "last_ts": last, "events": events,
               f"HitRate@{k}": hits / events, f"NDCG@{k}": ndcg / events,
               f"popularity_HitRate@{k}": ph / events, f"trailing_HitRate@{k}": th / events}
        if self.window.seconds:
            out["from"] = iso(self.cut.test_from + w * self.window.seconds)
        return out


def plot_windows(report: dict, path) -> None:
    """The out-of-sample HitRate@k per window after the cut (model, popularity, trailing) as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise FmrlError("--curve needs matplotlib (pip install matplotlib)") from None
    import io

    from ..fileio import atomic_write_bytes

    rows = report["out_of_sample"].get("windows") or []
    if not rows:
        raise FmrlError("--curve: no out-of-sample windows to plot (the stream has no events after the cut)")
    k = report["k"]
    x = [r["window"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    counts = ax.twinx()   # how many events each point averages: sparse windows are noisy
    counts.bar(x, [r["events"] for r in rows], color="0.85", width=0.8, zorder=0)
    counts.set_ylabel("events in the window")
    ax.set_zorder(counts.get_zorder() + 1)
    ax.patch.set_visible(False)
    for key, label in ((f"HitRate@{k}", f"bundle (size {report['granularity']})"),
                       (f"popularity_HitRate@{k}", "popularity before the cut"),
                       (f"trailing_HitRate@{k}", "trailing popularity")):
        ax.plot(x, [r[key] for r in rows], marker="o", label=label)
    ax.set_xlabel(f"window after the cut ({report['out_of_sample']['window']} each)")
    ax.set_ylabel(f"HitRate@{k} (out-of-sample)")
    ax.set_title(f"{report['stream']}: decay after {report['split'].get('test_from_iso')}")
    ax.legend()
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
