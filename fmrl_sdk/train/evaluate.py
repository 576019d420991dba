"""Full-ranking evaluation at every granularity (the paper's protocol by default).

Every item is ranked (no sampled negatives); only the padding item is excluded. History items are
ranked too unless `mask_history` is set. Metrics are exact means over the split's targets:
- leave-one-out: one target per user, seen from the user's last max_len items (the paper);
- time split: every event in the split's window, seen from the user's whole history before it, as the
  recurrent runtime sees it (one pass per user, outputs at the target positions).
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.dataset import Dataset, left_pad
from ..errors import FmrlError

KS = (5, 10, 20, 50)


def metric_names(ks=KS) -> list[str]:
    return [f"{m}@{k}" for k in ks for m in ("Recall", "NDCG", "MRR")]


def rank_metrics(ranks: torch.Tensor, ks=KS) -> dict[str, torch.Tensor]:
    """ranks [B] (0 = the target scored highest) -> per-user Recall/NDCG/MRR@k, each [B]."""
    out = {}
    for k in ks:
        hit = (ranks < k).float()
        out[f"Recall@{k}"] = hit
        out[f"NDCG@{k}"] = hit / torch.log2(ranks.float() + 2)
        out[f"MRR@{k}"] = hit / (ranks.float() + 1)
    return out


def trim_left_padding(*arrays: np.ndarray) -> list[np.ndarray]:
    """Drop leading columns that are padding (0) in every row of every array.

    Targets reach one column further left than inputs (the first item is predicted from an empty
    history), so training passes both.
    """
    used = np.flatnonzero(np.logical_or.reduce([(a > 0).any(0) for a in arrays]))
    start = int(used[0]) if len(used) else arrays[0].shape[1] - 1
    return [a[:, start:] for a in arrays]


def _batch_ranks(model, dataset: Dataset, split: str, max_len: int, batch_size: int, mask_history: bool,
                 progress, scoring_table: torch.Tensor | None):
    """Yields (owners [A] numpy user indices, {size: ranks [A]}) batch by batch, one entry per target;
    0 = ranked first."""
    if dataset.cuts is not None:
        if mask_history:
            raise FmrlError("--mask-history is defined for leave-one-out splits only")
        batches = _whole_history_batches(dataset, split, batch_size * max_len)
    else:
        batches = _last_items_batches(dataset, split, max_len, batch_size)
    table = model.item_table()
    items, device = (table if scoring_table is None else scoring_table)[1:], table.device
    total = sum(len(p) for p in dataset.target_positions(split))
    task = progress.add_task(f"eval {split}", total=total, info="") if progress else None
    for owners, batch, at, targets in batches:
        items_in = torch.from_numpy(batch).to(device)
        hidden = model(items_in, table, at=torch.from_numpy(at).to(device))  # [A, d], row-major order of `at`
        for start in range(0, len(targets), batch_size):  # scores [batch_size, N] at a time
            rows = slice(start, start + batch_size)
            target = torch.from_numpy(targets[rows]).to(device) - 1
            excluded = None
            if mask_history:
                excluded = torch.zeros(len(target), items.shape[0], dtype=torch.bool)
                r, c = np.nonzero(batch[rows])
                excluded[r, batch[rows][r, c] - 1] = True
                excluded = excluded.to(device)
                excluded[torch.arange(len(target), device=device), target] = False
            scores, begin, ranks = 0, 0, {}
            for size in model.cfg.sizes:  # running sum over chunks: each size costs only its new dims
                scores = scores + hidden[rows, begin:size] @ items[:, begin:size].T
                begin = size
                ranked = scores if excluded is None else scores.masked_fill(excluded, float("-inf"))
                target_score = ranked.gather(1, target[:, None])
                ranks[size] = (ranked >= target_score).sum(1) - 1  # items tied with the target rank above it
            yield owners[rows], ranks
            if progress:
                progress.update(task, advance=len(target))
    if progress:
        progress.remove_task(task)


def _last_items_batches(dataset: Dataset, split: str, max_len: int, batch_size: int):
    """Leave-one-out: (users, inputs [B, L], at [B, L], targets [B]) per batch of `batch_size` users, each
    row the user's last max_len items before the target, output at the last position."""
    histories, targets = dataset.history_and_target(split)
    # users in order of history length, so a batch is padded only to its own longest (sums are per user)
    order = np.argsort([min(len(h), max_len) for h in histories], kind="stable")
    inputs, targets = left_pad([histories[u] for u in order], max_len), targets[order]
    for start in range(0, len(targets), batch_size):
        (batch,) = trim_left_padding(inputs[start:start + batch_size])
        at = np.zeros(batch.shape, dtype=bool)
        at[:, -1] = True
        yield order[start:start + batch_size], batch, at, targets[start:start + batch_size]


