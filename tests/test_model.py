"""The math is the contract: nested structure, scan == recurrence, cut == small model."""

import numpy as np
import pytest
import torch

from fmrl_sdk.data import load_dataset
from fmrl_sdk.data.dataset import left_pad
from fmrl_sdk.model import FMRLRec, ModelConfig, NestedLayerNorm, NestedLinear, parallel_scan
from fmrl_sdk.model.model import LRUState
from tests.helpers import MODEL_SIZES, make_model

SIZES = MODEL_SIZES


def test_nested_linear_is_block_lower_triangular():
    layer = NestedLinear(SIZES)
    w = layer.masked_weight()
    starts = (0,) + SIZES[:-1]
    for start, end in zip(starts, SIZES):
        assert torch.all(w[start:end, end:] == 0)          # outputs of chunk k never read inputs >= m_k
        assert torch.all(w[start:end, :end] != 0)          # ... and read every input below m_k
    # the first m_k outputs depend only on the first m_k inputs
    x = torch.randn(5, 32)
    for m in SIZES:
        y = torch.randn(5, 32)
        y[:, :m] = x[:, :m]
        assert torch.allclose(layer(x)[:, :m], layer(y)[:, :m])
    # 8..1024 holds 2/3 of a dense matrix's weights (the paper's 0.667x)
    big = NestedLinear((8, 16, 32, 64, 128, 256, 512, 1024))
    assert abs(big.mask.sum().item() / 1024**2 - 0.667) < 0.001


def test_nested_layer_norm_equals_per_chunk_layer_norm():
    norm = NestedLayerNorm(SIZES)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(3, 7, 32) * 3 + 1
    starts = (0,) + SIZES[:-1]
    expected = torch.cat([torch.nn.functional.layer_norm(x[..., a:b], (b - a,), norm.weight[a:b], norm.bias[a:b])
                          for a, b in zip(starts, SIZES)], -1)
    assert torch.allclose(norm(x), expected, atol=1e-5)


def test_parallel_scan_equals_sequential_recurrence():
    torch.manual_seed(1)
    u = torch.complex(torch.randn(3, 16, 5, dtype=torch.float64), torch.randn(3, 16, 5, dtype=torch.float64))
    log_mag, angle = -torch.rand(5, dtype=torch.float64), torch.rand(5, dtype=torch.float64) * 6
    lam = torch.exp(torch.complex(log_mag, angle))
    h, expected = torch.zeros(3, 5, dtype=torch.complex128), []
    for t in range(16):
        h = lam * h + u[:, t]
        expected.append(h)
    assert torch.allclose(parallel_scan(u, log_mag, angle), torch.stack(expected, 1), atol=1e-12)


def test_lru_ring_initialisation():
    cfg = ModelConfig(num_items=5, sizes=(8, 16), item_embedding="id", r_min=0.3, r_max=0.6)
    lru = FMRLRec(cfg).blocks[0].lru
    magnitude = torch.exp(lru.log_lambda()[0])
    assert magnitude.min() >= 0.3 - 1e-6 and magnitude.max() <= 0.6 + 1e-6
    gamma = torch.exp(lru.gamma_log)
    assert torch.allclose(gamma, torch.sqrt(1 - magnitude**2), atol=1e-6)


@pytest.mark.parametrize("item_embedding", ["content", "id", "hybrid"])
def test_parallel_model_equals_recurrent_steps_on_left_padded_batches(item_embedding):
    """x-transformers style: incremental decoding with a state == the full forward pass."""
    model = make_model(item_embedding)
    data = load_dataset("demo")
    seqs = [np.minimum(s, 60) for s in data.sequences[:6]]  # real sequences, ids folded into 60 items
    items = torch.from_numpy(left_pad(seqs, 20))
    with torch.no_grad():
        table = model.item_table()
        parallel = model(items, table)
        for row, seq in enumerate(seqs):
            state, start = model.initial_state(1), 20 - min(len(seq), 20)
            before = parallel[row, start - 1] if start else None
            if before is not None:  # padding positions output the empty-history vector
                assert torch.allclose(before, model.empty_history_hidden(table), atol=1e-5)
            for t in range(start, 20):
                hidden, state = model.step(table[items[row, t]][None], state)
                assert torch.allclose(hidden[0], parallel[row, t], atol=1e-5), (row, t)


def test_padding_length_does_not_change_outputs():
    model = make_model()
    items = torch.tensor([[0, 0, 3, 9, 4]])
    with torch.no_grad():
        short, long = model(items), model(torch.nn.functional.pad(items, (11, 0)))
    assert torch.allclose(short, long[:, -5:], atol=1e-6)


@pytest.mark.parametrize("blocks", [1, 2])
def test_outputs_at_chosen_positions_equal_the_full_forward(blocks):
    """forward(at=...) computes only where an item is or an output is wanted: the same states there
    (training asks where targets are, including the padding position before a first item)."""
    data = load_dataset("demo")
    model = make_model(blocks=blocks, num_items=data.num_items)
    inputs = left_pad([np.concatenate([[0], s[:-1]]) for s in data.train_sequences()[:24]], 13)
    targets = left_pad([s for s in data.train_sequences()[:24]], 13)
    inputs, targets = torch.from_numpy(inputs), torch.from_numpy(targets)
    with torch.no_grad():
        table = model.item_table()
        full = model(inputs, table)
        for at in (targets > 0, torch.zeros_like(inputs, dtype=torch.bool).index_fill_(1, torch.tensor([12]), True)):
            assert torch.allclose(model(inputs, table, at=at), full[at], atol=1e-6)


