"""fMRLRec: a Linear-Recurrent-Unit sequential recommender whose weights hold every model size at once.

Granularities m_1 < ... < m_K = d split the hidden dimension into chunks [m_{k-1}, m_k). Every weight
matrix is block lower-triangular over those chunks, every LayerNorm is per chunk, and everything else
is per dimension, so the first m_k hidden dims never look at the rest: `model.cut(m_k)` is exactly the
size-m_k model. Shapes: B batch, L sequence length, d = m_K hidden size, N items, F feature dims.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULT_SIZES = (8, 16, 32, 64, 128, 256, 512, 1024)
ITEM_EMBEDDINGS = ("content", "id", "hybrid")
RETIRED_KEYS = ("extra",)   # ModelConfig fields of older SDK versions, ignored when reading a config.json


def uses_content(item_embedding: str) -> bool:
    """Item vectors of this kind include projected content features (content, hybrid)."""
    return item_embedding in ("content", "hybrid")


def uses_ids(item_embedding: str) -> bool:
    """Item vectors of this kind include a learned per-id vector (id, hybrid)."""
    return item_embedding in ("id", "hybrid")


@dataclass
class ModelConfig:
    num_items: int                            # N, items are 1..N, 0 is padding
    sizes: tuple[int, ...] = DEFAULT_SIZES    # nested granularities; the last is d
    feature_dim: int = 0                      # F: concatenated content features (0: no content)
    item_embedding: str = "content"           # content | id | hybrid (content + learned id vector)
    whiten_features: bool = False             # centre and whiten content features before the projector
    id_dims: int = 0                          # hybrid: the id vector fills the first id_dims dims only (0: all d)
    num_blocks: int = 1
    dropout: float = 0.1                      # embedding and feed-forward dropout
    lru_dropout: float = 0.1                  # dropout on the LRU output
    r_min: float = 0.0                        # ring initialisation radius of |lambda|
    r_max: float = 0.1

    def __post_init__(self):
        self.sizes = tuple(int(s) for s in self.sizes)
        if not self.sizes or any(b <= a for a, b in zip(self.sizes, self.sizes[1:])) or self.sizes[0] < 1:
            raise ValueError(f"sizes must be strictly increasing positive integers, got {self.sizes}")
        if self.item_embedding not in ITEM_EMBEDDINGS:
            raise ValueError(f"item_embedding must be one of {ITEM_EMBEDDINGS}, got {self.item_embedding!r}")
        if self.uses_content and self.feature_dim <= 0:
            raise ValueError(f"item_embedding={self.item_embedding!r} needs content features (feature_dim > 0)")
        if self.id_dims and (self.item_embedding != "hybrid" or not 1 <= self.id_dims <= self.d):
            raise ValueError(f"id_dims={self.id_dims} needs item_embedding='hybrid' and 1 <= id_dims <= d ({self.d})")

    @classmethod
    def from_dict(cls, config: dict) -> "ModelConfig":
        """From a run's config.json "model" entry. Keys only older SDK versions wrote (RETIRED_KEYS) are
        dropped; any other unknown key is a TypeError, as in the constructor."""
        return cls(**{k: v for k, v in config.items() if k not in RETIRED_KEYS})

    @property
    def d(self) -> int:
        return self.sizes[-1]

    @property
    def id_width(self) -> int:
        """Dimensions the learned id vector fills (the leading ones): id_dims, or all d when 0."""
        return self.id_dims or self.d

    @property
    def uses_content(self) -> bool:
        return uses_content(self.item_embedding)

    @property
    def uses_ids(self) -> bool:
        return uses_ids(self.item_embedding)

    def to_dict(self) -> dict:
        return {**asdict(self), "sizes": list(self.sizes)}


def whitening(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ZCA whitening of content features [N + 1, F] (row 0, padding, left out): (mean [F], matrix [F, F]).

    (f - mean) @ matrix has identity covariance over the items, scaled by 1/sqrt(F) so that vectors keep
    about unit norm like the L2-normalised encoder outputs. Directions with almost no variance are damped
    (eigenvalues floored at 1e-5 of the largest). Frozen sentence embeddings crowd into a narrow cone
    (mean cosine ~0.4 for MiniLM on Beauty); spreading them out makes the projector far easier to train.
    """
    x = features[1:].double()
    mean = x.mean(0)
    centred = x - mean
    eigenvalues, vectors = torch.linalg.eigh(centred.T @ centred / max(1, len(x) - 1))
    floor = 1e-5 * eigenvalues.max().clamp(min=1e-12)
    matrix = vectors @ torch.diag((eigenvalues.clamp(min=0) + floor).rsqrt()) @ vectors.T / x.shape[1] ** 0.5
    return mean.float(), matrix.float()


