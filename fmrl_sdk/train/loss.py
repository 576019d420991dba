"""The fMRLRec objective: full-softmax next-item cross-entropy at every granularity, averaged.

`nested_cross_entropy` is the fast form: logits only where a target exists, and (method "fused",
the default) a hand-written backward that walks the sizes with a running sum over reused [T, N]
buffers (each size's exponentials kept from forward while they fit in KEEP_SCORES_BYTES) instead of
materialising K x T x N logits for autograd. The straightforward form (every position, one product
per size: benchmarks/reference_loss.py) is the same function of the weights: tests hold them equal,
values and gradients.

For large catalogues (`[train] loss`): `chunked_nested_cross_entropy` is the same loss computed over
item blocks (no [T, N] buffer), `sampled_nested_cross_entropy` a log-Q corrected sampled softmax with
shared negatives. `Objective` puts the model and the chosen loss in one module (what DDP wraps).
"""

from __future__ import annotations

import math

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


# The fused losses keep each size's exp(S_k - peak_k) for backward when all K of them fit in this many
# bytes (Beauty: 6 sizes x 280 targets x 12,101 items = 81 MB); past it backward recomputes S_k from
# S_K by subtraction (one [T, N] buffer, K more products). Same values either way.
KEEP_SCORES_BYTES = 1 << 30


class FusedNestedCrossEntropy(torch.autograd.Function):
    """sum_k w_k * mean_t CE(hidden[t, :m_k] @ items[:, :m_k]^T, label_t) without K x T x N autograd logits.

    Forward: S_k = S_{k-1} + H_k E_k^T (chunk k columns), keep log-sum-exp and target score per size.
    Backward: dL/dS_k = c_k (softmax(S_k) - onehot), and chunk j's product feeds every S_k with k >= j,
    so walking k from K down to 1 with G = sum_{k' >= k} dL/dS_k' gives dH_k = G E_k, dE_k = G^T H_k.
    softmax(S_k) comes from the exponentials kept in forward (KEEP_SCORES_BYTES), or else from S_{k-1}
    recovered in place as S_k - H_k E_k^T.
    """

    @staticmethod
    def forward(ctx, hidden, items, labels, sizes, weights, workspace=None):
        t, n = hidden.shape[0], items.shape[0]
        bounds = _size_bounds(sizes)
        buffers, kept = _score_buffers(len(bounds), t, n, hidden, workspace)
        scores, gradient = buffers.views[0].zero_(), buffers.views[1]
        lse, target = [], []
        for start, end in bounds:
            scores.addmm_(hidden[:, start:end], items[:, start:end].T)
            lse.append(kept.logsumexp_rows(scores))
            target.append(scores.gather(1, labels[:, None])[:, 0])
        lse, target = torch.stack(lse), torch.stack(target)  # [K, T]
        ctx.save_for_backward(hidden, items, labels, weights, lse)
        ctx.scores, ctx.gradient, ctx.kept, ctx.bounds, ctx.buffers = scores, gradient, kept, bounds, buffers
        return ((lse - target).mean(1) * weights).sum()

    @staticmethod
    def backward(ctx, grad):
        hidden, items, labels, weights, lse = ctx.saved_tensors
        t = hidden.shape[0]
        coef = (grad * weights / t).tolist()
        rows = torch.arange(t, device=hidden.device)

        def subtract_onehot(g, k):
            g[rows, labels] -= coef[k]

        d_hidden, d_items = _walk_sizes_down(ctx.scores, ctx.gradient, ctx.kept, lse, coef, ctx.bounds, hidden,
                                             items, subtract_onehot)
        ctx.buffers.release()
        del ctx.scores, ctx.gradient, ctx.kept, ctx.buffers
        return d_hidden, d_items, None, None, None, None