def test_whitened_features_have_identity_covariance_and_travel_with_the_weights():
    model = make_model("content", whiten=True)
    white = (model.features[1:] - model.feature_mean) @ model.feature_whitening   # [N, F]
    covariance = white.T @ white / (len(white) - 1) * white.shape[1]
    assert torch.allclose(white.mean(0), torch.zeros(12), atol=1e-5)
    assert torch.allclose(covariance, torch.eye(12), atol=1e-3)
    # the transform is part of the saved weights: a model built on other features and loaded gets it back
    other = FMRLRec(model.cfg, torch.randn(61, 12)).eval()
    other.load_state_dict(model.state_dict())
    new_items = torch.randn(5, 12)
    assert torch.equal(other.content_vectors(new_items), model.content_vectors(new_items))
    # the catalogue's whitened features (computed once, for speed) follow the loaded transform
    assert torch.allclose(other.item_table(), other.content_vectors(other.features), atol=1e-6)


@pytest.mark.parametrize("item_embedding,whiten,id_dims", [("content", False, 0), ("id", False, 0),
                                                           ("hybrid", False, 0), ("hybrid", True, 0),
                                                           ("hybrid", False, 8), ("hybrid", False, 12)])
def test_cut_equals_nested_head_at_every_size(item_embedding, whiten, id_dims):
    model = make_model(item_embedding, whiten=whiten, id_dims=id_dims)
    items = torch.randint(0, 61, (4, 9))
    with torch.no_grad():
        table = model.item_table()
        full = model(items, table)
        for size in SIZES:
            small = model.cut(size).eval()
            assert small.cfg.sizes == tuple(s for s in SIZES if s <= size)
            small_table = small.item_table()
            assert small_table.shape[1] == size
            assert small.cfg.id_width == min(size, model.cfg.id_width)
            diff = (model.scores(full, table, size) - small.scores(small(items, small_table), small_table, size))
            assert diff.abs().max() <= 1e-5


def test_cut_rejects_untrained_size():
    with pytest.raises(ValueError, match="not trained"):
        make_model().cut(12)


def test_step_state_is_constant_size():
    model = make_model(blocks=2)
    state = model.initial_state(1)
    table = model.item_table().detach()
    for i in range(1, 40):
        _, state = model.step(table[i % 60 + 1][None], state)
    assert all(isinstance(s, LRUState) and s.real.shape == (1, 32) and s.imag.shape == (1, 32) for s in state)
    assert len(state) == 2


def test_config_validation():
    with pytest.raises(ValueError):
        ModelConfig(num_items=3, sizes=(8, 8))
    with pytest.raises(ValueError):
        ModelConfig(num_items=3, sizes=(8,), item_embedding="content", feature_dim=0)
    for kind, id_dims in [("content", 4), ("id", 4), ("hybrid", 9)]:
        with pytest.raises(ValueError, match="id_dims"):
            ModelConfig(num_items=3, sizes=(4, 8), item_embedding=kind, feature_dim=2, id_dims=id_dims)


def test_id_vectors_fill_only_their_leading_dimensions():
    """hybrid with id_dims = 8 of 32: item vectors are content + id in dims 0..7 and content alone after."""
    model = make_model("hybrid", id_dims=8)
    assert model.id_embedding.weight.shape == (61, 8)
    with torch.no_grad():
        model.id_embedding.weight.normal_()
        content = model.content_vectors(model.features)
        table = model.item_table()
        assert torch.equal(table[:, 8:], content[:, 8:])
        assert torch.allclose(table[:, :8], content[:, :8] + model.id_embedding.weight)


def test_config_of_an_older_sdk_with_extra_still_loads():
    """config.json files written before ModelConfig.extra was removed carry "extra": {}."""
    old = {**ModelConfig(num_items=5, sizes=(8, 16), item_embedding="id").to_dict(), "extra": {}}
    cfg = ModelConfig.from_dict(old)
    assert cfg == ModelConfig(num_items=5, sizes=(8, 16), item_embedding="id") and "extra" not in cfg.to_dict()
    with pytest.raises(TypeError):
        ModelConfig.from_dict({**old, "sizez": [8]})


@pytest.mark.parametrize("item_embedding,id_dims", [("content", 0), ("id", 0), ("hybrid", 0), ("hybrid", 16)])
def test_item_table_rows_equal_the_full_table(item_embedding, id_dims):
    model = make_model(item_embedding, id_dims=id_dims)
    rows = torch.tensor([0, 3, 17, model.cfg.num_items])
    with torch.no_grad():
        assert torch.allclose(model.item_table(rows), model.item_table()[rows], rtol=1e-6, atol=1e-7)

