"""Readers, leave-one-out split, k-core filtering and bad input."""

import gzip
import json

import numpy as np
import pytest

from fmrl_sdk.data import load_dataset
from fmrl_sdk.data.dataset import left_pad, training_arrays
from fmrl_sdk.errors import FmrlError

BEAUTY_USERS, BEAUTY_ITEMS = 22363, 12101


def test_demo_set_is_real_beauty_subset_with_notices():
    data = load_dataset("demo")
    assert data.stats()["users"] == 2000 and data.num_items == 7374
    assert all(len(s) >= 5 for s in data.sequences)
    assert sum(bool(m.get("title")) for m in data.item_meta) > 7000
    from fmrl_sdk.data import DEMO_DATA_DIR
    assert (DEMO_DATA_DIR / "LICENSE-interactions-MIT.txt").exists()
    assert (DEMO_DATA_DIR / "LICENSE-titles-BSD3.txt").exists()


def test_shared_beauty_statistics(shared_beauty):
    data = load_dataset(shared_beauty)
    assert data.stats()["users"] == BEAUTY_USERS and data.num_items == BEAUTY_ITEMS
    assert data.stats()["interactions"] == 198502
    assert data.item_ids[0] == "B004756YJA"
    assert data.item_meta[0]["brand"] == "OPI"


def test_leave_one_out_split():
    data = load_dataset("demo")
    seq = data.sequences[3]
    hist_val, val = data.history_and_target("val")
    hist_test, test = data.history_and_target("test")
    assert val[3] == seq[-2] and test[3] == seq[-1]
    assert list(hist_val[3]) == list(seq[:-2]) and list(hist_test[3]) == list(seq[:-1])
    assert list(data.train_sequences()[3]) == list(seq[:-2])


def test_training_arrays_are_left_padded_and_cut_to_max_len():
    data = load_dataset("demo")
    inputs, targets = training_arrays(data, 5)
    long_user = int(np.argmax([len(s) for s in data.sequences]))
    train = data.train_sequences()[long_user]
    assert list(targets[long_user]) == list(train[-5:])
    assert list(inputs[long_user]) == list(train[-6:-1])
    assert left_pad([np.array([1, 2])], 4).tolist() == [[0, 0, 1, 2]]


