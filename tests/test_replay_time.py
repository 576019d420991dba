"""fmrl_replay's time-aware report (split, headline, phases, out_of_sample) against `simulate`'s
(fmrl_sdk/simulate/scoring.py) on synthetic streams with real-looking timestamps: a --score-from cut with
day and event-count windows, the manifest's time / leave-one-out / no split, and the same refusals."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from fmrl_sdk.errors import FmrlError
from fmrl_sdk.simulate.commands import simulate
from fmrl_sdk.simulate.replay import TIMING_KEYS
from tests.helpers import rewrite_manifest, copy_bundle, replay, error_line

T0 = 1458600000          # 2016-03-21T22:40:00Z
DAY = 86400
CUT = T0 + 6 * DAY + 3600 * 7 + 11   # not on a day boundary: window starts are cut + n days
CUT_ISO = "2016-03-28T05:40:11Z"
EXECUTORCH_LOG = re.compile(r"[DIWE] \d\d:\d\d:\d\d\.\d+ executorch:")


def time_stream(path: Path, dataset, seed: int = 0) -> None:
    """60 users over 10 days (users 40+ only after CUT), items from their real sequences with a few popular
    items mixed in, ts on a 5-minute grid (ties across users), some float ts, and bad lines: unknown items
    before and after the cut, events without ts, one ts going backwards."""
    rng = np.random.default_rng(seed)
    popular = [dataset.item_ids[i] for i in (3, 7, 11, 19, 23)]
    rows = []
    for u in range(60):
        seq = [dataset.item_ids[i - 1] for i in dataset.sequences[u].tolist()[:18]]
        lo, hi = (T0, T0 + 10 * DAY) if u < 40 else (CUT, T0 + 10 * DAY)
        times = np.sort(rng.integers(lo, hi, size=len(seq)) // 300 * 300)
        if u >= 40:
            times = np.maximum(times, CUT)
        for j, (ts, item) in enumerate(zip(times.tolist(), seq)):
            if rng.random() < 0.25:
                item = popular[int(rng.integers(len(popular)))]
            ts = ts + 0.5 if (u + j) % 9 == 0 else ts   # a few float timestamps
            rows.append((ts, len(rows), {"user": f"user{u}", "item": item, "ts": ts}))
    rows.sort(key=lambda r: (r[0], r[1]))
    lines = [json.dumps(r[2]) for r in rows]
    known = dataset.item_ids[5]
    extras = [
        (40, {"user": "user1", "item": "no-such-item-a", "ts": T0 + 3600}),            # unknown, in-sample
        (len(lines) - 30, {"user": "user2", "item": "no-such-item-b", "ts": CUT + 5 * DAY}),  # unknown, out-of-sample
        (len(lines) - 20, {"user": "user3", "item": "no-such-item-c", "ts": CUT}),    # unknown at the cut itself
        (len(lines) - 10, {"user": "user4", "item": known}),                          # missing_ts
        (100, {"user": "user5", "item": known, "ts": None}),                          # missing_ts (null)
        (len(lines) - 5, {"user": "user0", "item": known, "ts": T0}),                 # ts_backwards
        (200, {"user": "ghost", "item": "no-such-item-d"}),                           # missing_ts before the item
    ]
    for at, obj in sorted(extras, key=lambda e: -e[0]):
        lines.insert(at, json.dumps(obj))
    lines.append(json.dumps({"user": "user50", "item": known, "ts": T0 + 10 * DAY + 0.25}))  # a float last ts
    path.write_text("\n".join(lines) + "\n")


def comparable(report: dict) -> dict:
    """The report without timing keys, the C-only "runtime", Python's "limit", and the bad-line messages
    (the two runtimes word them differently; their line numbers and kinds are compared)."""
    out = {k: v for k, v in report.items() if k not in (*TIMING_KEYS, "runtime", "limit")}
    out["bad_line_samples"] = [(s["line"], s["kind"]) for s in out["bad_line_samples"]]
    return out


def assert_same(c, py, where="report"):
    """Equal values and types, the same key order in every object."""
    if isinstance(py, dict):
        assert isinstance(c, dict) and list(c) == list(py), (where, list(c), list(py))
        for key in py:
            assert_same(c[key], py[key], f"{where}.{key}")
    elif isinstance(py, (list, tuple)):
        assert isinstance(c, (list, tuple)) and len(c) == len(py), where
        for i, (a, b) in enumerate(zip(c, py)):
            assert_same(a, b, f"{where}[{i}]")
    elif isinstance(py, float):   # summed in the same order: the same doubles
        assert isinstance(c, float) and c == py, (where, c, py)
    else:
        assert c == py and type(c) is type(py), (where, c, py)


def both(build, bundle, stream, tmp_path, rec=None, **kw):
    py = simulate(stream, bundle=None if rec is not None else bundle, rec=rec, k=10, **kw)
    args = ["--bundle", bundle, "--stream", stream, "--report", tmp_path / "c.json", "--quiet"]
    if kw.get("score_from") is not None:
        args += ["--score-from", kw["score_from"]]
    if kw.get("window") is not None:
        args += ["--window", kw["window"]]
    replay(build, *args)
    return json.loads((tmp_path / "c.json").read_text()), py


@pytest.mark.parametrize("score_from,window", [(CUT_ISO, "1d"), (str(CUT), "50"), (CUT_ISO, None)])
def test_score_from_cut_matches_simulate(art, rec, dataset, cpp_build, tmp_path, score_from, window):
    stream = tmp_path / "events.jsonl"
    time_stream(stream, dataset)
    c, py = both(cpp_build, art.bundle, stream, tmp_path, rec=rec, score_from=score_from, window=window)
    oos = py["out_of_sample"]
    # the stream exercises what it should
    assert py["split"] == {"kind": "time", "source": "--score-from", "val_from": None, "test_from": float(CUT),
                           "test_from_iso": CUT_ISO, "val_from_iso": None}
    assert py["bad_lines"] == {"unknown_item": 3, "ts_backwards": 1, "missing_ts": 3}
    assert oos["new_item_events"] == {"skipped": 2, "added": 0}
    assert oos["by_user"]["new"]["events"] > 50 and oos["by_user"]["known"]["events"] > 100
    assert py["phases"]["in_sample"]["events"] > 150 and py["phases"]["validation"]["events"] == 0
    assert oos["popularity"]["before_cut"]["HitRate@10"] > 0 and oos["popularity"]["trailing"]["HitRate@10"] > 0
    assert oos["window"] == oos["popularity"]["trailing"]["span"] == (window or "7d")
    assert len(oos["windows"]) >= (1 if window is None else 3)
    if window == "1d":
        assert oos["windows"][0]["from"] == CUT_ISO and oos["windows"][1]["from"] == "2016-03-29T05:40:11Z"
        assert isinstance(oos["windows"][0]["first_ts"], int) and oos["windows"][-1]["last_ts"] == T0 + 10 * DAY + 0.25
    if window == "50":
        assert all("from" not in w for w in oos["windows"]) and oos["windows"][0]["events"] == 50
    assert py["headline"]["label"].startswith(f"out-of-sample: events from {CUT_ISO} (")
    assert_same(comparable(c), comparable(py))


def manifest_variant(src: Path, dst: Path, split) -> Path:
    """A copy of the bundle whose manifest has `split` (None: no "split" key), still a valid bundle."""
    bundle = copy_bundle(src, dst)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest.pop("split", None)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    rewrite_manifest(bundle, **({} if split is None else {"split": split}))
    return bundle


def test_manifest_cuts_match_simulate(art, rec, dataset, cpp_build, tmp_path):
    stream = tmp_path / "events.jsonl"
    time_stream(stream, dataset, seed=1)
    assert rec.manifest.get("split") == {"kind": "leave-one-out"}   # the shared bundle's run has no time split
    # leave-one-out (the shared bundle): popularity before each user's last event
    c, py = both(cpp_build, art.bundle, stream, tmp_path, rec=rec)
    assert py["split"] == {"kind": "leave-one-out", "source": "manifest"}
    assert py["out_of_sample"]["popularity"]["before_event"]["HitRate@10"] > 0
    assert "missing_ts" not in py["bad_lines"]
    assert_same(comparable(c), comparable(py))
    # a time split recorded in the manifest: in-sample, validation and out-of-sample, default 7d windows
    split = {"kind": "time", "val_from": CUT - 2 * DAY, "test_from": CUT, "val_from_iso": "x", "test_from_iso": "y"}
    timed = manifest_variant(art.bundle, tmp_path / "timed", split)
    c, py = both(cpp_build, timed, stream, tmp_path)
    assert py["split"]["source"] == "manifest" and py["phases"]["validation"]["events"] > 50
    assert py["out_of_sample"]["window"] == "7d"
    assert_same(comparable(c), comparable(py))
    # ... with --window 12h and --score-from overriding the manifest
    c, py = both(cpp_build, timed, stream, tmp_path, window="12h")
    assert_same(comparable(c), comparable(py))
    c, py = both(cpp_build, timed, stream, tmp_path, score_from="2016-03-27", window="30m")
    assert py["split"]["test_from_iso"] == "2016-03-27T00:00:00Z"
    assert_same(comparable(c), comparable(py))
    # no split recorded: all events, in-sample status unknown
    unknown = manifest_variant(art.bundle, tmp_path / "nosplit", None)
    c, py = both(cpp_build, unknown, stream, tmp_path)
    assert py["split"] == {"kind": "unknown", "source": "manifest"} and py["out_of_sample"] == {}
    assert_same(comparable(c), comparable(py))


def test_empty_out_of_sample_matches_simulate(art, rec, dataset, cpp_build, tmp_path):
    """A cut after every event: no out-of-sample events, no windows, lifts of None."""
    stream = tmp_path / "events.jsonl"
    time_stream(stream, dataset)
    c, py = both(cpp_build, art.bundle, stream, tmp_path, rec=rec, score_from="2030-01-01T00:00:00+02:00")
    assert py["out_of_sample"]["windows"] == [] and py["headline"]["events"] == 0
    assert py["out_of_sample"]["lift"]["before_cut"] == {"HitRate@10": None, "NDCG@10": None}
    assert_same(comparable(c), comparable(py))


@pytest.mark.parametrize("score_from", ["1458600000", "1458600000.25", "2016-03-21", "2016-03-21T22:40:00",
                                        "2016-03-21 22:40:00.5", "2016-03-21T22:40:00Z", "2016-03-21T23:40:00+01:00",
                                        "20160321T224000", " 1_458_600_000 "])
def test_score_from_forms_match_simulate(art, rec, cpp_build, tmp_path, score_from):
    stream = tmp_path / "events.jsonl"
    stream.write_text(json.dumps({"user": "u", "item": rec.item_ids[0], "ts": T0}) + "\n")
    c, py = both(cpp_build, art.bundle, stream, tmp_path, rec=rec, score_from=score_from)
    assert_same(c["split"], py["split"])


@pytest.mark.parametrize("flags", [
    ["--score-from", CUT_ISO, "--window", "5x"],
    ["--score-from", CUT_ISO, "--window", "0"],
    ["--score-from", CUT_ISO, "--window", " 07d"],
    ["--score-from", "nonsense"],
    ["--score-from", "0.8"],
    ["--score-from", "500"],
    ["--score-from", "nan"],
    ["--score-from", "2016-02-30"],
    ["--window", "1d"],                      # the shared bundle is leave-one-out: no time cut
    ["--window", "5x"],                      # refused for the missing cut first, as simulate does
])
def test_bad_time_options_are_refused_like_simulate(art, rec, cpp_build, tmp_path, flags):
    stream = tmp_path / "events.jsonl"
    stream.write_text(json.dumps({"user": "u", "item": rec.item_ids[0], "ts": T0}) + "\n")
    kw = {"score_from": None, "window": None}
    for flag, value in zip(flags[::2], flags[1::2]):
        kw[flag[2:].replace("-", "_")] = value
    with pytest.raises(FmrlError) as python_error:
        simulate(stream, rec=rec, report=tmp_path / "py.json", **kw)
    report = tmp_path / "c.json"
    result = replay(cpp_build, "--bundle", art.bundle, "--stream", stream, "--report", report, *flags, check=False)
    assert error_line(result) == str(python_error.value)
    others = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("error: ")]
    assert all(EXECUTORCH_LOG.match(line) for line in others), result.stderr   # its own log lines aside
    assert not report.exists() and not (tmp_path / "py.json").exists()