def nested_mask(sizes: tuple[int, ...]) -> torch.Tensor:
    """[d, d] block lower-triangular 0/1 mask: output i may read input j iff j < end of i's chunk."""
    d = sizes[-1]
    chunk_end = torch.empty(d, dtype=torch.long)
    start = 0
    for end in sizes:
        chunk_end[start:end] = end
        start = end
    return (torch.arange(d)[None, :] < chunk_end[:, None]).float()


class NestedLinear(nn.Module):
    """y = x W^T + b with W block lower-triangular over the size chunks.

    `n_in`/`n_out` stack several d-dim groups (for real/imaginary parts): the weight is
    [n_out * d, n_in * d] and every d x d block carries the same nested mask.
    """

    def __init__(self, sizes: tuple[int, ...], n_in: int = 1, n_out: int = 1, zero_init_groups: tuple = ()):
        super().__init__()
        d = sizes[-1]
        self.sizes, self.n_in, self.n_out = sizes, n_in, n_out
        self.register_buffer("mask", nested_mask(sizes).repeat(n_out, n_in), persistent=False)
        self.weight = nn.Parameter(torch.empty(n_out * d, n_in * d))
        self.bias = nn.Parameter(torch.empty(n_out * d))
        # nn.Linear's default init per output chunk: U(+-1/sqrt(fan_in)), fan_in = the chunk's input width
        bound = self.mask[:, :d].sum(1, keepdim=True).rsqrt()  # [n_out * d, 1]
        with torch.no_grad():
            self.weight.copy_((torch.rand_like(self.weight) * 2 - 1) * bound)
            self.bias.copy_((torch.rand_like(self.bias) * 2 - 1) * bound[:, 0])
            for g in zero_init_groups:  # e.g. imaginary parts start at 0, as a real Linear cast to complex
                self.weight[g * d:(g + 1) * d] = 0
                self.bias[g * d:(g + 1) * d] = 0

    def masked_weight(self) -> torch.Tensor:
        return self.weight * self.mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.masked_weight(), self.bias)

    def cut_state(self, size: int) -> dict[str, torch.Tensor]:
        """Weights of the size-`size` model: the leading size x size corner of every group block."""
        d = self.sizes[-1]
        rows = torch.cat([torch.arange(g * d, g * d + size) for g in range(self.n_out)])
        cols = torch.cat([torch.arange(g * d, g * d + size) for g in range(self.n_in)])
        return {"weight": self.weight[rows][:, cols], "bias": self.bias[rows]}

    def num_effective_params(self) -> int:
        return int(self.mask.sum().item()) + self.bias.numel()


class NestedLayerNorm(nn.Module):
    """An independent LayerNorm over every size chunk, computed for all chunks at once.

    `assign` [d, K] maps dims to chunks; chunk means are x @ (assign / chunk widths).
    """

    def __init__(self, sizes: tuple[int, ...], eps: float = 1e-5):
        super().__init__()
        d, starts = sizes[-1], (0,) + sizes[:-1]
        assign = torch.zeros(d, len(sizes))
        for k, (a, b) in enumerate(zip(starts, sizes)):
            assign[a:b, k] = 1.0
        self.register_buffer("assign", assign, persistent=False)
        self.register_buffer("average", assign / assign.sum(0), persistent=False)
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = (x @ self.average) @ self.assign.T
        centred = x - mean
        var = ((centred * centred) @ self.average) @ self.assign.T
        return centred * torch.rsqrt(var + self.eps) * self.weight + self.bias

    def cut_state(self, size: int) -> dict[str, torch.Tensor]:
        return {"weight": self.weight[:size], "bias": self.bias[:size]}

    def averaging_matrix(self) -> torch.Tensor:
        """[d, d] block-diagonal: (x @ M)[i] = mean of x over i's chunk (M is symmetric)."""
        return self.average @ self.assign.T


@dataclass
class Packed:
    """The positions of a left-padded [B, L] batch that are computed, packed as P rows of [P, d].

    flat [P]: row-major indices into B * L; is_item [P]: the position holds an item (False: padding whose
    output is still needed, e.g. where the first item is predicted from an empty history). Positions
    outside `flat` are padding nobody reads: they cost nothing but their place in the scan.
    """

    flat: torch.Tensor
    is_item: torch.Tensor
    batch: int
    length: int


@dataclass
class LRUState:
    """Recurrent state of one LRU layer: h = real + i * imag, each [B, d] float32."""

    real: torch.Tensor
    imag: torch.Tensor