class ScoreWorkspace:
    """Memory the fused loss reuses for its [T, N] buffers from one training step to the next.

    Fresh buffers this large page-fault on first touch (on Beauty ~7,000 faults, ~10 ms a step); a
    step's forward takes the workspace and its backward gives it back. A forward that finds it taken
    (two losses alive at once) gets fresh memory instead, so sharing is never unsafe. It holds the
    largest step's buffers (up to K + 2 of [T, N]) for as long as its owner lives.
    """

    def __init__(self):
        self.memory, self.taken = None, False

    def take(self, count: int, t: int, n: int, like: torch.Tensor) -> _Buffers:
        numel = count * t * n
        if self.taken:
            return _Buffers(like.new_empty(numel), count, t, n, None)
        m = self.memory
        if m is None or m.numel() < numel or m.dtype != like.dtype or m.device != like.device:
            self.memory = m = like.new_empty(numel)
        self.taken = True
        return _Buffers(m, count, t, n, self)


class _Buffers:
    """`count` [t, n] views of one flat tensor; release() hands a workspace's memory back."""

    def __init__(self, flat: torch.Tensor, count: int, t: int, n: int, owner: ScoreWorkspace | None):
        self.views = [flat[i * t * n:(i + 1) * t * n].view(t, n) for i in range(count)]
        self.owner = owner

    def release(self) -> None:
        if self.owner is not None:
            self.owner.taken, self.owner = False, None


def _score_buffers(k: int, t: int, n: int, like: torch.Tensor, workspace: ScoreWorkspace | None):
    """The fused losses' [t, n] buffers: scores, G, then each size's exponentials when all k fit in
    KEEP_SCORES_BYTES (else one work buffer). Returns (buffers, their _SizeExponentials)."""
    keep = k * t * n * like.element_size() <= KEEP_SCORES_BYTES
    buffers = (workspace or ScoreWorkspace()).take(2 + (k if keep else 1), t, n, like)
    return buffers, _SizeExponentials(buffers.views[2:], keep)


