"""Training rows built batch by batch from per-row descriptors, never as whole [rows, max_len] arrays.

A training row is one window of one user's training sequence (`training_windows`): (user, end, new_from,
new_to). `Windows` keeps the users' training items once, flat, and the descriptors of its rows; `batch`
builds exactly the left-padded, trimmed (inputs, targets) that `training_arrays` followed by
`trim_left_padding` gives for the same rows. Memory: the training items (int32 where the catalogue allows)
plus about 20 bytes per row, instead of 2 x max_len x 8 bytes per row.

Rows are numbered as `training_arrays` numbers them (users in order, each user's windows latest first), so
an epoch permutation over `lengths` picks the same rows. A data-parallel rank builds its `Windows` over its
own users only (`users`): then `lengths` (targets per row) still covers every row of every user, which is
all a rank needs to cut the same global batches and weight its share, while the descriptors and items are
those of its own rows (`owned`).
"""

from __future__ import annotations

import numpy as np

from ..data.dataset import Dataset
from .evaluate import trim_left_padding

CHUNK = 1 << 20  # users per pass when describing every user's rows (bounds the temporary arrays)


def window_descriptors(lengths: np.ndarray, max_len: int, stride: int = 0):
    """(user, end, new_from, new_to), one entry per row, for users with training sequences of `lengths`
    ([users], positions 0..users-1): `training_windows` of every user in one vectorised pass, in its
    order (users in order, each user's windows latest first). All int64."""
    n = np.asarray(lengths, dtype=np.int64)
    t0, last, count = _window_counts(n, max_len, stride)
    user = np.repeat(np.arange(len(n), dtype=np.int64), count)
    within = np.arange(len(user), dtype=np.int64) - np.repeat(np.cumsum(count) - count, count)
    first = within == 0
    j = within - 1
    to = t0[user] - j * stride
    end = np.where(first, n[user], to)
    new_from = np.where(first, t0[user], np.where(j < last[user], to - stride, 0))
    return user, end, new_from, end.copy()


