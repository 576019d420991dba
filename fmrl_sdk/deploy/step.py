"""The standalone recurrent step model of one granularity s, folded out of a trained nested model.

Slicing is exact: chunk k of every nested weight only reads input dims [0, m_k), so the leading s x s
corner of each (masked) weight, the chunk LayerNorms up to s, the LRU parameters [:s] and the item
table E[:, :s] *are* the size-s model. On top of the cut, constants are folded for the device:

* LayerNorm affine parameters are folded into the linear that follows each norm;
* the LRU input gain gamma is folded into the input projection;
* lambda = exp(-exp(nu) + i exp(theta)) is precomputed as its real and imaginary parts;
* the FFN gate and value projections become one [2s, s] linear;
* a chunk LayerNorm is two products with a block-diagonal averaging matrix (no per-chunk ops).

All arithmetic is real float32 (no complex dtypes). One call costs the same whatever the history
length: a few s x s products for the blocks plus one N x s product for the scores.

`forward(item [1] int64, state [2 * blocks, s] float32) -> (scores [k], indices [k], new_state, hidden [s])`
is the signature of docs/bundle-format.md; item indices are internal (1..N).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..model.model import FMRLRec

STEP_VERSION = 2   # bump when the exported graph changes (invalidates deploy_cache.json measurements)


def averaging_matrix(sizes: tuple[int, ...], size: int) -> torch.Tensor:
    """[s, s] block-diagonal matrix: (x @ M)[i] = mean of x over i's chunk (chunks of `sizes` up to s)."""
    m = torch.zeros(size, size)
    start = 0
    for end in sizes:
        if end > size:
            break
        m[start:end, start:end] = 1.0 / (end - start)
        start = end
    return m


def _groups(d: int, size: int, n: int) -> torch.Tensor:
    """Indices of the leading `size` entries of each of n consecutive d-dim groups."""
    return torch.cat([torch.arange(g * d, g * d + size) for g in range(n)])


def _cut(weight: torch.Tensor, d: int, size: int, n_out: int = 1, n_in: int = 1) -> torch.Tensor:
    """Leading size x size corner of every d x d group block of a [n_out * d, n_in * d] weight."""
    return weight[_groups(d, size, n_out)][:, _groups(d, size, n_in)]