class _SizeExponentials:
    """exp(S_k - peak_k) of every size k kept from forward for backward (`keep`: one buffer per size),
    or one work buffer where backward recomputes them from the scores.
    """

    def __init__(self, buffers: list[torch.Tensor], keep: bool):
        self.keep, self.buffers, self.peaks = keep, buffers, []

    def logsumexp_rows(self, scores: torch.Tensor) -> torch.Tensor:
        """Row-wise log-sum-exp of the current scores [T, N]; keeps their exponentials when `keep`."""
        out = self.buffers[len(self.peaks)] if self.keep else self.buffers[0]
        peak = _shifted_exp(scores, out)
        if self.keep:
            self.peaks.append(peak)
        return peak + out.sum(1).log()

    def softmax(self, k: int, scores: torch.Tensor, lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(p, scale): softmax of size k under the normaliser lse [T] is p * scale[:, None] (scale None:
        p is the softmax itself, recomputed from `scores`, which must then hold S_k)."""
        if self.keep:
            return self.buffers[k], (self.peaks[k] - lse).exp()
        return torch.sub(scores, lse[:, None], out=self.buffers[0]).exp_(), None


def _walk_sizes_down(scores, g, kept, lse, coef, bounds, hidden, items, adjust=None):
    """Shared backward of the fused losses, walking sizes K..1 over [T, N] buffers (g: scratch for G).

    G accumulates c_k softmax(S_k) (then `adjust(G, k)`, e.g. minus the one-hot targets); chunk k gets
    dH_k = G E_k and dE_k = G^T H_k. Without kept exponentials S_{k-1} is recovered in place as
    S_k - H_k E_k^T.
    """
    g.zero_()
    d_hidden, d_items = torch.empty_like(hidden), torch.empty_like(items)
    for k in reversed(range(len(bounds))):
        start, end = bounds[k]
        p, scale = kept.softmax(k, scores, lse[k])
        if scale is None:
            g.add_(p, alpha=coef[k])
        else:
            g.addcmul_(p, scale.mul_(coef[k])[:, None])
        if adjust is not None:
            adjust(g, k)
        d_hidden[:, start:end] = g @ items[:, start:end]
        d_items[:, start:end] = _transposed_product(g, hidden[:, start:end])
        if k and not kept.keep:
            scores.addmm_(hidden[:, start:end], items[:, start:end].T, alpha=-1)
    return d_hidden, d_items


def _transposed_product(g: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """g^T h for g [T, N], h [T, w]. For a handful of columns (w < 16) BLAS reads g^T column-wise
    slowly (3x here at w = 8); (h^T g)^T is the same product over g's rows."""
    return (h.T @ g).T if h.shape[1] < 16 else g.T @ h


def _shifted_exp(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out = exp(x - peak) with peak [T] the row maxima of x [T, N]; returns peak (rows of -inf: out 0)."""
    peak = x.amax(1, keepdim=True).clamp_(min=torch.finfo(x.dtype).min)
    torch.sub(x, peak, out=out).exp_()
    return peak[:, 0]


def _logsumexp_rows(x: torch.Tensor, work: torch.Tensor) -> torch.Tensor:
    """Row-wise log-sum-exp of x [T, N] using the preallocated `work` buffer (no [T, N] allocations)."""
    peak = _shifted_exp(x, work)
    return peak + work.sum(1).log()


def nested_cross_entropy(hidden: torch.Tensor, targets: torch.Tensor, table: torch.Tensor, sizes,
                         weights=None, method: str = "fused", workspace: ScoreWorkspace | None = None) -> torch.Tensor:
    """hidden [B, L, d], targets [B, L] item indices (0 = no target), table [N + 1, d] -> scalar loss.
    (Also hidden [T, d] with targets [T], e.g. the model's output at=targets > 0.)

    method: fused (default) | running_sum | masked - the same loss, different arithmetic.
    """
    has_target = targets > 0
    if method == "fused":
        w = size_weights(sizes, weights).to(hidden)
        if not (torch.is_grad_enabled() and (hidden.requires_grad or table.requires_grad)):
            workspace = None  # no backward will give it back
        return FusedNestedCrossEntropy.apply(hidden[has_target], table[1:], targets[has_target] - 1,
                                             tuple(sizes), w, workspace)
    logits = nested_logits(hidden[has_target], table[1:], sizes, method)  # [K, T, N]
    k, t, n = logits.shape
    labels = (targets[has_target] - 1).repeat(k)
    per_size = F.cross_entropy(logits.reshape(k * t, n), labels, reduction="none").view(k, t).mean(1)
    return (per_size * size_weights(sizes, weights).to(per_size.device)).sum()


# ----------------------------------------------------------------------------------------------
# Large catalogues: the same objective without a [T, N] score matrix (chunked, exact), or estimated
# from shared sampled negatives (sampled, log-Q corrected).


def _size_bounds(sizes) -> list[tuple[int, int]]:
    return list(zip((0,) + tuple(sizes[:-1]), tuple(sizes)))


def _per_dim(values: torch.Tensor, sizes) -> torch.Tensor:
    """[K, ...] values -> [d, ...]: dim j gets the value of the size chunk it belongs to."""
    widths = torch.tensor([end - start for start, end in _size_bounds(sizes)], device=values.device)
    return values.repeat_interleave(widths, dim=0)


def _target_scores(hidden: torch.Tensor, positives: torch.Tensor, sizes) -> torch.Tensor:
    """[K, T]: hidden[t, :m_k] . positives[t, :m_k] for every size (prefix sums over size chunks)."""
    products = hidden * positives
    return torch.stack([products[:, start:end].sum(1) for start, end in _size_bounds(sizes)]).cumsum(0)


class ChunkedNestedCrossEntropy(torch.autograd.Function):
    """The fused loss over item blocks of `chunk` rows: memory O(T x chunk) instead of O(T x N).

    Forward: for each item block, scores of every size by a running sum over size chunks; the
    log-sum-exp of each size is combined across blocks online (logaddexp). Target scores are direct
    dot products. Nothing of size T x N is kept: backward recomputes each block's scores and applies
    the fused walk (sizes K..1, G = sum_{k' >= k} c_k' softmax_k') block by block; the one-hot part
    of the gradient (-c on the target) needs no scores and is added once at the end.
    """

    @staticmethod
    def forward(ctx, hidden, items, labels, sizes, weights, chunk):
        t, n, bounds = hidden.shape[0], items.shape[0], _size_bounds(sizes)
        lse = hidden.new_full((len(bounds), t), float("-inf"))
        scores, work = _buffers(hidden, t * min(chunk, n), 2)
        for first in range(0, n, chunk):
            block = items[first:first + chunk]
            s, w = scores[:t * len(block)].view(t, -1), work[:t * len(block)].view(t, -1)
            s.zero_()
            for k, (start, end) in enumerate(bounds):
                s.addmm_(hidden[:, start:end], block[:, start:end].T)
                torch.logaddexp(lse[k], _logsumexp_rows(s, w), out=lse[k])
        target = _target_scores(hidden, items[labels], sizes)
        ctx.save_for_backward(hidden, items, labels, weights, lse)
        ctx.sizes, ctx.chunk = sizes, chunk
        return ((lse - target).mean(1) * weights).sum()

    @staticmethod
    def backward(ctx, grad):
        hidden, items, labels, weights, lse = ctx.saved_tensors
        sizes, chunk, bounds = ctx.sizes, ctx.chunk, _size_bounds(ctx.sizes)
        t, n = hidden.shape[0], items.shape[0]
        coef_t = grad * weights / t                     # dL/dS_k = c_k (softmax_k - onehot)
        coef = coef_t.tolist()
        d_hidden, d_items = torch.zeros_like(hidden), torch.empty_like(items)
        buffers = _buffers(hidden, t * min(chunk, n), 3)
        for first in range(0, n, chunk):
            block = items[first:first + chunk]
            c = block.shape[0]
            s, p, acc = (b[:t * c].view(t, c) for b in buffers)
            torch.mm(hidden, block.T, out=s)            # S_K; S_{k-1} = S_k - H_k E_k^T
            acc.zero_()
            for k in reversed(range(len(bounds))):
                start, end = bounds[k]
                torch.sub(s, lse[k][:, None], out=p).exp_()
                acc.add_(p, alpha=coef[k])
                d_hidden[:, start:end].addmm_(acc, block[:, start:end])
                d_items[first:first + c, start:end] = _transposed_product(acc, hidden[:, start:end])
                if k:
                    s.addmm_(hidden[:, start:end], block[:, start:end].T, alpha=-1)
        onehot = _per_dim(coef_t.flip(0).cumsum(0).flip(0), sizes)  # sum_{k' >= k} c_k' per dim
        d_hidden.sub_(items[labels] * onehot)
        d_items.index_add_(0, labels, hidden * onehot, alpha=-1)
        return d_hidden, d_items, None, None, None, None


def _buffers(like: torch.Tensor, numel: int, count: int) -> list[torch.Tensor]:
    """Flat scratch buffers; views of their heads are contiguous [T, c] blocks for any c."""
    return [like.new_empty(numel) for _ in range(count)]


def chunked_nested_cross_entropy(hidden: torch.Tensor, targets: torch.Tensor, table: torch.Tensor, sizes,
                                 weights=None, item_chunk: int = 8192) -> torch.Tensor:
    """`nested_cross_entropy` (same value and gradients) with scores computed item_chunk items at a time."""
    has_target = targets > 0
    w = size_weights(sizes, weights).to(hidden)
    return ChunkedNestedCrossEntropy.apply(hidden[has_target], table[1:], targets[has_target] - 1,
                                           tuple(sizes), w, int(item_chunk))


class SampledNestedCrossEntropy(torch.autograd.Function):
    """The fused walk of FusedNestedCrossEntropy over [target, shared negatives] logits.

    The score buffer starts at the per-negative bias (-log(M Q(n)), -inf on accidental hits) and takes
    the chunk products on top, so the bias rides along the running sum over sizes (and -inf stays -inf
    through the subtraction in backward). The target column is handled apart: p_k = prefix dot products.
    """

    @staticmethod
    def forward(ctx, hidden, positives, negatives, bias, sizes, weights):
        bounds = _size_bounds(sizes)
        buffers, kept = _score_buffers(len(bounds), *bias.shape, bias, None)
        scores = buffers.views[0].copy_(bias)
        target = _target_scores(hidden, positives, sizes)  # [K, T]
        lse = []
        for k, (start, end) in enumerate(bounds):
            scores.addmm_(hidden[:, start:end], negatives[:, start:end].T)
            lse.append(torch.logaddexp(target[k], kept.logsumexp_rows(scores)))
        lse = torch.stack(lse)
        ctx.save_for_backward(hidden, positives, negatives, weights, lse, target)
        ctx.scores, ctx.gradient, ctx.kept, ctx.sizes = scores, buffers.views[1], kept, sizes
        return ((lse - target).mean(1) * weights).sum()

    @staticmethod
    def backward(ctx, grad):
        hidden, positives, negatives, weights, lse, target = ctx.saved_tensors
        scores, gradient, kept, sizes = ctx.scores, ctx.gradient, ctx.kept, ctx.sizes
        del ctx.scores, ctx.gradient, ctx.kept
        bounds = _size_bounds(sizes)
        coef_t = grad * weights / hidden.shape[0]
        d_hidden, d_negatives = _walk_sizes_down(scores, gradient, kept, lse, coef_t.tolist(), bounds, hidden, negatives)
        # target column: dL/dp_k = c_k (softmax_k(target) - 1); p_k reads dims [0, m_k)
        a = coef_t[:, None] * ((target - lse).exp() - 1)                      # [K, T]
        per_dim = _per_dim(a.flip(0).cumsum(0).flip(0), sizes).T  # [T, d]: sum_{k' >= k} a_k' per dim
        d_hidden += per_dim * positives
        return d_hidden, per_dim * hidden, d_negatives, None, None, None


def sampled_nested_cross_entropy(hidden: torch.Tensor, labels: torch.Tensor, positives: torch.Tensor,
                                 negative_ids: torch.Tensor, negatives: torch.Tensor,
                                 negative_log_q: torch.Tensor, sizes, weights=None) -> torch.Tensor:
    """Sampled softmax at every granularity with shared negatives and log-Q correction.

    hidden [T, d], labels [T] target item ids, positives [T, d] their vectors; negative_ids [M] drawn
    with replacement from a proposal Q, negatives [M, d] their vectors, negative_log_q [M] = log(M Q(n)).
    Per size: logits [s_y, s_n1 - log(M Q(n1)), ...] with negatives equal to y removed ("accidental
    hits"), cross-entropy with the target in column 0. sum_i exp(s_ni) / (M Q(ni)) is an unbiased
    estimate of sum_{j != y} exp(s_j), so the loss tends to the full softmax as M grows; with every item
    drawn once under a uniform Q (log(M Q) = 0) it equals the full loss exactly.
    """
    bias = (-negative_log_q.to(hidden.dtype)).expand(len(labels), -1).clone()  # [T, M]
    bias.masked_fill_(labels[:, None] == negative_ids[None, :], float("-inf"))
    w = size_weights(sizes, weights).to(hidden)
    return SampledNestedCrossEntropy.apply(hidden, positives, negatives, bias, tuple(sizes), w)


class NegativeSampler(torch.nn.Module):
    """Proposal Q over items 1..N: 'uniform', or 'popularity' (Q proportional to training count + 1).

    Draws with replacement from the global torch generator (so a resumed run draws the same ones).
    """

    def __init__(self, num_items: int, kind: str = "uniform", counts: torch.Tensor | None = None):
        super().__init__()
        if kind not in ("uniform", "popularity"):
            raise ValueError(f"unknown negative sampler {kind!r}")
        self.kind, self.num_items = kind, num_items
        if kind == "popularity":
            mass = counts.double() + 1.0
            q = mass / mass.sum()
            self.register_buffer("log_q", q.log().float(), persistent=False)  # [N], item i at i - 1
            self.register_buffer("cdf", q.cumsum(0), persistent=False)

    def forward(self, m: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids [m] in 1..N, log(m Q(id)) [m])."""
        if self.kind == "uniform":
            ids = torch.randint(1, self.num_items + 1, (m,), device=device)
            return ids, torch.full((m,), math.log(m / self.num_items), device=device)
        u = torch.rand(m, dtype=torch.float64, device=self.cdf.device) * self.cdf[-1]
        index = torch.searchsorted(self.cdf, u).clamp_(max=self.num_items - 1)
        return index + 1, self.log_q[index] + math.log(m)


LOSSES = ("full", "chunked", "sampled")


def label_smoothing_term(hidden: torch.Tensor, positives: torch.Tensor, mean_item: torch.Tensor, sizes,
                         weights=None) -> torch.Tensor:
    """What label smoothing adds to the nested cross-entropy, per unit of epsilon.

    Smoothed CE = (1 - e) CE + e (lse - mean_c s_c) = CE + e (s_y - mean_c s_c), and mean_c s_c is
    hidden . mean_item, so the term is sum_k w_k mean_t hidden[t, :m_k] . (positive_t - mean_item)[:m_k]
    (hidden [T, d], positives [T, d], mean_item [d]): no score over the catalogue is needed, so the same
    term serves the full, chunked and sampled losses, and autograd differentiates it.
    """
    per_size = _target_scores(hidden, positives - mean_item, sizes).mean(1)  # [K]
    return (per_size * size_weights(sizes, weights).to(per_size)).sum()


class Objective(torch.nn.Module):
    """The model and its training loss in one module: forward(inputs, targets) -> scalar loss.

    This is what data-parallel training wraps (the item table is computed inside forward, so DDP sees
    every parameter's gradient). loss: 'full' (nested_cross_entropy, `method`), 'chunked' (exact, item
    blocks of `item_chunk`), 'sampled' (`num_negatives` shared negatives from `sampler`).
    label_smoothing e: targets (1 - e) one-hot + e uniform over the catalogue, at every size (as
    F.cross_entropy's label_smoothing); 'sampled' estimates the catalogue's mean item vector from the
    negatives, sum_i e_i / (M Q(i)) / N (unbiased; exact when every item is drawn once uniformly).
    """

    def __init__(self, model, sizes, weights=None, loss: str = "full", method: str = "fused",
                 item_chunk: int = 8192, num_negatives: int = 1000, sampler: NegativeSampler | None = None,
                 label_smoothing: float = 0.0):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}")
        self.model, self.sizes, self.weights = model, tuple(sizes), weights
        self.loss, self.method, self.item_chunk, self.num_negatives = loss, method, item_chunk, num_negatives
        self.sampler = sampler if sampler is not None else NegativeSampler(model.cfg.num_items)
        self.label_smoothing = label_smoothing
        self.workspace = ScoreWorkspace()  # the full loss's score buffers, reused step after step

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor, negatives=None) -> torch.Tensor:
        if self.loss == "sampled":
            return self.sampled(inputs, targets, negatives)
        table = self.model.item_table()
        has_target = targets > 0
        hidden = self.model(inputs, table, at=has_target)  # [T, d]: only where a target is
        targets = targets[has_target]
        if self.loss == "chunked":
            loss = chunked_nested_cross_entropy(hidden, targets, table, self.sizes, self.weights, self.item_chunk)
        else:
            loss = nested_cross_entropy(hidden, targets, table, self.sizes, self.weights, self.method, self.workspace)
        if self.label_smoothing:
            loss = loss + self.label_smoothing * label_smoothing_term(
                hidden, table[targets], table[1:].mean(0), self.sizes, self.weights)
        return loss

    def sampled(self, inputs, targets, negatives=None):
        """Only the rows the batch touches (inputs, targets, negatives) of the item table are computed.

        negatives: optional (ids [M], log(M Q) [M]) instead of drawing from the sampler (tests).
        """
        inputs, targets = inputs.contiguous(), targets.contiguous()
        neg_ids, neg_log_q = negatives if negatives is not None else self.sampler(self.num_negatives, inputs.device)
        zero = torch.zeros(1, dtype=inputs.dtype, device=inputs.device)
        rows = torch.unique(torch.cat([zero, inputs.flatten(), targets.flatten(), neg_ids]))  # sorted, 0 first
        table = self.model.item_table(rows)
        has_target = targets > 0
        hidden = self.model(torch.searchsorted(rows, inputs), table, at=has_target)  # [T, d]
        labels = targets[has_target]
        positives, negative_vectors = table[torch.searchsorted(rows, labels)], table[torch.searchsorted(rows, neg_ids)]
        loss = sampled_nested_cross_entropy(hidden, labels, positives, neg_ids, negative_vectors, neg_log_q,
                                            self.sizes, self.weights)
        if self.label_smoothing:
            importance = (-neg_log_q).exp().to(negative_vectors)[:, None] / self.model.cfg.num_items
            mean_item = (negative_vectors * importance).sum(0)
            loss = loss + self.label_smoothing * label_smoothing_term(
                hidden, positives, mean_item, self.sizes, self.weights)
        return loss