def write_p5(folder, seq_lines, meta_lines=None, maps=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sequential_data.txt").write_text("\n".join(seq_lines) + "\n")
    if maps is not None:
        (folder / "datamaps.json").write_text(json.dumps(maps))
    if meta_lines is not None:
        with gzip.open(folder / "meta.json.gz", "wt") as f:
            f.write("\n".join(meta_lines) + "\n")
    return folder


def test_p5_meta_python_literals_are_parsed_without_eval(tmp_path):
    maps = {"id2item": {"1": "A1", "2": "A2", "3": "A3"}}
    meta = ["{'asin': 'A1', 'title': 'Nail polish', 'categories': [['Beauty', 'Nails']]}",
            '{"asin": "A2", "brand": "OPI"}',
            "{'asin': 'A3', 'title': __import__('os').getcwd()}"]
    folder = write_p5(tmp_path / "p5", ["1 1 2 3", "2 3 2 1"], meta[:2], maps)
    data = load_dataset(folder)
    assert data.item_meta[0]["title"] == "Nail polish" and data.item_meta[1]["brand"] == "OPI"
    bad = write_p5(tmp_path / "bad", ["1 1 2 3"], meta, maps)
    with pytest.raises(FmrlError, match=r"meta.json.gz:3: neither JSON nor a Python dict literal"):
        load_dataset(bad)


@pytest.mark.parametrize("lines,match", [
    (["1 1 x 3"], r"sequential_data.txt:1: expected integers"),
    (["1 1 2 3", "2 0 1 2"], r"sequential_data.txt:2: need a user and at least one item id >= 1"),
    (["1 1 2 3", "2 1 2"], r"sequential_data.txt:2: user has 2 items"),
])
def test_p5_bad_lines_name_file_and_line(tmp_path, lines, match):
    with pytest.raises(FmrlError, match=match):
        load_dataset(write_p5(tmp_path / "p5", lines))


def test_interactions_csv_time_order_and_k_core(tmp_path):
    rows = ["user,item,timestamp"]
    # u1..u3 interact with a,b,c (3 each); item 'rare' appears once and must be filtered out
    for u in ("u1", "u2", "u3"):
        for t, item in zip((30, 10, 20), ("a", "b", "c")):
            rows.append(f"{u},{item},{t}")
    rows.append("u1,rare,5")
    path = tmp_path / "log.csv"
    path.write_text("\n".join(rows) + "\n")
    data = load_dataset(path, min_count=3)
    assert data.item_ids == ["a", "b", "c"]
    assert [data.item_ids[i - 1] for i in data.sequences[0]] == ["b", "c", "a"]  # sorted by timestamp


def test_interactions_jsonl_and_errors(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text("\n".join(json.dumps({"user": u, "item": i, "ts": t})
                              for t, (u, i) in enumerate([(1, "x"), (1, "y"), (1, "z")] * 1)) + "\n")
    data = load_dataset(path, min_count=1)
    assert data.num_items == 3 and data.num_users == 1
    path.write_text('{"user": 1, "item": "x"}\nnot json\n')
    with pytest.raises(FmrlError, match=r"log.jsonl:2: invalid JSON"):
        load_dataset(path)
    path.write_text('{"user": 1}\n')
    with pytest.raises(FmrlError, match=r"log.jsonl:1: missing 'item'"):
        load_dataset(path)
    path.write_text('{"user": 1, "item": "x", "ts": "soon"}\n')
    with pytest.raises(FmrlError, match=r"log.jsonl:1: timestamp 'soon' is not a number"):
        load_dataset(path)


def test_empty_after_k_core_and_missing_data(tmp_path):
    path = tmp_path / "tiny.csv"
    path.write_text("user,item\nu,a\nu,b\n")
    with pytest.raises(FmrlError, match="no interactions left after 5-core"):
        load_dataset(path)
    with pytest.raises(FmrlError, match="data not found"):
        load_dataset(tmp_path / "nope")
    bad_header = tmp_path / "h.csv"
    bad_header.write_text("who,what\n1,2\n")
    with pytest.raises(FmrlError, match=r"h.csv:1: CSV header needs 'user' and 'item'"):
        load_dataset(bad_header)


# ----------------------------------------------------------------------------------------------
# What the data report tells before training


def test_k_core_drops_are_counted_with_their_reason(tmp_path):
    # u1..u3 see a,b,c; u4 sees a,b only (below k=3 in the file); item d is seen by u1,u2,u4 only, so
    # it falls below 3 once u4 is gone (a cascade)
    rows = ["user,item,timestamp"] + [f"{u},{i},{t}" for u in ("u1", "u2", "u3") for t, i in enumerate("abc")]
    rows += ["u4,a,1", "u4,d,2", "u1,d,9", "u2,d,9"]
    path = tmp_path / "log.csv"
    path.write_text("\n".join(rows) + "\n")
    data = load_dataset(path, min_count=3)
    k = data.report["k_core"]
    assert data.report["raw"] == {"users": 4, "items": 4, "interactions": 13}
    assert (k["users_dropped"], k["users_below_k"], k["users_cascade"]) == (1, 1, 0)
    assert (k["items_dropped"], k["items_below_k"], k["items_cascade"]) == (1, 0, 1)
    assert k["interactions_dropped"] == 4 and data.num_items == 3
    # u1 and u2 end on d at t=9, tied with nothing; give u3 a tie on its last two events instead
    ties = data.report["timestamps"]
    assert ties == {"users": 3, "test_target_tied": 0, "val_target_tied": 0, "users_with_any_tie": 0}
    path.write_text("user,item,timestamp\nu,a,1\nu,b,5\nu,c,5\nv,a,1\nv,b,1\nv,c,2\n")
    ties = load_dataset(path, min_count=1).report["timestamps"]
    assert ties == {"users": 2, "test_target_tied": 1, "val_target_tied": 1, "users_with_any_tie": 2}
    path.write_text("user,item\nu,a\nu,b\nu,c\n")
    assert load_dataset(path, min_count=1).report["timestamps"] is None  # file order, nothing to tie


@pytest.mark.parametrize("length,max_len,stride", [(0, 4, 2), (3, 4, 2), (4, 4, 4), (10, 4, 1), (10, 4, 3),
                                                   (11, 4, 4), (50, 7, 5), (9, 3, 3)])
def test_training_windows_use_every_target_once(length, max_len, stride):
    from fmrl_sdk.data.dataset import training_windows

    windows = training_windows(length, max_len, stride)
    trained = [t for end, lo, hi in windows for t in range(lo, hi)]
    assert sorted(trained) == list(range(length))  # every target exactly once
    for end, lo, hi in windows:
        assert max(0, end - max_len) <= lo <= hi == end  # trained targets are the window's last ones
    # in the extra windows, each trained target has at least max_len - stride items of context before it
    # inside its window (all earlier items for targets near the start of the history)
    for end, lo, hi in windows[1:]:
        for t in range(lo, hi):
            context = t - max(0, end - max_len)
            assert context >= min(t, max_len - stride)
    assert training_windows(length, max_len, 0) == [(length, max(0, length - max_len), length)]


def test_stride_arrays_and_target_usage():
    from fmrl_sdk.data.dataset import Dataset, target_usage

    seq = np.arange(1, 13)  # 12 items: 10 training targets
    data = Dataset("t", "t", [seq, np.array([3, 4, 5])], ["u", "v"], [str(i) for i in range(1, 13)])
    inputs, targets = training_arrays(data, 4)
    assert targets.tolist() == [[7, 8, 9, 10], [0, 0, 0, 3]] and inputs.tolist() == [[6, 7, 8, 9], [0, 0, 0, 0]]
    inputs, targets = training_arrays(data, 4, stride=3)
    assert inputs.tolist() == [[6, 7, 8, 9], [2, 3, 4, 5], [0, 0, 1, 2], [0, 0, 0, 0]]
    assert targets.tolist() == [[7, 8, 9, 10], [0, 4, 5, 6], [0, 1, 2, 3], [0, 0, 0, 3]]
    trained = sorted(int(t) for t in targets.ravel() if t)
    assert trained == sorted(list(range(1, 11)) + [3])  # each target once
    assert target_usage(data, 4) == {"targets": 11, "used": 5, "rows": 2, "fraction": 0.4545}
    assert target_usage(data, 4, 3) == {"targets": 11, "used": 11, "rows": 4, "fraction": 1.0}


def test_report_line_and_recipe_stride(tmp_path):
    from fmrl_sdk.data.dataset import report_line
    from fmrl_sdk.train.recipe import Recipe

    demo = load_dataset("demo")
    line = report_line(demo, 5)
    lengths = np.array([len(s) - 2 for s in demo.sequences])
    used = round(100 * np.minimum(lengths, 5).sum() / lengths.sum())
    assert line.startswith("data: 2,000 users, 7,374 items, 18,074 interactions;")
    assert f"max_len 5 trains {used}% of {lengths.sum():,} targets" in line and "k-core" not in line
    assert "trains 100% of" in report_line(load_dataset("demo"), 5, stride=5)
    with pytest.raises(FmrlError, match=r"stride = 5 should be an integer from 0 to max_len \(4\)"):
        Recipe.from_dict({"data": {"max_len": 4, "stride": 5}})