class LRU(nn.Module):
    """Diagonal complex linear recurrence h_t = lambda * h_{t-1} + gamma * (B x_t + b), y_t = Re(C h_t) + c.

    lambda = exp(-exp(nu_log) + i exp(theta_log)) per dimension; B and C are nested complex linears
    stored as real blocks: in_proj gives [Re; Im] of B x + b, out_proj reads [Re h, Im h].
    """

    def __init__(self, sizes: tuple[int, ...], r_min: float, r_max: float, dropout: float):
        super().__init__()
        d = sizes[-1]
        u1, u2 = torch.rand(d), torch.rand(d)
        nu_log = torch.log(-0.5 * torch.log(u1 * (r_max**2 - r_min**2) + r_min**2))
        theta_log = torch.log(2 * math.pi * u2)
        gamma_log = torch.log(torch.sqrt(1 - torch.exp(-torch.exp(nu_log)) ** 2))
        self.nu_log, self.theta_log, self.gamma_log = (nn.Parameter(p) for p in (nu_log, theta_log, gamma_log))
        self.in_proj = NestedLinear(sizes, n_out=2, zero_init_groups=(1,))
        self.out_proj = NestedLinear(sizes, n_in=2)
        with torch.no_grad():  # imaginary half of C starts at zero (columns d..2d)
            self.out_proj.weight[:, d:] = 0
        self.dropout = nn.Dropout(dropout)

    def log_lambda(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(log|lambda|, arg lambda), each [d]."""
        return -torch.exp(self.nu_log), torch.exp(self.theta_log)

    def inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """gamma * (B x + b) as (real, imag), each [..., d]."""
        u = self.in_proj(x) * torch.exp(self.gamma_log).repeat(2)
        return u.chunk(2, dim=-1)

    def outputs(self, h_real: torch.Tensor, h_imag: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.out_proj(torch.cat([h_real, h_imag], dim=-1)))

    def forward(self, x: torch.Tensor, packed: Packed) -> torch.Tensor:
        """Parallel mode. x [P, d] at the packed positions of a [B, L] batch, L a power of two -> [P, d]."""
        u_real, u_imag = self.inputs(x)
        keep = packed.is_item[:, None].to(u_real.dtype)  # padding feeds nothing into the state
        grid = x.new_zeros(packed.batch * packed.length, x.shape[-1])
        u = torch.complex(grid.index_copy(0, packed.flat, u_real * keep),
                          grid.index_copy(0, packed.flat, u_imag * keep))
        h = parallel_scan(u.view(packed.batch, packed.length, -1), *self.log_lambda())
        h = h.view(packed.batch * packed.length, -1).index_select(0, packed.flat)
        return self.outputs(h.real, h.imag)

    def step(self, x: torch.Tensor, state: LRUState) -> tuple[torch.Tensor, LRUState]:
        """Recurrent mode, one event. x [B, d]; real arithmetic only (exportable, no complex dtype)."""
        u_real, u_imag = self.inputs(x)
        magnitude, angle = self.log_lambda()
        lam_real, lam_imag = torch.exp(magnitude) * torch.cos(angle), torch.exp(magnitude) * torch.sin(angle)
        real = lam_real * state.real - lam_imag * state.imag + u_real
        imag = lam_real * state.imag + lam_imag * state.real + u_imag
        return self.outputs(real, imag), LRUState(real, imag)

    def cut_state(self, size: int) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name)[:size] for name in ("nu_log", "theta_log", "gamma_log")}


def parallel_scan(u: torch.Tensor, log_magnitude: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """h_t = lambda * h_{t-1} + u_t with h_{-1} = 0, in log2(L) doubling steps.

    u [B, L, d] complex with L a power of two; lambda = exp(log_magnitude + i * angle), each [d].
    Step j joins neighbouring blocks of length b = 2^j: the right block adds lambda^(1..b) times the
    left block's last state.
    """
    batch, length, d = u.shape
    powers = torch.arange(1, max(length // 2, 1) + 1, device=u.device, dtype=log_magnitude.dtype)[:, None]
    lambda_powers = torch.exp(torch.complex(powers * log_magnitude, powers * angle))  # [L/2, d]
    h, block = u, 1
    while block < length:
        h = h.reshape(batch, length // (2 * block), 2 * block, d)
        left, right = h[:, :, :block], h[:, :, block:]
        right = right + lambda_powers[:block] * left[:, :, -1:]
        h = torch.cat([left, right], dim=2).reshape(batch, length, d)
        block *= 2
    return h


class FeedForward(nn.Module):
    """Gated SiLU: W2(SiLU(G x) * W1 x), all nested."""

    def __init__(self, sizes: tuple[int, ...], dropout: float):
        super().__init__()
        self.gate, self.w1, self.w2 = NestedLinear(sizes), NestedLinear(sizes), NestedLinear(sizes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.w2(F.silu(self.gate(x)) * self.dropout(self.w1(x))))


class Block(nn.Module):
    """Pre-LayerNorm residual block: h = x + LRU(LN(x)); out = h + FFN(LN(h))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.lru_norm, self.ffn_norm = NestedLayerNorm(cfg.sizes), NestedLayerNorm(cfg.sizes)
        self.lru = LRU(cfg.sizes, cfg.r_min, cfg.r_max, cfg.lru_dropout)
        self.ffn = FeedForward(cfg.sizes, cfg.dropout)

    def forward(self, x: torch.Tensor, packed: Packed) -> torch.Tensor:
        """x [P, d] at the packed positions -> [P, d]."""
        h = x + self.lru(self.lru_norm(x), packed)
        return h + self.ffn(self.ffn_norm(h))

    def step(self, x: torch.Tensor, state: LRUState) -> tuple[torch.Tensor, LRUState]:
        y, state = self.lru.step(self.lru_norm(x), state)
        h = x + y
        return h + self.ffn(self.ffn_norm(h)), state


class FMRLRec(nn.Module):
    """Item table from content (and/or ids), LRU blocks, weight-tied scoring at any granularity.

    features: [N + 1, F] frozen content features (row 0 = padding, zeros), or None without content.
    """

    def __init__(self, cfg: ModelConfig, features: torch.Tensor | None = None):
        super().__init__()
        self.cfg = cfg
        d = cfg.d
        if cfg.uses_content:
            if features is None or features.shape != (cfg.num_items + 1, cfg.feature_dim):
                got = None if features is None else tuple(features.shape)
                raise ValueError(f"expected features of shape {(cfg.num_items + 1, cfg.feature_dim)}, got {got}")
            self.register_buffer("features", features.float(), persistent=False)
            if cfg.whiten_features:  # fixed at construction, saved with the weights (a loaded run keeps its own)
                mean, matrix = whitening(features)
                self.register_buffer("feature_mean", mean)
                self.register_buffer("feature_whitening", matrix)
            # what the projector reads for the catalogue (features, whitened once): kept in step with loads
            self.register_buffer("projector_inputs", self.projector_input(self.features), persistent=False)
            self.register_load_state_dict_post_hook(FMRLRec._refresh_projector_inputs)
            self.projector = nn.Linear(cfg.feature_dim, d)
        if cfg.uses_ids:
            self.id_embedding = nn.Embedding(cfg.num_items + 1, cfg.id_width, padding_idx=0)
            nn.init.normal_(self.id_embedding.weight, std=0.02 if cfg.item_embedding == "hybrid" else 1.0 / d**0.5)
            with torch.no_grad():
                self.id_embedding.weight[0] = 0
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_blocks))
        self.dropout = nn.Dropout(cfg.dropout)

    # -- items ---------------------------------------------------------------------------------
    def content_vectors(self, features: torch.Tensor) -> torch.Tensor:
        """Project content features [M, F] to item vectors [M, d] (also for items added after training)."""
        return self.projector(self.projector_input(features))

    def projector_input(self, features: torch.Tensor) -> torch.Tensor:
        """Content features [M, F] as the projector reads them: whitened when the config says so."""
        if self.cfg.whiten_features:
            return (features - self.feature_mean) @ self.feature_whitening
        return features

    @staticmethod
    def _refresh_projector_inputs(module: "FMRLRec", incompatible_keys) -> None:
        with torch.no_grad():
            module.projector_inputs = module.projector_input(module.features)

    def item_table(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """E [N + 1, d]; row 0 is the padding item (input at empty-history positions).
        rows [R] (item indices): only those rows, E[rows] [R, d], without computing the others."""
        table = 0
        if self.cfg.uses_content:
            table = self.projector(self.projector_inputs if rows is None else self.projector_inputs[rows])
        if self.cfg.uses_ids:
            ids = self.id_embedding.weight if rows is None else self.id_embedding.weight[rows]
            table = table + (ids if ids.shape[1] == self.cfg.d else F.pad(ids, (0, self.cfg.d - ids.shape[1])))
        return table

    # -- sequences -----------------------------------------------------------------------------
    def forward(self, items: torch.Tensor, table: torch.Tensor | None = None,
                at: torch.Tensor | None = None) -> torch.Tensor:
        """Parallel mode: items [B, L] left-padded item indices -> hidden states [B, L, d].

        at [B, L] bool: only the hidden states there, [A, d] in row-major order (A = at.sum()). Position-wise
        work (norms, projections, feed-forward) then runs only where an item is or an output is wanted.
        """
        table = self.item_table() if table is None else table
        batch, length = items.shape
        padded = 1 << max(0, (length - 1).bit_length())
        items = F.pad(items, (padded - length, 0)).flatten()
        wanted = None if at is None else F.pad(at, (padded - length, 0)).flatten()
        needed = torch.ones_like(items, dtype=torch.bool) if wanted is None else wanted | (items > 0)
        flat = needed.nonzero()[:, 0]
        packed = Packed(flat, items[flat] > 0, batch, padded)
        x = self.dropout(table[items[flat]])
        for block in self.blocks:
            x = block(x, packed)
        if wanted is None:
            return x.view(batch, padded, -1)[:, padded - length:]
        return x[wanted[flat]]

    def initial_state(self, batch: int = 1) -> list[LRUState]:
        zeros = torch.zeros(batch, self.cfg.d)
        return [LRUState(zeros.clone(), zeros.clone()) for _ in self.blocks]

    def step(self, item_vector: torch.Tensor, state: list[LRUState]) -> tuple[torch.Tensor, list[LRUState]]:
        """Recurrent mode: item_vector [B, d] (a row of the item table) -> hidden [B, d], new state."""
        x, new_state = item_vector, []
        for block, block_state in zip(self.blocks, state):
            x, block_state = block.step(x, block_state)
            new_state.append(block_state)
        return x, new_state

    def empty_history_hidden(self, table: torch.Tensor) -> torch.Tensor:
        """Hidden state [d] before any interaction: the padding item through the blocks with h = 0.

        (In parallel mode padding positions feed nothing into the LRU state, so this equals the
        output at the last padding position, from which training predicts a user's first item.)
        """
        x = table[0:1]
        for block in self.blocks:
            h = x + block.lru.outputs(torch.zeros_like(x), torch.zeros_like(x))
            x = h + block.ffn(block.ffn_norm(h))
        return x[0]

    @staticmethod
    def scores(hidden: torch.Tensor, table: torch.Tensor, size: int) -> torch.Tensor:
        """Weight-tied scores at granularity `size`: hidden[..., :size] @ E[1:, :size]^T -> [..., N]."""
        return hidden[..., :size] @ table[1:, :size].T

    # -- granularities -------------------------------------------------------------------------
    def cut(self, size: int) -> "FMRLRec":
        """The standalone size-`size` model (sizes up to `size`), holding exactly the leading weights."""
        if size not in self.cfg.sizes:
            raise ValueError(f"size {size} was not trained; trained sizes: {list(self.cfg.sizes)}")
        id_dims = self.cfg.id_dims if self.cfg.id_dims < size else 0  # 0: the id vector fills the small model
        cfg = replace(self.cfg, sizes=tuple(s for s in self.cfg.sizes if s <= size), id_dims=id_dims)
        with torch.random.fork_rng(devices=[]):  # the throwaway initialisation leaves the global RNG as it was
            small = FMRLRec(cfg, getattr(self, "features", None))
        state = {}
        for name, module in self.named_modules():
            if hasattr(module, "cut_state"):
                state.update({f"{name}.{k}": v for k, v in module.cut_state(size).items()})
        if self.cfg.whiten_features:
            state["feature_mean"], state["feature_whitening"] = self.feature_mean, self.feature_whitening
        if hasattr(self, "projector"):
            state["projector.weight"], state["projector.bias"] = self.projector.weight[:size], self.projector.bias[:size]
        if hasattr(self, "id_embedding"):
            state["id_embedding.weight"] = self.id_embedding.weight[:, :small.cfg.id_width]
        small.load_state_dict({k: v.detach().clone() for k, v in state.items()})
        return small

    def num_params(self) -> dict[str, int]:
        """Effective (unmasked) trainable parameters, split into the item side and the sequence side."""
        item = sum(p.numel() for n, p in self.named_parameters() if n.startswith(("projector", "id_embedding")))
        seq = 0
        for module in self.blocks.modules():
            if isinstance(module, NestedLinear):
                seq += module.num_effective_params()
            elif isinstance(module, (NestedLayerNorm,)):
                seq += 2 * module.weight.numel()
            elif isinstance(module, LRU):
                seq += 3 * module.nu_log.numel()
        return {"item": item, "sequence": seq, "total": item + seq}
