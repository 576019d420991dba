"""The fMRLRec objective: full-softmax next-item cross-entropy at every granularity, averaged.

`nested_cross_entropy` is the fast form: logits only where a target exists, and (method "fused",
the default) a hand-written backward that keeps one [T, N] score buffer and walks the sizes with a
running sum instead of materialising K x T x N logits for autograd. `reference_cross_entropy` is the
straightforward form (every position, one product per size). They are the same function of the
weights: tests hold them equal, values and gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def size_weights(sizes, weights=None) -> torch.Tensor:
    w = torch.ones(len(sizes)) if not weights else torch.as_tensor(weights, dtype=torch.float32)
    return w / w.sum()


def prefix_masks(sizes, device=None) -> torch.Tensor:
    """[K, d] rows of ones over the first m_k dims."""
    return (torch.arange(sizes[-1], device=device)[None, :] < torch.as_tensor(sizes, device=device)[:, None]).float()


def nested_logits(hidden: torch.Tensor, items: torch.Tensor, sizes, method: str = "masked") -> torch.Tensor:
    """Scores of every size: hidden [T, d], items [N, d] -> [K, T, N], row k uses the first m_k dims.

    masked: one product over K masked copies of hidden (K x the multiply-adds, one large GEMM).
    running_sum: a product per chunk [m_{k-1}, m_k) with a running sum (fewest multiply-adds).
    """
    if method == "masked":
        return (hidden[None] * prefix_masks(sizes, hidden.device)[:, None]) @ items.T
    out, total, start = [], 0, 0
    for end in sizes:
        total = total + hidden[:, start:end] @ items[:, start:end].T
        out.append(total)
        start = end
    return torch.stack(out)


class FusedNestedCrossEntropy(torch.autograd.Function):
    """sum_k w_k * mean_t CE(hidden[t, :m_k] @ items[:, :m_k]^T, label_t) with one [T, N] buffer.

    Forward: S_k = S_{k-1} + H_k E_k^T (chunk k columns), keep log-sum-exp and target score per size.
    Backward: dL/dS_k = c_k (softmax(S_k) - onehot), and chunk j's product feeds every S_k with k >= j,
    so walking k from K down to 1 with G = sum_{k' >= k} dL/dS_k' gives dH_k = G E_k, dE_k = G^T H_k;
    S_{k-1} is recovered in place as S_k - H_k E_k^T.
    """

    @staticmethod
    def forward(ctx, hidden, items, labels, sizes, weights):
        t, n = hidden.shape[0], items.shape[0]
        scores, work = hidden.new_zeros(t, n), hidden.new_empty(t, n)
        bounds = list(zip((0,) + tuple(sizes[:-1]), sizes))
        lse, target = [], []
        for start, end in bounds:
            scores.addmm_(hidden[:, start:end], items[:, start:end].T)
            lse.append(_logsumexp_rows(scores, work))
            target.append(scores.gather(1, labels[:, None])[:, 0])
        lse, target = torch.stack(lse), torch.stack(target)  # [K, T]
        ctx.save_for_backward(hidden, items, labels, weights, lse)
        ctx.scores, ctx.work, ctx.bounds = scores, work, bounds
        return ((lse - target).mean(1) * weights).sum()

    @staticmethod
    def backward(ctx, grad):
        hidden, items, labels, weights, lse = ctx.saved_tensors
        scores, probs, bounds = ctx.scores, ctx.work, ctx.bounds
        del ctx.scores, ctx.work
        t = hidden.shape[0]
        coef = (grad * weights / t).tolist()
        rows = torch.arange(t, device=hidden.device)
        g = torch.zeros_like(scores)
        d_hidden, d_items = torch.empty_like(hidden), torch.empty_like(items)
        for k in reversed(range(len(bounds))):
            start, end = bounds[k]
            torch.sub(scores, lse[k][:, None], out=probs).exp_()
            g.add_(probs, alpha=coef[k])
            g[rows, labels] -= coef[k]
            d_hidden[:, start:end] = g @ items[:, start:end]
            d_items[:, start:end] = g.T @ hidden[:, start:end]
            if k:
                scores.addmm_(hidden[:, start:end], items[:, start:end].T, alpha=-1)
        return d_hidden, d_items, None, None, None


def _logsumexp_rows(x: torch.Tensor, work: torch.Tensor) -> torch.Tensor:
    """Row-wise log-sum-exp of x [T, N] using the preallocated `work` buffer (no [T, N] allocations)."""
    peak = x.amax(1, keepdim=True)
    torch.sub(x, peak, out=work).exp_()
    return peak[:, 0] + work.sum(1).log()


def nested_cross_entropy(hidden: torch.Tensor, targets: torch.Tensor, table: torch.Tensor, sizes,
                         weights=None, method: str = "fused") -> torch.Tensor:
    """hidden [B, L, d], targets [B, L] item indices (0 = no target), table [N + 1, d] -> scalar loss.

    method: fused (default) | running_sum | masked - the same loss, different arithmetic.
    """
    has_target = targets > 0
    if method == "fused":
        w = size_weights(sizes, weights).to(hidden)
        return FusedNestedCrossEntropy.apply(hidden[has_target], table[1:], targets[has_target] - 1,
                                             tuple(sizes), w)
    logits = nested_logits(hidden[has_target], table[1:], sizes, method)  # [K, T, N]
    k, t, n = logits.shape
    labels = (targets[has_target] - 1).repeat(k)
    per_size = F.cross_entropy(logits.reshape(k * t, n), labels, reduction="none").view(k, t).mean(1)
    return (per_size * size_weights(sizes, weights).to(per_size.device)).sum()


def reference_cross_entropy(hidden: torch.Tensor, targets: torch.Tensor, table: torch.Tensor, sizes,
                            weights=None) -> torch.Tensor:
    """Straightforward form: logits at every position, one product per size, padding ignored."""
    losses = []
    for size in sizes:
        logits = hidden[..., :size] @ table[1:, :size].T  # [B, L, N]
        losses.append(F.cross_entropy(logits.flatten(0, 1), targets.flatten() - 1, ignore_index=-1))
    return (torch.stack(losses) * size_weights(sizes, weights).to(hidden.device)).sum()
