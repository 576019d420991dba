"""Training rows built per batch (train/windows.py) against the materialised `training_arrays`, and the
data-parallel shards built from them (train/distributed.py: shard, shard_batch)."""

from __future__ import annotations

import numpy as np
import pytest

from fmrl_sdk.data.dataset import load_dataset, training_arrays, training_windows
from fmrl_sdk.data.split import SplitSpec
from fmrl_sdk.train import distributed
from fmrl_sdk.train.distributed import Dist
from fmrl_sdk.train.evaluate import trim_left_padding
from fmrl_sdk.train.windows import Windows, window_descriptors
from tests.helpers import DAY, T0, write_timed_log

SETTINGS = [(20, 0), (50, 0), (5, 0), (5, 2), (5, 5), (20, 7), (1, 1)]  # (max_len, stride)


@pytest.fixture(scope="module")
def demo():
    return load_dataset("demo")


@pytest.fixture(scope="module")
def timed(tmp_path_factory):
    """A time split: users outside the training k-core have no training events (rows without targets)."""
    log = write_timed_log(tmp_path_factory.mktemp("timed") / "log.csv", users=120)
    data = load_dataset(log, min_count=3, split=SplitSpec("time", str(T0 + 60 * DAY), str(T0 + 40 * DAY)))
    assert data.cuts is not None and any(len(s) == 0 for s in data.train_sequences())
    return data


def test_window_descriptors_are_training_windows():
    lengths = np.array([0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 17, 23, 40, 41, 57])
    for max_len in (1, 2, 3, 5, 8, 13):
        for stride in range(max_len + 1):
            user, end, new_from, new_to = window_descriptors(lengths, max_len, stride)
            expected = [(u, *w) for u, n in enumerate(lengths) for w in training_windows(int(n), max_len, stride)]
            assert list(zip(user.tolist(), end.tolist(), new_from.tolist(), new_to.tolist())) == expected


@pytest.mark.parametrize("max_len,stride", SETTINGS)
@pytest.mark.parametrize("which", ["demo", "timed"])
def test_batch_is_training_arrays_rows_trimmed(request, which, max_len, stride):
    data = request.getfixturevalue(which)
    inputs, targets = training_arrays(data, max_len, stride)
    windows = Windows.of(data, max_len, stride)
    assert windows.rows == len(windows) == len(inputs)
    np.testing.assert_array_equal(windows.lengths, (targets > 0).sum(1))
    rng = np.random.default_rng(max_len * 100 + stride)
    batches = [rng.permutation(windows.rows)[:n] for n in (1, 2, 7, 64, 300)]
    batches += [np.arange(windows.rows), np.flatnonzero(windows.lengths == 0)[:5],  # no target at all
                np.argsort(windows.lengths)[:3]]
    for rows in batches:
        if not len(rows):
            continue
        x, y = windows.batch(rows)
        ex, ey = trim_left_padding(inputs[rows], targets[rows])
        assert x.dtype == y.dtype == np.int64 and x.shape == ex.shape and y.shape == ey.shape
        np.testing.assert_array_equal(x, ex)
        np.testing.assert_array_equal(y, ey)
    counts = windows.target_counts(data.num_items)
    np.testing.assert_array_equal(counts, np.bincount(targets[targets > 0] - 1, minlength=data.num_items))


def test_windows_hold_far_less_than_the_arrays(demo):
    inputs, targets = training_arrays(demo, 50)
    windows = Windows.of(demo, 50)
    assert windows.nbytes < (inputs.nbytes + targets.nbytes) / 5


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("which,max_len,stride", [("demo", 20, 0), ("demo", 5, 2), ("timed", 5, 5)])
def test_shards_partition_users_rows_and_targets(request, which, world, max_len, stride):
    data = request.getfixturevalue(which)
    inputs, targets = training_arrays(data, max_len, stride)
    whole = Windows.of(data, max_len, stride)
    shards = [distributed.shard(data, max_len, stride, Dist(rank, world)) for rank in range(world)]
    users = np.concatenate([distributed.shard_users(data.num_users, Dist(r, world)) for r in range(world)])
    assert sorted(users.tolist()) == list(range(data.num_users))
    for rank, (part, windows) in enumerate(shards):
        mine = distributed.shard_users(data.num_users, Dist(rank, world))
        assert part.num_users == len(mine) and part.user_ids == [data.user_ids[u] for u in mine]
        assert all(a is data.sequences[u] for a, u in zip(part.sequences, mine))  # kept, not copied
        np.testing.assert_array_equal(windows.lengths, whole.lengths)  # every row's count, on every rank
        assert len(windows.items) - 1 == sum(len(s) for s in part.train_sequences())  # only its own items
    owned = np.stack([w.owned(np.arange(whole.rows)) for _, w in shards])
    assert (owned.sum(0) == 1).all()  # every row belongs to exactly one rank
    rng = np.random.default_rng(1)
    for rows in [rng.permutation(whole.rows)[:n] for n in (1, 5, 64)] + [np.arange(whole.rows)]:
        scales = []
        for rank, (_, windows) in enumerate(shards):
            x, y, scale = distributed.shard_batch(windows, rows, Dist(rank, world))
            mine = rows[windows.owned(rows)]
            if (targets[mine] > 0).sum() and (targets[rows] > 0).sum():
                ex, ey = trim_left_padding(inputs[mine], targets[mine])
                if ex.shape[1] == 1:  # one padding column more: the recurrence always takes part in DDP
                    ex, ey = (np.pad(a, ((0, 0), (1, 0))) for a in (ex, ey))
                np.testing.assert_array_equal(x.numpy(), ex)
                np.testing.assert_array_equal(y.numpy(), ey)
                assert scale == world * (targets[mine] > 0).sum() / (targets[rows] > 0).sum()
            else:  # nothing to train here: one target, weighted 0 (DDP still needs this rank's gradient)
                assert x.shape == y.shape == (1, 2) and (y > 0).sum() == 1 and scale == 0.0
            scales.append(scale)
        if (targets[rows] > 0).sum():
            assert sum(scales) == pytest.approx(world)
    total = sum(w.target_counts(data.num_items) for _, w in shards)
    np.testing.assert_array_equal(total, whole.target_counts(data.num_items))


def test_one_process_shard_is_the_dataset_itself(demo):
    data, windows = distributed.shard(demo, 20, 0, Dist())
    assert data is demo and windows.rows == demo.num_users and windows.owned(np.arange(windows.rows)).all()


def test_batch_refuses_rows_of_other_users(demo):
    _, windows = distributed.shard(demo, 20, 0, Dist(1, 2))
    with pytest.raises(ValueError, match="does not hold"):
        windows.batch(np.array([0]))  # user 0 is rank 0's
