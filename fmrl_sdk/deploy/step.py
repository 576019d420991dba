"""The standalone recurrent step model of one granularity s, folded out of a trained nested model.

Slicing is exact: chunk k of every nested weight only reads input dims [0, m_k), so the leading s x s
corner of each (masked) weight, the chunk LayerNorms up to s, the LRU parameters [:s] and the item
table E[:, :s] *are* the size-s model (`FMRLRec.cut(s)`, whose blocks StepBlock folds; the chunk averaging
matrix is `NestedLayerNorm.averaging_matrix`). On top of the cut, constants are folded for the device:

* LayerNorm affine parameters are folded into the linear that follows each norm;
* the LRU input gain gamma is folded into the input projection;
* lambda = exp(-exp(nu) + i exp(theta)) is precomputed as its real and imaginary parts;
* the FFN gate and value projections become one [2s, s] linear;
* a chunk LayerNorm is two products with a block-diagonal averaging matrix (no per-chunk ops).

All arithmetic is real float32 (no complex dtypes). One call costs the same whatever the history
length: a few s x s products for the blocks and one N x s product for the scores (the only read of the
item table). The top-k is not in the program: both runtimes select the top k_max of the returned scores
(`fmrl_sdk.runtime.engine.select_topk`, runtime/cpp/src/internal.hpp `select_topk`; issue 28 part 4,
benchmarks/RESULTS.md "The top-k in the runtime": ExecuTorch's top-k inside the program was slower).

`forward(x [1, s] float32, state [2 * blocks, s] float32) -> (scores [N], hidden [s], new_state)` is the
signature of docs/bundle-format.md (format 3): x is the observed item's vector, which the runtime reads from
the bundle (export-time items: the program's own copy of the scoring table, located by the manifest's
`item_table`) or from `add_items`; scores[i - 1] is the score of internal item i (1..N).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..model.model import FMRLRec

STEP_VERSION = 4   # bump when the exported graph changes (invalidates deploy_cache.json measurements)


class ChunkNorm(nn.Module):
    """Per-chunk LayerNorm without affine (the affine part is folded into the next linear).

    A module of its own so that int8 quantisation can leave it in float (`lowering.quantize_step`).
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
    """One LRU block of size s, constants folded (see the module docstring). `block` is a block of the
    size-s model (`FMRLRec.cut(s)`): its masked weights are the step's weights."""

    def __init__(self, block):
        super().__init__()
        lru, ffn = block.lru, block.ffn
        self.lru_norm = ChunkNorm(block.lru_norm.averaging_matrix(), block.lru_norm.eps)
        self.ffn_norm = ChunkNorm(block.ffn_norm.averaging_matrix(), block.ffn_norm.eps)
        with torch.no_grad():
            # u = gamma * (W_in LN(x) + b_in), LN(x) = n * w + b  ->  W' n + b'
            gamma = torch.exp(lru.gamma_log).repeat(2)[:, None]
            w_in = lru.in_proj.masked_weight() * gamma
            b_in = lru.in_proj.bias * gamma[:, 0]
            ln_w, ln_b = block.lru_norm.weight, block.lru_norm.bias
            self.in_weight = nn.Parameter(w_in * ln_w[None, :], requires_grad=False)
            self.in_bias = nn.Parameter(b_in + w_in @ ln_b, requires_grad=False)
            log_mag, angle = lru.log_lambda()
            self.lam_real = nn.Parameter(torch.exp(log_mag) * torch.cos(angle), requires_grad=False)
            self.lam_imag = nn.Parameter(torch.exp(log_mag) * torch.sin(angle), requires_grad=False)
            self.out_weight = nn.Parameter(lru.out_proj.masked_weight().clone(), requires_grad=False)
            self.out_bias = nn.Parameter(lru.out_proj.bias.clone(), requires_grad=False)
            # [gate; w1] share the input LN(h)
            w_gv = torch.cat([ffn.gate.masked_weight(), ffn.w1.masked_weight()])
            b_gv = torch.cat([ffn.gate.bias, ffn.w1.bias])
            ln_w, ln_b = block.ffn_norm.weight, block.ffn_norm.bias
            self.gv_weight = nn.Parameter(w_gv * ln_w[None, :], requires_grad=False)
            self.gv_bias = nn.Parameter(b_gv + w_gv @ ln_b, requires_grad=False)
            self.w2_weight = nn.Parameter(ffn.w2.masked_weight().clone(), requires_grad=False)
            self.w2_bias = nn.Parameter(ffn.w2.bias.clone(), requires_grad=False)
        self.size = block.lru_norm.weight.shape[0]

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


