"""Time-true evaluation: the time split against a hand-computed one, prequential evaluation against a
replay of each user by hand, make-stream's real order, and the whole flow (train with a cut, export,
make-stream, simulate) where the out-of-sample HitRate@10 equals eval's temporal Recall@10."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fmrl_sdk.data.dataset import load_dataset, training_arrays
from fmrl_sdk.data.split import SplitSpec, iso
from fmrl_sdk.errors import FmrlError
from tests.reference_reader import read_interaction_rows
from tests.helpers import DAY, T0, write_timed_log


@pytest.fixture
def log(tmp_path):
    return write_timed_log(tmp_path / "log.csv")


def hand_split(path: Path, val_from: float, test_from: float, min_count: int):
    """The split computed the plain way: rows by (user, ts, file order); the k-core of the rows before
    val_from names the known items and the trained users."""
    rows = []
    with open(path) as f:
        next(f)
        for order, line in enumerate(f):
            u, i, t = line.strip().split(",")
            rows.append((u, i, float(t), order))
    before = [r for r in rows if r[2] < val_from]
    while True:
        users = {u: sum(r[0] == u for r in before) for u in {r[0] for r in before}}
        items = {i: sum(r[1] == i for r in before) for i in {r[1] for r in before}}
        kept = [r for r in before if users[r[0]] >= min_count and items[r[1]] >= min_count]
        if len(kept) == len(before):
            break
        before = kept
    known = sorted({r[1] for r in kept})
    trained = {r[0] for r in kept}
    seqs = {}
    for r in sorted(rows, key=lambda r: (r[0], r[2], r[3])):
        if r[1] in known:
            seqs.setdefault(r[0], []).append((r[1], r[2]))
    return known, trained, seqs


def test_time_split_matches_hand_computed_split(log):
    spec = SplitSpec("time", str(T0 + 60 * DAY), str(T0 + 40 * DAY))
    data = load_dataset(log, min_count=3, split=spec)
    known, trained, seqs = hand_split(log, T0 + 40 * DAY, T0 + 60 * DAY, 3)
    assert data.item_ids == known
    assert data.user_ids == sorted(seqs)
    for u, user in enumerate(data.user_ids):
        items = [known.index(i) + 1 for i, _ in seqs[user]]
        times = [t for _, t in seqs[user]]
        np.testing.assert_array_equal(data.sequences[u], items)
        np.testing.assert_array_equal(data.times[u], times)
        train = [i for i, t in zip(items, times) if t < T0 + 40 * DAY] if user in trained else []
        np.testing.assert_array_equal(data.train_sequences()[u], train)    # nothing after val_from trains
        for split, lo, hi in (("val", 40, 60), ("test", 60, math.inf)):
            expected = [p for p, t in enumerate(times) if T0 + lo * DAY <= t < T0 + hi * DAY]
            np.testing.assert_array_equal(data.target_positions(split)[u], expected)
    # the training arrays hold exactly the training events: every target once (stride = max_len)
    _, targets = training_arrays(data, max_len=50, stride=50)
    trained_events = sorted(i for u, s in enumerate(data.train_sequences()) for i in s.tolist())
    assert sorted(targets[targets > 0].tolist()) == trained_events
    assert any(len(s) for s in data.train_sequences())
    report = data.report["split"]
    assert report["test"]["events_of_new_items"] > 0 and report["test"]["new_users"] > 0


def test_cuts_as_fraction_date_and_timestamp(log):
    times = np.sort([r[2] for r in read_interaction_rows(log)])
    by_fraction = load_dataset(log, split=SplitSpec("time", 0.8))
    assert by_fraction.cuts.test_from == times[int(0.8 * len(times))]
    # default val_from: as many events before test_from as from it on
    test_events = int((times >= by_fraction.cuts.test_from).sum())
    assert by_fraction.cuts.val_from == times[len(times) - 2 * test_events]
    cut = T0 + 50 * DAY
    by_date = load_dataset(log, split=SplitSpec("time", iso(cut), iso(cut - 20 * DAY)))
    by_number = load_dataset(log, split=SplitSpec("time", cut, cut - 20 * DAY))
    assert by_date.cuts == by_number.cuts
    assert (by_date.cuts.val_from, by_date.cuts.test_from) == (cut - 20 * DAY, cut)


@pytest.mark.parametrize("spec, message", [
    (SplitSpec("time", "2030-01-01"), "outside the data"),
    (SplitSpec("time", T0 + 50 * DAY, T0 - DAY), "outside the data"),
    (SplitSpec("time", T0 + 50 * DAY, T0 + 60 * DAY), "must come before"),
    (SplitSpec("time", T0 + 50 * DAY, T0 + 1), "no training events left"),
    (SplitSpec("time", "soon"), "expected a unix timestamp"),
])
def test_bad_cuts_are_one_line_errors(log, spec, message):
    with pytest.raises(FmrlError, match=message) as e:
        load_dataset(log, min_count=3, split=spec)
    assert "\n" not in str(e.value)


def test_time_split_needs_timestamps(tmp_path):
    with pytest.raises(FmrlError, match="P5 folder has no timestamps"):
        load_dataset("demo", split=SplitSpec("time", 0.8))
    path = tmp_path / "partial.csv"
    path.write_text("user,item,timestamp\nu1,i1,1700000000\nu1,i2,\n")
    with pytest.raises(FmrlError, match=r"partial.csv:3: no timestamp, but other rows have one"):
        load_dataset(path, min_count=1, split=SplitSpec("time", 0.5))
    path.write_text("user,item\nu1,i1\nu1,i2\n")
    with pytest.raises(FmrlError, match="split = 'time' needs timestamps"):
        load_dataset(path, min_count=1, split=SplitSpec("time", 0.5))


def test_prequential_evaluation_equals_a_replay_of_each_user_by_hand(log):
    """eval on a time split scores every event in the window from the user's whole history before it:
    the same ranks as stepping the recurrent model through each user's events one at a time."""
    from fmrl_sdk.model.model import FMRLRec, ModelConfig
    from fmrl_sdk.train.evaluate import evaluate

    data = load_dataset(log, min_count=3, split=SplitSpec("time", T0 + 60 * DAY, T0 + 40 * DAY))
    torch.manual_seed(0)
    model = FMRLRec(ModelConfig(num_items=data.num_items, sizes=(8, 16), item_embedding="id", dropout=0.0,
                                lru_dropout=0.0)).eval()
    for split in ("val", "test"):
        got = evaluate(model, data, split, max_len=4, batch_size=3, ks=(5, 10))   # max_len: no effect here
        hits = {8: [], 16: []}
        with torch.no_grad():
            table = model.item_table()
            for seq, positions in zip(data.sequences, data.target_positions(split)):
                hidden, state = model.empty_history_hidden(table), model.initial_state()
                for p, item in enumerate(seq.tolist()):
                    if p in positions:
                        for size in hits:
                            scores = hidden[:size] @ table[1:, :size].T
                            hits[size].append(int((scores >= scores[item - 1]).sum()) - 1)
                    out, state = model.step(table[item][None], state)
                    hidden = out[0]
        for size, ranks in hits.items():
            ranks = np.array(ranks)
            assert len(ranks) == sum(len(p) for p in data.target_positions(split)) > 20
            assert got[size]["Recall@10"] == pytest.approx((ranks < 10).mean(), abs=1e-12)
            assert got[size]["NDCG@5"] == pytest.approx(np.mean((ranks < 5) / np.log2(ranks + 2)), abs=1e-6)


