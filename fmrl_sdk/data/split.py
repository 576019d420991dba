"""How a dataset is split into training, validation and test events.

Two kinds:
- leave-one-out (the paper's): each user's last event is the test target, the one before it the
  validation target, the rest is training history.
- time: two global cuts, val_from < test_from (unix seconds). Training uses only events before val_from;
  validation scores every event in [val_from, test_from), test every event from test_from on, each from
  the state built on everything the user did before it (earlier events are context, never targets).

A cut is given as a unix timestamp (number >= 1000), an ISO date or date-time ("2003-01-01",
"2003-01-01T12:00:00"; UTC unless it names an offset), or a fraction of events in (0, 1): 0.8 puts
the cut at the timestamp of the first event after the earliest 80% (events sorted by time).
The default val_from puts as many events in the validation window as the test window holds (the same
share of events just before test_from; real logs are too uneven in time for an equal span of time).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from ..errors import FmrlError

KINDS = ("leave-one-out", "time")
LATEST = 253402300799.0    # 9999-12-31T23:59:59Z: the last instant an ISO date can name


@dataclass(frozen=True)
class SplitSpec:
    """What a recipe or the command line asked for (cuts unresolved: numbers, dates or fractions)."""

    kind: str = "leave-one-out"
    test_from: str | float | int = ""
    val_from: str | float | int = ""

    def check(self, where: str) -> None:
        """One-line FmrlError for a kind or cut that cannot mean anything, before any data is read."""
        if self.kind not in KINDS:
            raise FmrlError(f"{where}: split = {self.kind!r}: expected 'leave-one-out' or 'time'")
        if self.kind == "leave-one-out":
            if self.test_from != "" or self.val_from != "":
                raise FmrlError(f"{where}: test_from / val_from need split = 'time'")
            return
        if self.test_from == "":
            raise FmrlError(f"{where}: split = 'time' needs test_from (a unix timestamp, an ISO date or a "
                            "fraction of events such as 0.8)")
        for name in ("test_from", "val_from"):
            value = getattr(self, name)
            if value != "":
                parse_cut(value, f"{where}: {name}")

    @property
    def is_time(self) -> bool:
        return self.kind == "time"


@dataclass(frozen=True)
class TimeCuts:
    """Resolved cuts of a time split, unix seconds: training < val_from <= validation < test_from <= test."""

    val_from: float
    test_from: float

    def to_dict(self) -> dict:
        return {"kind": "time", "val_from": self.val_from, "test_from": self.test_from,
                "val_from_iso": iso(self.val_from), "test_from_iso": iso(self.test_from)}


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_cut(value, what: str) -> tuple[str, float]:
    """("fraction", f) or ("time", unix seconds) from a recipe/flag value; FmrlError naming `what`."""
    if isinstance(value, bool):
        raise FmrlError(f"{what} = {value!r:.60}: expected a unix timestamp, an ISO date or a fraction in (0, 1)")
    if isinstance(value, str):
        text = value.strip()
        try:
            number = float(text)
        except ValueError:
            number = None
        if number is None:
            try:
                parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                raise FmrlError(f"{what} = {value!r:.60}: expected a unix timestamp, an ISO date such as "
                                "2003-01-01, or a fraction of events such as 0.8") from None
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=timezone.utc)
            return "time", parsed.timestamp()
        value = number
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (type(value) is float and not math.isfinite(value)):
        raise FmrlError(f"{what} = {value!r:.60}: expected a unix timestamp, an ISO date or a fraction in (0, 1)")
    if 0 < value < 1:
        return "fraction", float(value)
    if 1000 <= value <= LATEST:
        return "time", float(value)
    if value > LATEST:
        raise FmrlError(f"{what} = {value!r:.60}: a unix timestamp after the year 9999")
    raise FmrlError(f"{what} = {value!r:.60}: a fraction must be in (0, 1) and a unix timestamp >= 1000")


def resolve_cuts(spec: SplitSpec, times: np.ndarray, source: str) -> TimeCuts:
    """Cuts in unix seconds for the event timestamps `times` [events] (every event of the file).

    FmrlError (naming `source`) when a cut lies outside the data or leaves no training, validation or
    test events.
    """
    ordered = np.sort(np.asarray(times, dtype=np.float64))
    n = len(ordered)
    first, last = ordered[0], ordered[-1]

    def at(value, name: str) -> float:
        kind, number = parse_cut(value, f"{source}: {name}")
        if kind == "fraction":
            return float(ordered[min(n - 1, int(number * n))])
        if not first < number <= last:
            raise FmrlError(f"{source}: {name} = {value!r} ({iso(number)}) is outside the data, whose events "
                            f"run from {iso(first)} to {iso(last)}")
        return number

    test_from = at(spec.test_from, "test_from")
    if spec.val_from != "":
        val_from = at(spec.val_from, "val_from")
    else:  # as many events before test_from as from it on
        test_events = n - int(np.searchsorted(ordered, test_from, side="left"))
        val_from = float(ordered[max(0, n - 2 * test_events)])
    if not val_from < test_from:
        raise FmrlError(f"{source}: val_from ({iso(val_from)}) must come before test_from ({iso(test_from)})")
    train = int(np.searchsorted(ordered, val_from, side="left"))
    val = int(np.searchsorted(ordered, test_from, side="left")) - train
    test = n - train - val
    for count, what in ((train, "training"), (val, "validation"), (test, "test")):
        if count == 0:
            raise FmrlError(f"{source}: the cuts val_from {iso(val_from)}, test_from {iso(test_from)} leave no "
                            f"{what} events (events run from {iso(first)} to {iso(last)})")
    return TimeCuts(val_from, test_from)