def topk_groups(num_items: int, k: int) -> int:
    """(The in-program top-k of programs before issue 28 part 4, kept for `benchmarks/step_latency.py
    --compare-topk`.) Group size of `block_topk` for N items: about sqrt(N / k), which balances its two top-k passes
    (N / g group maxima, then k * g candidates); 0 when grouping gains nothing (one top-k over N)."""
    group = max(2, round((num_items / max(k, 1)) ** 0.5))
    return group if -(-num_items // group) > k else 0


def block_topk(scores: torch.Tensor, k: int, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k of scores [1, N] in two small passes. Items are split into G = ceil(N / group) groups
    (item i belongs to group i mod G, so after padding to group * G the scores are `group` rows of G
    and the group maxima are an elementwise maximum of those rows, which XNNPACK runs inside the
    scoring delegate). The k groups with the highest maxima hold the top-k items (an item outside them
    is beaten by k group maxima), so: top-k over G maxima (unsorted), then top-k over those groups'
    group * k members. Same values as torch.topk, indices equal up to the order of equal scores.
    scores: [N] or [1, N]. Returns (values [k] descending, indices [k] into scores)."""
    n = scores.shape[-1]
    groups = -(-n // group) if group > 1 else 0
    if groups <= k:  # too few groups to gain anything
        return torch.topk(scores.reshape(n), k)
    rows = F.pad(scores.reshape(1, n), (0, groups * group - n), value=float("-inf"))   # row j: items jG..jG+G-1
    maxima = rows[:, :groups]
    for j in range(1, group):
        maxima = torch.maximum(maxima, rows[:, j * groups:(j + 1) * groups])
    _, best = torch.topk(maxima.reshape(groups), k, sorted=False)
    candidates = torch.index_select(rows.reshape(group, groups), 1, best).reshape(group * k)
    values, position = torch.topk(candidates, k)
    column = torch.index_select(best, 0, torch.remainder(position, k))
    return values, torch.div(position, k, rounding_mode="floor") * groups + column


class ItemScorer(nn.Module):
    """scores = hidden @ table^T over the N real items (row 0, the padding item, is not stored)."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = nn.Parameter(table, requires_grad=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.table)


class StepModel(nn.Module):
    """Size-s recurrent step. forward(x [1, s] item vector, state [2 * blocks, s]) ->
    (scores [N] of items 1..N, hidden [s], new state [2 * blocks, s]).

    The item table [N, s] is read once per call, by the scoring product; the observed item's vector
    comes in as x (`vector(index)` is export-time item index's row, as the runtime reads it). k_max is
    the bundle's (the runtimes select the top k_max of the scores) and cold_start's length.
    """

    def __init__(self, model: FMRLRec, size: int, k_max: int = 100, table: torch.Tensor | None = None):
        super().__init__()
        cfg = model.cfg
        if size not in cfg.sizes:
            raise ValueError(f"size {size} was not trained; trained sizes: {list(cfg.sizes)}")
        with torch.no_grad():
            full = model.item_table() if table is None else table
            self.scorer = ItemScorer(full[1:, :size].detach().clone().contiguous())
            self.blocks = nn.ModuleList(StepBlock(b) for b in model.cut(size).blocks)
            self.cold_hidden = model.empty_history_hidden(full)[:size].detach().clone()
        self.size, self.num_items, self.num_blocks = size, cfg.num_items, cfg.num_blocks
        self.k_max = min(k_max, cfg.num_items)
        self.requires_grad_(False)
        self.eval()

    def initial_state(self) -> torch.Tensor:
        return torch.zeros(2 * self.num_blocks, self.size)

    def example_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(1, self.size), self.initial_state()

    def vector(self, index: int) -> torch.Tensor:
        """[1, s] fp32 vector of internal item index (1..N): the scoring table's row."""
        return self.scorer.table[index - 1:index]

    def hidden_step(self, x: torch.Tensor, state: torch.Tensor):
        parts = []
        for b, block in enumerate(self.blocks):
            x, real, imag = block(x, state[2 * b:2 * b + 1], state[2 * b + 1:2 * b + 2])
            parts += [real, imag]
        return x, torch.cat(parts, dim=0)

    def forward(self, x: torch.Tensor, state: torch.Tensor):
        hidden, new_state = self.hidden_step(x, state)
        return self.scorer(hidden)[0], hidden[0], new_state

    def all_scores(self, x: torch.Tensor, state: torch.Tensor):
        """(scores over items 1..N [N], new state): `forward` without the hidden vector (for checks)."""
        hidden, new_state = self.hidden_step(x, state)
        return self.scorer(hidden)[0], new_state

    def cold_start(self, k: int | None = None) -> dict:
        """Recommendation before any interaction (bundle's cold_start.json)."""
        from ..runtime.engine import select_topk   # the runtimes' order: equal scores, lower index first

        k = k or self.k_max
        with torch.no_grad():
            values, indices = select_topk(self.scorer(self.cold_hidden[None])[0].numpy(), k)
        return {"indices": (indices + 1).tolist(), "scores": values.tolist(), "hidden": self.cold_hidden.tolist()}


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
    """Run the step model over one sequence (each item's vector in, as the runtime feeds it); scores
    over items 1..N after every event [len, N]."""
    state, rows = step.initial_state(), []
    for item in sequence:
        scores, state = step.all_scores(step.vector(int(item)), state)
        rows.append(scores)
    return torch.stack(rows)