def test_make_stream_keeps_real_timestamps_and_order(log, tmp_path):
    from fmrl_sdk.simulate.stream import make_stream

    rows = read_interaction_rows(log)
    data = load_dataset(log, min_count=3, split=SplitSpec("time", T0 + 60 * DAY, T0 + 40 * DAY))
    out = tmp_path / "events.jsonl"
    info = make_stream(out, data, "test")
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert info["order"] == "real" and len(events) == len(rows)       # every row: new users and items too
    expected = sorted(rows, key=lambda r: (r[2], r[3]))                # time, then file order
    assert [(e["user"], e["item"], e["ts"]) for e in events] == [(r[0], r[1], int(r[2])) for r in expected]
    make_stream(out, data, "val")
    assert all(json.loads(line)["ts"] < T0 + 60 * DAY for line in out.read_text().splitlines())
    # leave-one-out on timestamped data: the k-core rows in real order, each user's last event dropped for val
    loo = load_dataset(log, min_count=3)
    make_stream(out, loo, "val")
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(events) == sum(len(s) - 1 for s in loo.sequences)
    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)
    for u, user in enumerate(loo.user_ids):
        mine = [loo.item_ids.index(e["item"]) + 1 for e in events if e["user"] == user]
        assert mine == loo.sequences[u][:-1].tolist()


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fmrl_sdk.cli", *args], cwd=cwd, capture_output=True, text=True)


