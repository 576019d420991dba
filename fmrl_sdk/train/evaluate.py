"""Full-ranking leave-one-out evaluation at every granularity (the paper's protocol by default).

Every item is ranked (no sampled negatives); only the padding item is excluded. History items are
ranked too unless `mask_history` is set. Metrics are exact per-user means.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.dataset import Dataset, left_pad

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
    """Yields (users [B] numpy indices into the split, {size: ranks [B]}) batch by batch; 0 = ranked first."""
    histories, targets = dataset.history_and_target(split)
    # users in order of history length, so a batch is padded only to its own longest (sums are per user)
    order = np.argsort([min(len(h), max_len) for h in histories], kind="stable")
    inputs, targets = left_pad([histories[u] for u in order], max_len), targets[order]
    table = model.item_table()
    items, device = (table if scoring_table is None else scoring_table)[1:], table.device
    task = progress.add_task(f"eval {split}", total=len(targets), info="") if progress else None
    for start in range(0, len(targets), batch_size):
        (batch,) = trim_left_padding(inputs[start:start + batch_size])
        target = torch.from_numpy(targets[start:start + batch_size]).to(device) - 1
        items_in = torch.from_numpy(batch).to(device)
        last = torch.zeros_like(items_in, dtype=torch.bool)
        last[:, -1] = True
        hidden = model(items_in, table, at=last)  # [B, d]: the state after each user's whole history
        excluded = None
        if mask_history:
            excluded = torch.zeros(len(target), items.shape[0], dtype=torch.bool)
            rows, cols = np.nonzero(batch)
            excluded[rows, batch[rows, cols] - 1] = True
            excluded = excluded.to(device)
            excluded[torch.arange(len(target), device=device), target] = False
        scores, begin, ranks = 0, 0, {}
        for size in model.cfg.sizes:  # running sum over chunks: each size costs only its new dims
            scores = scores + hidden[:, begin:size] @ items[:, begin:size].T
            begin = size
            ranked = scores if excluded is None else scores.masked_fill(excluded, float("-inf"))
            target_score = ranked.gather(1, target[:, None])
            ranks[size] = (ranked >= target_score).sum(1) - 1  # items tied with the target rank above it
        yield order[start:start + batch_size], ranks
        if progress:
            progress.update(task, advance=len(target))
    if progress:
        progress.remove_task(task)


@torch.no_grad()
def evaluate(model, dataset: Dataset, split: str = "val", max_len: int = 50, batch_size: int = 256,
             mask_history: bool = False, ks=KS, progress=None,
             scoring_table: torch.Tensor | None = None) -> dict[int, dict[str, float]]:
    """{size: {"Recall@10": ..., ...}} over all users of `split` ('val' or 'test').

    Items are scored against `scoring_table` [N + 1, d] (row 0: padding) when given, else against the
    model's own item table (its input); diagnostics pass a changed table to see what a part of it does.
    """
    was_training = model.training
    model.eval()
    sums = {size: {name: 0.0 for name in metric_names(ks)} for size in model.cfg.sizes}
    for _, ranks in _batch_ranks(model, dataset, split, max_len, batch_size, mask_history, progress, scoring_table):
        for size, size_ranks in ranks.items():
            for name, values in rank_metrics(size_ranks, ks).items():
                sums[size][name] += values.sum().item()
    model.train(was_training)
    return {size: {name: total / dataset.num_users for name, total in metrics.items()}
            for size, metrics in sums.items()}


@torch.no_grad()
def user_ranks(model, dataset: Dataset, split: str = "test", max_len: int = 50, batch_size: int = 256,
               mask_history: bool = False) -> dict[int, np.ndarray]:
    """{size: ranks [users] int64}, the target's 0-based rank per user in the split's user order (the ranks
    `evaluate` averages); for per-user analyses such as paired differences between two runs."""
    was_training = model.training
    model.eval()
    out = {size: np.full(dataset.num_users, -1, dtype=np.int64) for size in model.cfg.sizes}
    for batch_users, ranks in _batch_ranks(model, dataset, split, max_len, batch_size, mask_history, None, None):
        for size, size_ranks in ranks.items():
            out[size][batch_users] = size_ranks.cpu().numpy()
    model.train(was_training)
    return out