class Windows:
    """The training rows over `sequences`, the training sequences of users `users` (global user indices,
    ascending; default all, 0..len(sequences) - 1), among users whose training lengths are `all_lengths`
    (default: those of `sequences`, i.e. one process holds every user).

    rows: number of rows of every user; lengths [rows]: targets trained per row (what epoch_batches sorts
    on); owned(rows): which rows these users hold; batch(rows): their (inputs, targets).
    """

    def __init__(self, sequences: list[np.ndarray], max_len: int, stride: int = 0,
                 users: np.ndarray | None = None, all_lengths: np.ndarray | None = None):
        own_lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
        users = np.arange(len(sequences), dtype=np.int64) if users is None else np.asarray(users, dtype=np.int64)
        all_lengths = own_lengths if all_lengths is None else np.asarray(all_lengths, dtype=np.int64)
        if len(users) != len(sequences) or (len(users) and not np.array_equal(all_lengths[users], own_lengths)):
            raise ValueError("Windows: `users` must name the users of `sequences`, with their lengths")
        self.max_len, self.stride = max_len, stride
        self.num_users = len(all_lengths)
        self.users = users
        # every row: targets trained (sorting, loss weights); built in chunks of users
        lengths = []
        for start in range(0, max(1, len(all_lengths)), CHUNK):
            _, _, new_from, new_to = window_descriptors(all_lengths[start:start + CHUNK], max_len, stride)
            lengths.append((new_to - new_from).astype(np.int32))
        self.lengths = np.concatenate(lengths)
        self.rows = len(self.lengths)
        # this process's rows: global row number, local user, end, new_from, new_to
        counts = _window_counts(all_lengths, max_len, stride)[2]
        row_start = np.cumsum(counts) - counts
        local_user, end, new_from, new_to = window_descriptors(own_lengths, max_len, stride)
        own_counts = counts[users]
        self.own_rows = (np.repeat(row_start[users], own_counts)
                         + np.arange(len(local_user)) - np.repeat(np.cumsum(own_counts) - own_counts, own_counts))
        small = np.int32 if max(int(all_lengths.max(initial=0)), len(users)) < 2**31 else np.int64
        self.user, self.end = local_user.astype(small), end.astype(small)
        self.new_from, self.new_to = new_from.astype(small), new_to.astype(small)
        # the users' training items, flat (a trailing 0 so that clipped gathers always have an element)
        top = max((int(s.max()) for s in sequences if len(s)), default=0)
        dtype = np.int32 if top < 2**31 else np.int64
        self.items = np.concatenate([*(np.asarray(s, dtype=dtype) for s in sequences), np.zeros(1, dtype)])
        self.offsets = np.concatenate([[0], np.cumsum(own_lengths)]).astype(np.int64)[:-1]

    @classmethod
    def of(cls, dataset: Dataset, max_len: int, stride: int = 0) -> "Windows":
        """Every user's rows (one process), as `training_arrays(dataset, max_len, stride)` numbers them."""
        return cls(dataset.train_sequences(), max_len, stride)

    def __len__(self) -> int:
        return self.rows

    @property
    def nbytes(self) -> int:
        """Bytes of every array held (items, descriptors, lengths)."""
        return sum(a.nbytes for a in (self.items, self.offsets, self.users, self.lengths, self.own_rows,
                                       self.user, self.end, self.new_from, self.new_to))

    def owned(self, rows: np.ndarray) -> np.ndarray:
        """bool [len(rows)]: which of the (global) rows are this object's."""
        rows = np.asarray(rows, dtype=np.int64)
        at = np.searchsorted(self.own_rows, rows).clip(max=max(0, len(self.own_rows) - 1))
        return (self.own_rows[at] == rows) if len(self.own_rows) else np.zeros(len(rows), dtype=bool)

    def _local(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        if not self.owned(rows).all():
            raise ValueError("Windows.batch: some rows belong to users this process does not hold")
        return np.searchsorted(self.own_rows, rows)

    def batch(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, targets), int64 [len(rows), L]: `training_arrays` rows, left-padded to max_len, then
        trimmed of the columns that are padding in every row (`trim_left_padding`), so L <= max_len."""
        i = self._local(rows)
        end, new_from, new_to = (a[i].astype(np.int64) for a in (self.end, self.new_from, self.new_to))
        base = self.offsets[self.user[i]]
        # a width covering every row's window: the columns left of it are padding in the max_len arrays
        width = max(1, min(self.max_len, int(end.max(initial=0))))
        position = end[:, None] - width + np.arange(width)[None, :]  # in [0, s_0, s_1, ...]: target index
        last = len(self.items) - 1
        inputs = np.where(position >= 1, self.items[np.clip(base[:, None] + position - 1, 0, last)], 0)
        trained = (position >= new_from[:, None]) & (position < new_to[:, None])
        targets = np.where(trained, self.items[np.clip(base[:, None] + position, 0, last)], 0)
        inputs, targets = trim_left_padding(inputs.astype(np.int64), targets.astype(np.int64))
        return np.ascontiguousarray(inputs), np.ascontiguousarray(targets)

    def target_counts(self, num_items: int) -> np.ndarray:
        """int64 [num_items]: how often item i + 1 is a trained target in this object's rows (each target
        once: the windows of a user train disjoint targets), without building any row."""
        counts = np.zeros(num_items, dtype=np.int64)
        step = max(1, CHUNK // max(1, self.max_len))
        for start in range(0, len(self.user), step):
            part = slice(start, start + step)
            lo = self.offsets[self.user[part]] + self.new_from[part]
            n = (self.new_to[part] - self.new_from[part]).astype(np.int64)
            index = np.repeat(lo - (np.cumsum(n) - n), n) + np.arange(int(n.sum()))
            counts += np.bincount(self.items[index] - 1, minlength=num_items)
        return counts


def _window_counts(lengths: np.ndarray, max_len: int, stride: int):
    """Per user: (t0, where the first window's new targets start; last, the index of the last extra
    window; rows). stride > 0: after the first window, windows ending at t0, t0 - stride, ... while their
    end is > max_len, then one last window from target 0 (see training_windows)."""
    n = np.asarray(lengths, dtype=np.int64)
    t0 = np.maximum(0, n - max_len)
    if not stride:
        zero = np.zeros_like(n)
        return t0, zero, zero + 1
    last = np.where(t0 > max_len, -(-(t0 - max_len) // stride), 0)
    return t0, last, 1 + np.where(t0 > 0, last + 1, 0)