@pytest.mark.slow
def test_time_split_flow_out_of_sample_equals_eval(log, tmp_path):
    """train --test-from, export, make-stream, simulate: the replay's out-of-sample HitRate@10 is eval's
    temporal Recall@10 at the bundle's size (fp32), its validation window eval's val figure; unknown items
    are skipped and counted; the headline leads with the out-of-sample figure."""
    run, bundle, stream, report = tmp_path / "run", tmp_path / "bundle", tmp_path / "s.jsonl", tmp_path / "r.json"
    done = _run("train", "--recipe", "demo", "--data", str(log), "--test-from", str(T0 + 60 * DAY),
                "--val-from", str(T0 + 40 * DAY), "--epochs", "2", "--sizes", "8,16", "--out", str(run), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    done = _run("export", "--profile", "edge-server", "--run", str(run), "--size", "16", "--out", str(bundle),
                cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["split"]["kind"] == "time" and manifest["split"]["test_from"] == T0 + 60 * DAY
    assert _run("make-stream", "--run", str(run), "--out", str(stream), cwd=tmp_path).returncode == 0
    done = _run("simulate", "--stream", str(stream), "--bundle", str(bundle), "--report", str(report),
                "--window", "10d", "--curve", str(tmp_path / "curve.png"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "out-of-sample: events from" in done.stdout
    assert done.stdout.index("out-of-sample") < done.stdout.index("in-sample")
    r = json.loads(report.read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    oos, val = r["phases"]["out_of_sample"], r["phases"]["validation"]
    data = load_dataset(log, split=SplitSpec("time", T0 + 60 * DAY, T0 + 40 * DAY))
    assert oos["events"] == sum(len(p) for p in data.target_positions("test"))
    assert r["headline"]["HitRate@10"] == oos["HitRate@10"]
    assert oos["HitRate@10"] == pytest.approx(metrics["test"]["16"]["Recall@10"], abs=1e-6)
    assert oos["NDCG@10"] == pytest.approx(metrics["test"]["16"]["NDCG@10"], abs=1e-6)
    assert val["HitRate@10"] == pytest.approx(metrics["val"]["16"]["Recall@10"], abs=1e-6)
    assert r["bad_lines"]["unknown_item"] == sum(1 for r_ in read_interaction_rows(log)
                                                   if r_[1] not in set(data.item_ids))
    oos_new = r["out_of_sample"]
    assert oos_new["new_item_events"]["skipped"] == data.report["split"]["test"]["events_of_new_items"]
    assert oos_new["by_user"]["new"]["events"] + oos_new["by_user"]["known"]["events"] == oos["events"]
    assert sum(w["events"] for w in oos_new["windows"]) == oos["events"]
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"
    # eval of the run reproduces its own test figure (whole histories)
    done = _run("eval", "--run", str(run), "--no-plot", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    again = json.loads((run / "metrics.json").read_text())
    assert again["test"]["16"]["Recall@10"] == pytest.approx(metrics["test"]["16"]["Recall@10"], abs=1e-9)


@pytest.mark.parametrize("args, message", [
    (["--test-from", "2031-05-01"], "outside the data"),
    (["--test-from", "0.8", "--val-from", "0.9"], "must come before"),
    (["--split", "time"], "needs test_from"),
])
def test_train_with_a_bad_cut_exits_2_and_writes_nothing(log, tmp_path, args, message):
    done = _run("train", "--recipe", "demo", "--data", str(log), "--out", str(tmp_path / "run"), *args,
                cwd=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_train_time_split_on_p5_data_exits_2(tmp_path):
    done = _run("train", "--recipe", "demo", "--test-from", "0.8", "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert done.returncode == 2 and "no timestamps" in done.stderr
    assert not (tmp_path / "run").exists()


def test_popularity_baselines_and_new_items_by_hand(art, rec, dataset, tmp_path):
    """--score-from on the shared bundle: the before-cut popularity list is the counts of every event
    before the cut (ties: lower index first), scored on every event after it; an item the bundle lacks
    is added when first met (new_items) and then scored as a new item."""
    from fmrl_sdk.simulate.commands import simulate

    ids = dataset.item_ids
    rng = np.random.default_rng(5)
    events, ts = [], T0
    for n in range(400):
        user = f"u{rng.integers(30)}"
        item = "fresh-1" if n in (300, 350, 390) else ids[int(rng.zipf(1.6)) % 60]
        events.append({"user": user, "item": item, "ts": ts})
        ts += 600
    cut = events[250]["ts"]
    stream = tmp_path / "s.jsonl"
    stream.write_text("".join(json.dumps(e) + "\n" for e in events))
    vector = np.full(rec.granularity, 0.5, dtype=np.float32)  # rec: only read here
    from fmrl_sdk.simulate.replay import Options, Replay
    from fmrl_sdk.simulate.scoring import Cut, parse_window

    fresh = _fresh(art)
    replay = Replay(fresh, stream, Options(k=10, cut=Cut("time", "--score-from", None, float(cut)),
                                         window=parse_window("1h")), new_items={"fresh-1": vector})
    r = replay.run()
    counts = {}
    for e in events[:250]:
        counts[e["item"]] = counts.get(e["item"], 0) + 1
    ranking = sorted(counts, key=lambda i: (-counts[i], ids.index(i)))[:10]   # known items only before the cut
    after = events[250:]
    hits = [e["item"] in ranking for e in after]
    base = r["out_of_sample"]["popularity"]["before_cut"]
    assert base["events"] == len(after) == r["phases"]["out_of_sample"]["events"]
    assert base["HitRate@10"] == pytest.approx(np.mean(hits), abs=1e-12)
    assert r["out_of_sample"]["new_item_events"] == {"skipped": 0, "added": 1}
    assert r["out_of_sample"]["by_item"]["new"]["events"] == 3
    assert "fresh-1" in fresh.item_ids and "fresh-1" not in rec.item_ids
    # the same stream without new items: the three events are skipped and counted
    plain = simulate(stream, rec=_fresh(art), score_from=str(cut), window="1h")
    assert plain["out_of_sample"]["new_item_events"] == {"skipped": 3, "added": 0}
    assert plain["bad_lines"] == {"unknown_item": 3}


def _fresh(art):
    from fmrl_sdk.runtime import Recommender

    return Recommender.open(art.bundle)


def test_leave_one_out_headline_is_the_last_event(art, rec, dataset, tmp_path):
    from fmrl_sdk.simulate.commands import simulate
    from fmrl_sdk.simulate.stream import write_stream

    stream = tmp_path / "loo.jsonl"
    write_stream(stream, dataset.user_ids[:200], dataset.item_ids, dataset.sequences[:200], "test", seed=1)
    r = simulate(stream, rec=_fresh(art))
    assert r["split"]["kind"] == "leave-one-out"
    assert r["headline"]["events"] == 200
    assert r["headline"]["HitRate@10"] == r["online_last_event"]["HitRate@10"]
    assert r["phases"] == {"all_events_in_sample": r["online"]}
    with pytest.raises(FmrlError, match="needs a time cut"):
        simulate(stream, rec=_fresh(art), window="1d")


@pytest.mark.parametrize("value", [2**70, 2**10000, True, float("inf"), float("nan")])
def test_cuts_that_are_not_usable_numbers_are_one_line(value):
    """A recipe's test_from = 2**70 was a TypeError traceback (np.isfinite of a Python int); True a cut."""
    from fmrl_sdk.data.split import parse_cut

    with pytest.raises(FmrlError) as e:
        parse_cut(value, "test_from")
    assert str(e.value).startswith("test_from = ") and "\n" not in str(e.value) and len(str(e.value)) < 200