class ChunkNorm(nn.Module):
    """Per-chunk LayerNorm without affine (the affine part is folded into the next linear).

    A module of its own so that int8 quantisation can leave it in float (`export.quantize_step`).
    """

    def __init__(self, average: torch.Tensor, eps: float):
        super().__init__()
        self.average = nn.Parameter(average, requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - F.linear(x, self.average)          # the matrix is symmetric: M^T = M
        var = F.linear(centred * centred, self.average)
        return centred * torch.rsqrt(var + self.eps)


class StepBlock(nn.Module):
    """One LRU block of size s, constants folded (see the module docstring)."""

    def __init__(self, block, sizes: tuple[int, ...], size: int):
        super().__init__()
        d = sizes[-1]
        lru, ffn = block.lru, block.ffn
        average = averaging_matrix(sizes, size)
        self.lru_norm = ChunkNorm(average.clone(), block.lru_norm.eps)
        self.ffn_norm = ChunkNorm(average.clone(), block.ffn_norm.eps)
        with torch.no_grad():
            # u = gamma * (W_in LN(x) + b_in), LN(x) = n * w + b  ->  W' n + b'
            gamma = torch.exp(lru.gamma_log[:size]).repeat(2)[:, None]
            w_in = _cut(lru.in_proj.masked_weight(), d, size, n_out=2) * gamma
            b_in = lru.in_proj.bias[_groups(d, size, 2)] * gamma[:, 0]
            ln_w, ln_b = block.lru_norm.weight[:size], block.lru_norm.bias[:size]
            self.in_weight = nn.Parameter(w_in * ln_w[None, :], requires_grad=False)
            self.in_bias = nn.Parameter(b_in + w_in @ ln_b, requires_grad=False)
            log_mag, angle = (t[:size] for t in lru.log_lambda())
            self.lam_real = nn.Parameter(torch.exp(log_mag) * torch.cos(angle), requires_grad=False)
            self.lam_imag = nn.Parameter(torch.exp(log_mag) * torch.sin(angle), requires_grad=False)
            self.out_weight = nn.Parameter(_cut(lru.out_proj.masked_weight(), d, size, n_in=2).clone(),
                                           requires_grad=False)
            self.out_bias = nn.Parameter(lru.out_proj.bias[:size].clone(), requires_grad=False)
            # [gate; w1] share the input LN(h)
            w_gv = torch.cat([_cut(ffn.gate.masked_weight(), d, size), _cut(ffn.w1.masked_weight(), d, size)])
            b_gv = torch.cat([ffn.gate.bias[:size], ffn.w1.bias[:size]])
            ln_w, ln_b = block.ffn_norm.weight[:size], block.ffn_norm.bias[:size]
            self.gv_weight = nn.Parameter(w_gv * ln_w[None, :], requires_grad=False)
            self.gv_bias = nn.Parameter(b_gv + w_gv @ ln_b, requires_grad=False)
            self.w2_weight = nn.Parameter(_cut(ffn.w2.masked_weight(), d, size).clone(), requires_grad=False)
            self.w2_bias = nn.Parameter(ffn.w2.bias[:size].clone(), requires_grad=False)
        self.size = size

    def forward(self, x, h_real, h_imag):
        s = self.size
        u = F.linear(self.lru_norm(x), self.in_weight, self.in_bias)
        u_real, u_imag = u[:, :s], u[:, s:]
        real = self.lam_real * h_real - self.lam_imag * h_imag + u_real
        imag = self.lam_real * h_imag + self.lam_imag * h_real + u_imag
        h = x + F.linear(torch.cat([real, imag], dim=1), self.out_weight, self.out_bias)
        gv = F.linear(self.ffn_norm(h), self.gv_weight, self.gv_bias)
        gate, value = gv[:, :s], gv[:, s:]
        out = h + F.linear(gate * torch.sigmoid(gate) * value, self.w2_weight, self.w2_bias)
        return out, real, imag


def block_topk(scores: torch.Tensor, k: int, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k of scores [N] in two small passes: the k blocks (of `block` consecutive items) with
    the highest maxima hold the top-k items (any item outside them is beaten by k block maxima), so
    top-k over [N / block] maxima, then over those k blocks' k * block scores. Same result as
    torch.topk up to the order of equal scores, and far cheaper than one top-k over N for k ~ 100.
    scores: [N] or [1, N] (padding and reshaping the [1, N] product output keeps them in its delegate).
    Returns (values [k] descending, indices [k] into scores)."""
    n = scores.shape[-1]
    blocks = -(-n // block)
    if blocks <= k:  # too few blocks to gain anything
        return torch.topk(scores.reshape(n), k)
    padded = F.pad(scores, (0, blocks * block - n), value=float("-inf")).reshape(blocks, block)
    _, best_blocks = torch.topk(torch.amax(padded, dim=1), k)
    candidates = torch.index_select(padded, 0, best_blocks).reshape(k * block)
    values, position = torch.topk(candidates, k)
    block_of = torch.index_select(best_blocks, 0, torch.div(position, block, rounding_mode="floor"))
    return values, block_of * block + torch.remainder(position, block)


class ItemScorer(nn.Module):
    """scores = hidden @ table^T over the N real items (row 0, the padding item, is not stored)."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = nn.Parameter(table, requires_grad=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.table)


LOOKUPS = ("embedding", "onehot", "int8")


class StepModel(nn.Module):
    """Size-s recurrent step. forward(item [1] int64 in 1..N, state [2 * blocks, s]) ->
    (top-k scores [k], top-k indices [k] in 1..N, new state [2 * blocks, s], hidden [s]).

    lookup: how the item's vector is read from the table (see export.TABLE_DESIGNS):
      "embedding" - a gather (runs as a portable kernel outside the XNNPACK delegate);
      "onehot"    - one-hot(item) @ table, a product that runs inside the delegate on the very table
                    the scoring linear uses, so the program stores the table once;
      "int8"      - a gather from a per-item int8 copy of the table (int8 bundles).
    topk_block: exact two-pass top-k over blocks of this many items (0: one torch.topk over N).
    """

    def __init__(self, model: FMRLRec, size: int, k_max: int = 100, table: torch.Tensor | None = None,
                 lookup: str = "embedding", topk_block: int = 8):
        super().__init__()
        cfg = model.cfg
        if size not in cfg.sizes:
            raise ValueError(f"size {size} was not trained; trained sizes: {list(cfg.sizes)}")
        with torch.no_grad():
            full = model.item_table() if table is None else table
            self.scorer = ItemScorer(full[1:, :size].detach().clone().contiguous())
            self.blocks = nn.ModuleList(StepBlock(b, cfg.sizes, size) for b in model.blocks)
            self.cold_hidden = model.empty_history_hidden(full)[:size].detach().clone()
        self.size, self.num_items, self.num_blocks = size, cfg.num_items, cfg.num_blocks
        self.k_max = min(k_max, cfg.num_items)
        if lookup not in LOOKUPS:
            raise ValueError(f"lookup must be one of {LOOKUPS}, got {lookup!r}")
        self.lookup_mode = lookup
        if lookup == "int8":
            # per-item symmetric int8 copy of the table for the lookup (scoring quantises its own)
            table = self.scorer.table
            scale = (table.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
            self.lookup_q = nn.Parameter(torch.round(table / scale[:, None]).clamp(-127, 127).to(torch.int8),
                                         requires_grad=False)
            self.lookup_scale = nn.Parameter(scale[:, None].contiguous(), requires_grad=False)
        self.topk_block = topk_block
        self.requires_grad_(False)
        self.eval()

    def initial_state(self) -> torch.Tensor:
        return torch.zeros(2 * self.num_blocks, self.size)

    def lookup(self, item: torch.Tensor) -> torch.Tensor:
        """[1] internal index (1..N) -> [1, s] item vector, read from the scoring table."""
        if self.lookup_mode == "int8":
            index = item - 1
            return F.embedding(index, self.lookup_q).to(torch.float32) * F.embedding(index, self.lookup_scale)
        if self.lookup_mode == "onehot":  # a product with the table: runs inside the XNNPACK delegate
            offset = torch.arange(self.num_items, dtype=torch.float32) - (item - 1).to(torch.float32)
            onehot = torch.clamp(1.0 - torch.abs(offset), min=0.0)   # exactly 1 at item - 1, else 0
            return torch.mm(onehot[None], self.scorer.table)
        return F.embedding(item - 1, self.scorer.table)

    def hidden_step(self, x: torch.Tensor, state: torch.Tensor):
        parts = []
        for b, block in enumerate(self.blocks):
            x, real, imag = block(x, state[2 * b:2 * b + 1], state[2 * b + 1:2 * b + 2])
            parts += [real, imag]
        return x, torch.cat(parts, dim=0)

    def forward(self, item: torch.Tensor, state: torch.Tensor):
        hidden, new_state = self.hidden_step(self.lookup(item), state)
        scores = self.scorer(hidden)   # [1, N]
        if self.topk_block:
            values, indices = block_topk(scores, self.k_max, self.topk_block)
        else:
            values, indices = torch.topk(scores[0], self.k_max)
        return values, indices + 1, new_state, hidden[0]

    def all_scores(self, item: torch.Tensor, state: torch.Tensor):
        """(scores over items 1..N [N], new state): the same step without top-k (for checks)."""
        hidden, new_state = self.hidden_step(self.lookup(item), state)
        return self.scorer(hidden)[0], new_state

    def cold_start(self, k: int | None = None) -> dict:
        """Recommendation before any interaction (bundle's cold_start.json)."""
        k = k or self.k_max
        with torch.no_grad():
            values, indices = torch.topk(self.scorer(self.cold_hidden[None])[0], k)
        return {"indices": (indices + 1).tolist(), "scores": values.tolist(), "hidden": self.cold_hidden.tolist()}


class ScoreOnly(nn.Module):
    """The scoring product alone (benchmark floor): hidden [1, s] -> scores [1, N]."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.scorer = ItemScorer(table.detach().clone().contiguous())
        self.requires_grad_(False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.scorer(hidden)


@torch.no_grad()
def parallel_scores(model: FMRLRec, sequences: list, size: int) -> list[torch.Tensor]:
    """Reference: for each sequence, size-s scores over items 1..N after every prefix ([len, N] each),
    from the full nested model in parallel mode."""
    table = model.item_table()
    out = []
    for seq in sequences:
        items = torch.as_tensor(seq, dtype=torch.long)[None]
        hidden = model(items, table)[0]
        out.append(FMRLRec.scores(hidden, table, size))
    return out


@torch.no_grad()
def stream_scores(step: StepModel, sequence) -> torch.Tensor:
    """Run the step model over one sequence; scores over items 1..N after every event [len, N]."""
    state, rows = step.initial_state(), []
    for item in sequence:
        scores, state = step.all_scores(torch.tensor([int(item)]), state)
        rows.append(scores)
    return torch.stack(rows)


