"""fmrl-sdk simulate / make-stream: event parsing, --strict, resume after SIGKILL, online == offline.

Uses the run and size-16 bundle of tests/test_runtime.py (built once per pytest session).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fmrl_sdk.simulate.commands import simulate
from fmrl_sdk.simulate.replay import TIMING_KEYS, Options, Replay
from fmrl_sdk.simulate.stream import write_stream
from tests.helpers import SIZE

ROOT = Path(__file__).resolve().parent.parent
REPORT_KEYS = {"events", "bad_lines", "latency_us", "events_per_s", "online", "online_last_event", "users",
               "state_bytes_per_user", "peak_rss_bytes"}


@pytest.fixture(scope="module")
def dataset():
    from fmrl_sdk.data.dataset import load_dataset

    return load_dataset("demo")


def cli(*args) -> int:
    """Run the console entry point in-process; returns its exit code."""
    from fmrl_sdk.cli import main

    old = sys.argv
    sys.argv = ["fmrl-sdk", *map(str, args)]
    try:
        main()
    except SystemExit as e:
        return int(e.code or 0)
    finally:
        sys.argv = old
    return 0


def read_events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_unknown_option_is_a_one_line_error(capsys):
    """Usage errors raised by typer's own click (typer 0.29 vendors it) reach the entry point's handler."""
    assert cli("simulate", "--no-such-option") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "--no-such-option" in err[0], err


# ----------------------------------------------------------------------------------------------
# make-stream


def test_make_stream(tmp_path, art, dataset):
    out = tmp_path / "val.jsonl"
    assert cli("make-stream", "--data", "demo", "--split", "val", "--seed", "3", "--out", out) == 0
    events = read_events(out)
    assert len(events) == sum(len(s) - 1 for s in dataset.sequences)
    ts = [e["ts"] for e in events]
    assert all(b > a for a, b in zip(ts, ts[1:]))
    per_user: dict[str, list[str]] = {}
    for e in events:
        per_user.setdefault(e["user"], []).append(e["item"])
    assert len(per_user) == dataset.num_users
    for user, seq in zip(dataset.user_ids, dataset.sequences):  # each user's order kept, up to the split
        assert per_user[user] == [dataset.item_ids[i - 1] for i in seq[:-1]]
    first = [e["user"] for e in events[:200]]
    assert len(set(first)) > 50  # interleaved, not user after user

    again = tmp_path / "again.jsonl"
    assert cli("make-stream", "--run", art.run_dir, "--split", "val", "--seed", "3", "--out", again) == 0
    assert again.read_bytes() == out.read_bytes()  # deterministic; --run finds the same data
    other = tmp_path / "other.jsonl"
    assert cli("make-stream", "--data", "demo", "--split", "train", "--seed", "4", "--out", other) == 0
    assert len(read_events(other)) == sum(len(s) - 2 for s in dataset.sequences)
    assert cli("make-stream", "--data", "demo", "--split", "nope", "--out", other) == 2


# ----------------------------------------------------------------------------------------------
# Bad lines


def test_bad_lines_are_counted_by_kind_with_line_numbers(tmp_path, rec, dataset):
    i1, i2, i3 = dataset.item_ids[:3]
    lines = [
        json.dumps({"user": "u1", "item": i1, "ts": 10}),            # 1 ok
        "{not json",                                                 # 2 invalid_json
        "[1, 2]",                                                    # 3 not_object
        json.dumps({"item": i1}),                                    # 4 missing_field
        json.dumps({"user": "u1", "item": 3.5}),                     # 5 wrong_type
        json.dumps({"user": "u1", "item": i2, "ts": "yesterday"}),   # 6 wrong_type
        json.dumps({"user": "u1", "item": "no-such-item"}),          # 7 unknown_item
        json.dumps({"user": "u1", "item": i2, "ts": 5}),             # 8 ts_backwards
        "",                                                          # 9 blank: skipped
        json.dumps({"user": 7, "item": i3, "event": "view"}),        # 10 ok (integer user id)
        json.dumps({"user": "7", "item": i2, "ts": 1}),              # 11 ok (same user as 7)
        json.dumps({"user": "u1", "item": i2, "ts": 10}),            # 12 ok (equal ts is fine)
        None,                                                        # 13 invalid_json (not UTF-8)
        json.dumps({"user": True, "item": i1}),                      # 14 wrong_type
        json.dumps({"user": "u2", "item": i1, "event": 5}),          # 15 wrong_type
        json.dumps({"user": "u1", "item": ""}),                      # 16 missing_field
    ]
    stream = tmp_path / "events.jsonl"
    stream.write_bytes(b"".join(b"\xff\xfe\x00garbage\n" if line is None else (line + "\n").encode()
                                for line in lines))
    report = simulate(stream, rec=rec, k=5)
    assert REPORT_KEYS <= set(report)
    assert report["lines"] == 16 and report["events"] == 4 and report["users"] == 2
    assert report["bad_lines"] == {"invalid_json": 2, "not_object": 1, "missing_field": 2, "wrong_type": 4,
                                   "unknown_item": 1, "ts_backwards": 1}
    assert [(s["line"], s["kind"]) for s in report["bad_line_samples"]] == [
        (2, "invalid_json"), (3, "not_object"), (4, "missing_field"), (5, "wrong_type"), (6, "wrong_type"),
        (7, "unknown_item"), (8, "ts_backwards"), (13, "invalid_json"), (14, "wrong_type"), (15, "wrong_type"),
        (16, "missing_field")]
    assert report["state_bytes_per_user"] == rec.state_bytes
    assert set(report["online"]) == {"HitRate@5", "NDCG@5"}


def test_strict_stops_at_first_bad_line_with_exit_2(tmp_path, art, dataset, capsys, monkeypatch):
    stream = tmp_path / "events.jsonl"
    stream.write_text(json.dumps({"user": "a", "item": dataset.item_ids[0]}) + "\n"
                      + json.dumps({"user": "a", "item": "missing-item"}) + "\n" + "oops\n")
    # no --bundle: the newest bundle under ./bundles
    (tmp_path / "bundles").mkdir()
    shutil.copytree(art.bundle, tmp_path / "bundles" / "phone")
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert cli("simulate", "--stream", stream, "--strict", "--quiet") == 2
    err = capsys.readouterr().err
    assert f"{stream}:2: unknown item 'missing-item'" in err
    assert cli("simulate", "--stream", stream, "--quiet", "--report", tmp_path / "r.json") == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["bad_lines"] == {"unknown_item": 1, "invalid_json": 1} and report["events"] == 1


# ----------------------------------------------------------------------------------------------
# Resume after SIGKILL


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path, art, rec, dataset):
    stream = tmp_path / "events.jsonl"
    write_stream(stream, dataset.user_ids, dataset.item_ids, dataset.sequences, "test", seed=1)
    with open(stream, "a") as f:  # a few bad lines in the middle of the run too
        f.write("not json\n" + json.dumps({"user": "zz", "item": "nope"}) + "\n")
        for e in read_events(stream)[:300]:
            f.write(json.dumps({**e, "ts": e["ts"] + 10 ** 9}) + "\n")
    reference = simulate(stream, rec=rec, out=tmp_path / "ref.jsonl")

    state_dir, recs = tmp_path / "state", tmp_path / "recs.jsonl"
    base = [sys.executable, "-c", "from fmrl_sdk.cli import main; main()", "simulate", "--stream", str(stream),
            "--bundle", str(art.bundle), "--state-dir", str(state_dir), "--snapshot-every", "1000",
            "--out", str(recs), "--quiet"]
    proc = subprocess.Popen(base, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while not (state_dir / "snapshot.bin").exists():
        assert proc.poll() is None, "simulate ended before its first snapshot"
        assert time.monotonic() < deadline, "no snapshot written"
        time.sleep(0.01)
    time.sleep(0.3)  # somewhere between snapshots
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    header_events = _snapshot_events(state_dir / "snapshot.bin")
    assert 0 < header_events < reference["events"]

    # without --resume an existing snapshot is refused; with it the run continues
    refuse = subprocess.run(base, cwd=ROOT, capture_output=True, text=True)
    assert refuse.returncode == 2 and "--resume" in refuse.stderr
    done = subprocess.run(base + ["--resume", "--report", str(tmp_path / "resumed.json")], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    resumed = json.loads((tmp_path / "resumed.json").read_text())
    strip = lambda r: {k: v for k, v in r.items() if k not in TIMING_KEYS and k not in ("stream", "bundle")}
    assert strip(resumed) == strip(json.loads(json.dumps(reference)))
    assert recs.read_bytes() == (tmp_path / "ref.jsonl").read_bytes()


def _snapshot_events(path: Path) -> int:
    import struct

    data = path.read_bytes()
    (length,) = struct.unpack_from("<Q", data, 12)
    return json.loads(data[20:20 + length])["counters"]["events"]


# ----------------------------------------------------------------------------------------------
# Online (last event) == offline evaluation


def test_online_last_event_equals_offline_eval(tmp_path, art, rec, dataset):
    """On the test split, each user's last event is the leave-one-out test target with the whole
    history before it. The offline model truncates histories to max_len = 50 while the recurrent
    state sees everything, so only users with at most 50 history items are compared (most demo users)."""
    from fmrl_sdk.data.dataset import Dataset
    from fmrl_sdk.train.evaluate import evaluate
    from fmrl_sdk.train.run import load_run

    keep = [u for u, s in enumerate(dataset.sequences) if len(s) - 1 <= 50]
    assert len(keep) > 0.95 * dataset.num_users
    subset = Dataset(name="demo-short", source=dataset.source, sequences=[dataset.sequences[u] for u in keep],
                     user_ids=[dataset.user_ids[u] for u in keep], item_ids=dataset.item_ids)
    stream = tmp_path / "test.jsonl"
    write_stream(stream, subset.user_ids, subset.item_ids, subset.sequences, "test", seed=0)
    model = load_run(art.run_dir).model
    offline = evaluate(model, subset, "test", max_len=50, ks=(10, 100))[SIZE]

    # per-user offline ranks at the bundle's granularity, same protocol (history not masked)
    histories, targets = subset.history_and_target("test")
    from fmrl_sdk.data.dataset import left_pad

    with torch.no_grad():
        table = model.item_table()
        hidden = model(torch.from_numpy(left_pad(histories, 50)), table)[:, -1, :SIZE]
        scores = hidden @ table[1:, :SIZE].T
        ranks = (scores > scores.gather(1, torch.from_numpy(targets - 1)[:, None])).sum(1).numpy()

    for k in (10, 100):
        replay = Replay(rec, stream, Options(k=k))
        report = replay.run()
        assert report["users"] == len(keep)
        online = report["online_last_event"]
        assert online[f"HitRate@{k}"] == pytest.approx(offline[f"Recall@{k}"], abs=1e-9)
        assert online[f"NDCG@{k}"] == pytest.approx(offline[f"NDCG@{k}"], abs=1e-6)
        hits = np.array([replay.users[u].last_hit for u in subset.user_ids])
        np.testing.assert_array_equal(hits, (ranks < k).astype(float))
        assert hits.sum() > 0
