"""Fast loss == straightforward loss, values and gradients (relative difference <= 1e-5)."""

import numpy as np
import pytest
import torch

from fmrl_sdk.data import load_dataset
from fmrl_sdk.data.dataset import training_arrays
from fmrl_sdk.train import loss as loss_module
from benchmarks.reference_loss import reference_cross_entropy
from fmrl_sdk.train.loss import nested_cross_entropy
from tests.helpers import make_model


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(scope="module")
def real_batch():
    data = load_dataset("demo")
    inputs, targets = training_arrays(data, 50)
    rows = np.arange(0, 24)
    model = make_model("id", num_items=data.num_items)
    return model, torch.from_numpy(inputs[rows]), torch.from_numpy(targets[rows])


def loss_and_grads(model, x, y, loss_fn):
    model.zero_grad()
    table = model.item_table()
    loss = loss_fn(model(x, table), y, table)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("weights", [None, [1.0, 2.0, 0.5, 4.0]])
@pytest.mark.parametrize("keep_scores", [True, False], ids=["kept-exponentials", "recomputed-scores"])
def test_fast_loss_equals_reference_on_real_batch(real_batch, weights, keep_scores, monkeypatch):
    if not keep_scores:  # the fused backward's path for score buffers over KEEP_SCORES_BYTES
        monkeypatch.setattr(loss_module, "KEEP_SCORES_BYTES", 0)
    model, x, y = real_batch
    sizes = model.cfg.sizes
    ref_loss, ref_grads = loss_and_grads(model, x, y, lambda h, t, e: reference_cross_entropy(h, t, e, sizes, weights))
    for method in ("fused", "masked", "running_sum"):
        fast_loss, fast_grads = loss_and_grads(
            model, x, y, lambda h, t, e: nested_cross_entropy(h, t, e, sizes, weights, method))
        assert rel(fast_loss, ref_loss) <= 1e-5, method
        for name, grad in ref_grads.items():
            assert rel(fast_grads[name], grad) <= 1e-5, (method, name)


def test_loss_ignores_padding_targets_and_keeps_first_item_target():
    data = load_dataset("demo")
    inputs, targets = training_arrays(data, 50)
    seq = data.train_sequences()[0]
    n = len(seq)
    assert list(targets[0, -n:]) == list(seq) and targets[0, :-n].sum() == 0
    assert inputs[0, -n] == 0 and list(inputs[0, -n + 1:]) == list(seq[:-1])  # first target from empty history


def test_loss_at_uniform_scores_is_log_n():
    hidden = torch.zeros(2, 3, 8)
    table = torch.randn(11, 8)
    targets = torch.tensor([[0, 1, 2], [3, 0, 4]])
    loss = nested_cross_entropy(hidden, targets, table, (4, 8))
    assert abs(loss.item() - np.log(10)) < 1e-6


def test_trimming_left_padding_keeps_every_target():
    from fmrl_sdk.train.evaluate import trim_left_padding

    data = load_dataset("demo")
    inputs, targets = training_arrays(data, 50)
    rows = np.argsort([len(s) for s in data.sequences])[:16]  # short users: lots of padding
    x, y = trim_left_padding(inputs[rows], targets[rows])
    assert x.shape[1] < 50
    assert (y > 0).sum() == (targets[rows] > 0).sum()
    model = make_model("id", num_items=data.num_items)
    with torch.no_grad():
        full_table = model.item_table()
        full = nested_cross_entropy(model(torch.from_numpy(inputs[rows]), full_table),
                                    torch.from_numpy(targets[rows]), full_table, model.cfg.sizes)
        cut = nested_cross_entropy(model(torch.from_numpy(x), full_table), torch.from_numpy(y), full_table,
                                   model.cfg.sizes)
    assert abs(full.item() - cut.item()) <= 1e-5 * abs(full.item())


def test_reused_score_workspace_gives_the_same_loss_and_gradients():
    """The workspace is reused step after step; two losses alive at once must not share it."""
    torch.manual_seed(0)
    sizes, table = (4, 8, 16), torch.randn(60, 16, requires_grad=True)
    hidden = torch.randn(2, 9, 16, requires_grad=True)
    targets = torch.randint(0, 60, (2, 9))
    workspace = loss_module.ScoreWorkspace()

    def loss_and_grads(loss):
        return [loss.detach(), *torch.autograd.grad(loss, (hidden, table))]

    fresh = loss_and_grads(nested_cross_entropy(hidden, targets, table, sizes))
    first = nested_cross_entropy(hidden, targets, table, sizes, workspace=workspace)
    second = nested_cross_entropy(hidden * 1.5, targets, table, sizes, workspace=workspace)  # workspace taken
    assert workspace.taken
    scaled = loss_and_grads(nested_cross_entropy(hidden * 1.5, targets, table, sizes))
    for a, b in zip(loss_and_grads(second), scaled):
        assert torch.equal(a, b)
    for a, b in zip(loss_and_grads(first), fresh):
        assert torch.equal(a, b)
    assert not workspace.taken  # given back by the backward of the loss that took it
    for a, b in zip(loss_and_grads(nested_cross_entropy(hidden, targets, table, sizes, workspace=workspace)), fresh):
        assert torch.equal(a, b)
    with torch.no_grad():  # no backward will come to give it back: not taken
        nested_cross_entropy(hidden, targets, table, sizes, workspace=workspace)
    assert not workspace.taken