def _whole_history_batches(dataset: Dataset, split: str, tokens: int):
    """Time split: (owners [A], inputs [B, L], at [B, L], targets [A]) per batch of users of about `tokens`
    positions. A row is [0, s_0, ..., s_{p-1}] up to the user's last target p; the output after position j
    (padding first: the empty history) predicts s_j, so `at` marks the target positions."""
    positions = dataset.target_positions(split)
    users = [u for u, p in enumerate(positions) if len(p)]
    order = sorted(users, key=lambda u: positions[u][-1])
    start = 0
    while start < len(order):
        stop = start + 1  # users sorted by length: a batch's last user is its longest
        while stop < len(order) and (stop - start + 1) * (int(positions[order[stop]][-1]) + 1) <= tokens:
            stop += 1
        batch_users = order[start:stop]
        length = int(positions[batch_users[-1]][-1]) + 1
        batch = np.zeros((len(batch_users), length), dtype=np.int64)
        at = np.zeros(batch.shape, dtype=bool)
        owners, targets = [], []
        for row, u in enumerate(batch_users):
            p, s = positions[u], dataset.sequences[u]
            context = s[:p[-1]]
            batch[row, length - len(context):] = context
            at[row, length - 1 - p[-1] + p] = True
            owners.append(np.full(len(p), u))
            targets.append(s[p])
        yield np.concatenate(owners), batch, at, np.concatenate(targets)
        start = stop


def evaluation_sums(model, dataset: Dataset, split: str = "val", max_len: int = 50, batch_size: int = 256,
                    mask_history: bool = False, ks=KS, progress=None,
                    scoring_table: torch.Tensor | None = None) -> tuple[dict[int, dict[str, float]], int]:
    """({size: {metric: sum over targets}}, number of targets): what `evaluate` averages (and what
    data-parallel evaluation adds up across ranks)."""
    was_training = model.training
    model.eval()
    sums = {size: {name: 0.0 for name in metric_names(ks)} for size in model.cfg.sizes}
    count = 0
    with torch.no_grad():
        for owners, ranks in _batch_ranks(model, dataset, split, max_len, batch_size, mask_history, progress,
                                          scoring_table):
            count += len(owners)
            for size, size_ranks in ranks.items():
                for name, values in rank_metrics(size_ranks, ks).items():
                    sums[size][name] += values.sum().item()
    model.train(was_training)
    return sums, count


def evaluate(model, dataset: Dataset, split: str = "val", max_len: int = 50, batch_size: int = 256,
             mask_history: bool = False, ks=KS, progress=None,
             scoring_table: torch.Tensor | None = None) -> dict[int, dict[str, float]]:
    """{size: {"Recall@10": ..., ...}}, means over the targets of `split` ('val' or 'test').

    Items are scored against `scoring_table` [N + 1, d] (row 0: padding) when given, else against the
    model's own item table (its input); diagnostics pass a changed table to see what a part of it does.
    """
    sums, count = evaluation_sums(model, dataset, split, max_len, batch_size, mask_history, ks, progress,
                                  scoring_table)
    return {size: {name: total / max(1, count) for name, total in metrics.items()}
            for size, metrics in sums.items()}


@torch.no_grad()
def user_ranks(model, dataset: Dataset, split: str = "test", max_len: int = 50, batch_size: int = 256,
               mask_history: bool = False) -> dict[int, np.ndarray]:
    """{size: ranks [users] int64}, the target's 0-based rank per user in the split's user order (the ranks
    `evaluate` averages); for per-user analyses such as paired differences between two runs.
    Leave-one-out only (one target per user)."""
    if dataset.cuts is not None:
        raise FmrlError("user_ranks needs a leave-one-out split (one target per user)")
    was_training = model.training
    model.eval()
    out = {size: np.full(dataset.num_users, -1, dtype=np.int64) for size in model.cfg.sizes}
    for batch_users, ranks in _batch_ranks(model, dataset, split, max_len, batch_size, mask_history, None, None):
        for size, size_ranks in ranks.items():
            out[size][batch_users] = size_ranks.cpu().numpy()
    model.train(was_training)
    return out
