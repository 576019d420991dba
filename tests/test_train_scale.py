"""Scaling the trainer: large-catalogue losses, data-parallel training (2 gloo processes) and resume."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fmrl_sdk.data import load_dataset
from fmrl_sdk.data.dataset import training_arrays
from fmrl_sdk.errors import FmrlError
from fmrl_sdk.train import checkpoint
from fmrl_sdk.train import loss as loss_module
from fmrl_sdk.train.loss import (ChunkedNestedCrossEntropy, FusedNestedCrossEntropy, NegativeSampler, Objective,
                                 sampled_nested_cross_entropy, size_weights)
from fmrl_sdk.train.recipe import Recipe
from fmrl_sdk.train.trainer import prepare, train
from tests.conftest import write_small_interactions
from tests.helpers import make_model

ROOT = Path(__file__).resolve().parent.parent
TINY = {"data": {"path": "demo", "max_len": 20},
        "model": {"sizes": [4, 8, 16], "item_embedding": "id", "dropout": 0.1, "lru_dropout": 0.1},
        "train": {"epochs": 2, "batch_size": 256, "lr": 3e-3, "warmup_steps": 2, "patience": 5,
                  "eval_batch_size": 1000, "threads": 1}}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Many small products: on 2 cores shared with other jobs, OpenMP threads waiting for each other
    cost far more than they save (measured 0.02 s vs 4 s for the same loss)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> str:
    """300 users, 120 items, learnable: each next item is 1-3 items after the previous one."""
    return str(write_small_interactions(tmp_path_factory.mktemp("data") / "small.csv"))


def small(data: str, **train) -> dict:
    raw = recipe(**{"batch_size": 64, "lr": 1e-2, **train})
    raw["data"].update(path=data, min_count=1)
    return raw


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def recipe(**train):
    raw = json.loads(json.dumps(TINY))
    raw["train"].update(train)
    return raw


def fmrl(*args, cwd=None, **kw):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "fmrl_sdk.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, **kw)


def write_recipe(path: Path, raw: dict) -> Path:
    lines = []
    for table, values in raw.items():
        lines.append(f"[{table}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------------------------------------
# Large-catalogue losses


@pytest.fixture(scope="module")
def demo_batch():
    data = load_dataset("demo")
    inputs, targets = training_arrays(data, 30)
    rows = np.arange(0, 24)
    return data, torch.from_numpy(inputs[rows]), torch.from_numpy(targets[rows])


def objective_loss_and_grads(objective, x, y, **kw):
    objective.zero_grad()
    loss = objective(x, y, **kw)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in objective.model.named_parameters()}


@pytest.mark.parametrize("chunk", [97, 1000, 100_000])
@pytest.mark.parametrize("weights", [None, [1.0, 2.0, 0.5, 4.0]])
def test_chunked_loss_equals_full_loss_and_gradients(demo_batch, chunk, weights):
    data, x, y = demo_batch
    model = make_model("hybrid", num_items=data.num_items)
    full = objective_loss_and_grads(Objective(model, model.cfg.sizes, weights, "full"), x, y)
    chunked = objective_loss_and_grads(Objective(model, model.cfg.sizes, weights, "chunked", item_chunk=chunk), x, y)
    assert rel(chunked[0], full[0]) <= 1e-5
    for name, grad in full[1].items():
        assert rel(chunked[1][name], grad) <= 1e-5, name


def test_chunked_loss_in_float64_is_exact_to_rounding():
    torch.manual_seed(1)
    sizes, w = (3, 8, 20), torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    hidden = torch.randn(50, 20, dtype=torch.float64, requires_grad=True)
    items = torch.randn(333, 20, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 333, (50,))
    full = FusedNestedCrossEntropy.apply(hidden, items, labels, sizes, w)
    g_full = torch.autograd.grad(full, (hidden, items))
    chunked = ChunkedNestedCrossEntropy.apply(hidden, items, labels, sizes, w, 40)
    g_chunked = torch.autograd.grad(chunked, (hidden, items))
    assert abs(chunked.item() - full.item()) <= 1e-12 * full.item()
    assert all(rel(a, b) <= 1e-12 for a, b in zip(g_chunked, g_full))


def test_chunked_loss_keeps_nothing_of_size_targets_x_items():
    hidden = torch.randn(64, 16, requires_grad=True)
    items = torch.randn(5000, 16, requires_grad=True)
    labels = torch.randint(0, 5000, (64,))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        loss = ChunkedNestedCrossEntropy.apply(hidden, items, labels, (4, 8, 16), size_weights((4, 8, 16)), 256)
    loss.backward()
    assert saved and max(saved) <= 5000 * 16  # the items themselves; never 64 x 5000 scores
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        (hidden @ items.T).logsumexp(1).sum()  # the hook does see a [T, N] tensor when one is kept
    assert max(saved) == 64 * 5000


@pytest.mark.parametrize("embedding", ["hybrid", "content", "id"])
def test_sampled_loss_with_every_item_drawn_once_uniformly_is_the_full_loss(demo_batch, embedding):
    """log(M Q) = log(N * 1/N) = 0 and the target's accidental hit removed: exactly the full softmax.

    Also checks the partial item table (only the batch's and the negatives' rows are projected)."""
    data, x, y = demo_batch
    model = make_model(embedding, num_items=data.num_items)
    n = data.num_items
    negatives = (torch.arange(1, n + 1), torch.zeros(n))
    weights = [1.0, 2.0, 0.5, 4.0]
    full = objective_loss_and_grads(Objective(model, model.cfg.sizes, weights, "full"), x, y)
    sampled = objective_loss_and_grads(Objective(model, model.cfg.sizes, weights, "sampled"), x, y,
                                       negatives=negatives)
    assert rel(sampled[0], full[0]) <= 1e-5
    for name, grad in full[1].items():
        assert rel(sampled[1][name], grad) <= 1e-5, name
    rows = torch.tensor([0, 5, 17, n])
    assert torch.allclose(model.item_table(rows), model.item_table()[rows])


def straightforward_smoothed_loss(model, x, y, sizes, weights, epsilon):
    """F.cross_entropy(label_smoothing=epsilon) at every size over every position (autograd)."""
    table = model.item_table()
    hidden = model(x, table)
    w = size_weights(sizes, weights)
    return sum(w[k] * torch.nn.functional.cross_entropy((hidden[..., :m] @ table[1:, :m].T).flatten(0, 1),
                                                        y.flatten() - 1, ignore_index=-1, label_smoothing=epsilon)
               for k, m in enumerate(sizes))


@pytest.mark.parametrize("loss", ["full", "chunked", "sampled"])
def test_label_smoothing_equals_cross_entropys_label_smoothing(demo_batch, loss):
    """Every loss with label_smoothing == F.cross_entropy(label_smoothing=e) per size, values and gradients
    (sampled: every item drawn once under a uniform Q, where its mean-item estimate is exact)."""
    data, x, y = demo_batch
    model = make_model("hybrid", num_items=data.num_items).double()  # float64: equal to rounding
    weights, n = [1.0, 2.0, 0.5, 4.0], data.num_items
    model.zero_grad()
    want = straightforward_smoothed_loss(model, x, y, model.cfg.sizes, weights, 0.3)
    want.backward()
    want_grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    kw = {"negatives": (torch.arange(1, n + 1), torch.zeros(n))} if loss == "sampled" else {}
    got = objective_loss_and_grads(Objective(model, model.cfg.sizes, weights, loss, item_chunk=97,
                                             label_smoothing=0.3), x, y, **kw)
    assert rel(got[0], want.detach()) <= 1e-10
    for name, grad in want_grads.items():
        assert rel(got[1][name], grad) <= 1e-10, name
    plain = objective_loss_and_grads(Objective(model, model.cfg.sizes, weights, loss, item_chunk=97), x, y, **kw)
    assert rel(plain[0], got[0]) > 1e-4  # the term is not zero (the check above holds to 1e-10)


def test_sampled_label_smoothing_estimates_the_catalogue_mean_without_bias(demo_batch):
    """Popularity-drawn negatives: the importance-weighted smoothing term averages to the exact one
    (within 4 standard errors over 400 draws; without the 1 / (M Q) weights it is far off)."""
    data, x, y = demo_batch
    model = make_model("hybrid", num_items=data.num_items).double()
    counts = (torch.arange(data.num_items) % 7) ** 2
    sampler = NegativeSampler(data.num_items, "popularity", counts)
    torch.manual_seed(0)
    smoothed, plain = (Objective(model, model.cfg.sizes, loss="sampled", sampler=sampler, num_negatives=200,
                                 label_smoothing=e) for e in (1.0, 0.0))
    with torch.no_grad():
        exact = float(Objective(model, model.cfg.sizes, loss="full", label_smoothing=1.0)(x, y)
                      - Objective(model, model.cfg.sizes, loss="full")(x, y))
        draws = [sampler(200) for _ in range(400)]
        terms = torch.tensor([float(smoothed(x, y, negatives=d) - plain(x, y, negatives=d)) for d in draws])
        unweighted = torch.tensor([float(smoothed(x, y, negatives=(ids, torch.zeros_like(log_q)))
                                         - plain(x, y, negatives=(ids, torch.zeros_like(log_q))))
                                   for ids, log_q in draws[:50]])
    standard_error = float(terms.std() / len(terms) ** 0.5)
    assert abs(float(terms.mean()) - exact) <= 4 * standard_error
    assert abs(float(unweighted.mean()) - exact) > 4 * standard_error


def straightforward_sampled_loss(hidden, labels, positives, negative_ids, negatives, log_q, sizes, weights):
    """Autograd over explicit [K, T, 1 + M] logits: target column, then corrected, hit-masked negatives."""
    per_size = []
    for size in sizes:
        target = (hidden[:, :size] * positives[:, :size]).sum(1, keepdim=True)
        sampled = (hidden[:, :size] @ negatives[:, :size].T - log_q).masked_fill(
            labels[:, None] == negative_ids[None, :], float("-inf"))
        per_size.append((torch.logsumexp(torch.cat([target, sampled], 1), 1) - target[:, 0]).mean())
    return (torch.stack(per_size) * size_weights(sizes, weights)).sum()


@pytest.mark.parametrize("keep_scores", [True, False], ids=["kept-exponentials", "recomputed-scores"])
def test_fused_sampled_loss_equals_straightforward_one(keep_scores, monkeypatch):
    if not keep_scores:
        monkeypatch.setattr(loss_module, "KEEP_SCORES_BYTES", 0)
    torch.manual_seed(0)
    sizes, weights = (4, 8, 16), [1.0, 2.0, 0.5]
    hidden, positives = torch.randn(40, 16, requires_grad=True), torch.randn(40, 16, requires_grad=True)
    negatives = torch.randn(300, 16, requires_grad=True)
    ids, log_q, labels = torch.randint(1, 51, (300,)), torch.randn(300), torch.randint(1, 51, (40,))
    ids[:3] = labels[0]  # duplicates of a target among the negatives
    args = (hidden, labels, positives, ids, negatives, log_q, sizes, weights)
    fused, reference = sampled_nested_cross_entropy(*args), straightforward_sampled_loss(*args)
    assert rel(fused.detach(), reference.detach()) <= 1e-5
    for a, b in zip(torch.autograd.grad(fused, (hidden, positives, negatives)),
                    torch.autograd.grad(reference, (hidden, positives, negatives))):
        assert rel(a, b) <= 1e-5
    # every negative an accidental hit: that target's loss is 0 (only itself left), not nan
    only_hits = sampled_nested_cross_entropy(hidden[:1], labels[:1], positives[:1], labels[:1].repeat(5),
                                             negatives[:5], log_q[:5], sizes)
    only_hits.backward()
    assert only_hits.item() == 0 and torch.isfinite(hidden.grad).all()


def test_sampled_loss_log_q_correction_makes_it_consistent():
    """Popularity-drawn negatives: with the log-Q correction the loss tends to the full loss; without
    it (treating the draws as uniform) it stays far off."""
    torch.manual_seed(0)
    n, sizes = 400, (4, 8, 16)
    counts = (1000 / torch.arange(1, n + 1) ** 1.2).floor()  # Zipf-like popularity
    sampler = NegativeSampler(n, "popularity", counts)
    hidden, items = torch.randn(64, 16) * 0.5, torch.randn(n, 16) * 0.5
    hidden[:, 0], items[:, 0] = 1.0, 0.8 * (counts + 1).log()  # scores follow popularity, as in real data
    labels = torch.randint(1, n + 1, (64,))
    full = FusedNestedCrossEntropy.apply(hidden, items, labels - 1, sizes, size_weights(sizes)).item()
    ids, log_q = sampler(50_000)
    corrected = sampled_nested_cross_entropy(hidden, labels, items[labels - 1], ids, items[ids - 1], log_q, sizes)
    naive = sampled_nested_cross_entropy(hidden, labels, items[labels - 1], ids, items[ids - 1],
                                         torch.full_like(log_q, math.log(50_000 / n)), sizes)
    assert abs(corrected.item() - full) < 0.01 * full
    assert abs(naive.item() - full) > 0.2 * full


def test_negative_sampler_draws_from_its_proposal():
    torch.manual_seed(0)
    counts = torch.tensor([0.0, 9, 0, 39, 1])  # Q = (1, 10, 1, 40, 2) / 54
    ids, log_q = NegativeSampler(5, "popularity", counts)(200_000)
    q = torch.tensor([1.0, 10, 1, 40, 2]) / 54
    assert ids.min() >= 1 and ids.max() <= 5
    freq = torch.bincount(ids - 1, minlength=5).double() / len(ids)
    assert torch.allclose(freq.float(), q, atol=0.005)
    assert torch.allclose(log_q, (q[ids - 1] * 200_000).log(), rtol=1e-5)
    ids, log_q = NegativeSampler(5)(1000)
    assert ids.min() >= 1 and ids.max() <= 5 and torch.allclose(log_q, torch.full((1000,), math.log(200.0)))


@pytest.mark.parametrize("raw,match", [
    ({"train": {"loss": "approx"}}, "loss must be 'full', 'chunked' or 'sampled'"),
    ({"train": {"item_chunk": 0}}, r"item_chunk = 0 should be an integer from 1 to "),
    ({"train": {"num_negatives": -5}}, r"num_negatives = -5 should be an integer from 1 to "),
    ({"train": {"negative_sampler": "zipf"}}, "negative_sampler must be"),
    ({"train": {"label_smoothing": 1.0}}, r"label_smoothing = 1.0 should be a finite number in \[0, 1\)"),
    ({"train": {"label_smoothing": -0.1}}, r"label_smoothing = -0.1 should be a finite number in \[0, 1\)"),
])
def test_recipe_validates_loss_keys(raw, match):
    with pytest.raises(FmrlError, match=match):
        Recipe.from_dict(raw, source="r.toml")


def test_training_with_chunked_loss_follows_full_loss_and_sampled_loss_learns(tmp_path, small_data):
    runs = {loss: train(prepare(Recipe.from_dict(small(small_data, loss=loss, epochs=3, item_chunk=50,
                                                       num_negatives=40))), tmp_path / loss)
            for loss in ("full", "chunked", "sampled")}
    history = {loss: [json.loads(line) for line in (tmp_path / loss / "history.jsonl").read_text().splitlines()]
               for loss in runs}
    for full, chunked in zip(history["full"], history["chunked"]):  # same training, other arithmetic
        assert abs(full["loss"] - chunked["loss"]) < 1e-4 * full["loss"]
    for loss, h in history.items():  # (the sampled loss is its own estimate, so only compared to itself)
        assert h[-1]["loss"] < h[0]["loss"], loss
    chance = sum(1 / math.log2(r + 2) for r in range(10)) / 120  # NDCG@10 of a random ranking of 120 items
    assert runs["full"]["test"][16]["NDCG@10"] > 3 * chance and runs["sampled"]["test"][16]["NDCG@10"] > 2 * chance


# ---------------------------------------------------------------------------------------------
# Data-parallel training

WORKER = '''
import json, sys
import numpy as np, torch
from fmrl_sdk.data.dataset import training_arrays
from fmrl_sdk.model.model import FMRLRec
from fmrl_sdk.train import distributed
from fmrl_sdk.train.recipe import Recipe
from fmrl_sdk.train.trainer import make_objective, make_optimizer, prepare, train_step

recipe = Recipe.from_dict(json.loads(sys.argv[1]))
t = recipe.train
rel = lambda a, b: ((a - b).abs().max() / b.abs().max()).item()
d = distributed.setup("cpu")
torch.set_num_threads(1)
prep = prepare(recipe)
inputs, targets = training_arrays(prep.dataset, recipe.data.max_len)
rows = np.random.default_rng(0).permutation(len(inputs))[:t.batch_size]

def one_step(where):
    torch.manual_seed(t.seed + where.rank)  # different initial weights per rank: DDP must broadcast rank 0's
    model = FMRLRec(prep.model_config, prep.features)
    objective = make_objective(model, t, targets)
    optimizer, scheduler = make_optimizer(model, t, 10)
    x, y, scale = distributed.local_batch(inputs, targets, rows, where)
    loss = train_step(distributed.wrap(objective, where), optimizer, scheduler, x, y, scale, t.grad_clip)
    return model, loss, len(x)

model, loss, local_rows = one_step(d)
in_sync = distributed.replicas_in_sync(model, d)
losses = [x.item() for x in distributed.gather(torch.tensor([loss], dtype=torch.float64), d)]
rows_per_rank = [int(x) for x in distributed.gather(torch.tensor([local_rows]), d)]
if d.main:
    torch.manual_seed(t.seed)
    initial = FMRLRec(prep.model_config, prep.features)
    ref, ref_loss, _ = one_step(distributed.Dist())
    pairs = list(zip(model.parameters(), ref.parameters(), initial.parameters()))
    json.dump({"in_sync": in_sync, "world": d.world, "rows_per_rank": rows_per_rank,
               "mean_loss": sum(losses) / d.world, "ref_loss": ref_loss,
               "max_rel_grad_diff": max(rel(a.grad, b.grad) for a, b, c in pairs),
               "moved": min((b - c).abs().max().item() for a, b, c in pairs)}, open(sys.argv[2], "w"))
distributed.teardown(d)
'''


def torchrun(*args, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)


def test_ddp_step_equals_one_process_step_and_ranks_hold_identical_weights(tmp_path):
    """2 gloo processes, each about half of a 257-row batch: after one step both ranks hold the same
    bytes, and their averaged gradients are those of one process on the whole batch (rel <= 1e-5: the
    all-reduce sums in another order, so not bitwise; weights are not compared because Adam's first
    step, g / (|g| + eps), turns rounding in near-zero gradients into full-size differences)."""
    script, out = tmp_path / "worker.py", tmp_path / "out.json"
    script.write_text(WORKER)
    raw = recipe(batch_size=257)
    raw["model"].update(dropout=0.0, lru_dropout=0.0)
    r = torchrun(str(script), json.dumps(raw), str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["in_sync"] and result["world"] == 2 and result["rows_per_rank"] == [129, 128]
    assert abs(result["mean_loss"] - result["ref_loss"]) <= 1e-5 * result["ref_loss"]  # global per-target mean
    assert result["moved"] > 0 and result["max_rel_grad_diff"] <= 1e-5


SHARD_WORKER = '''
import json, sys
import numpy as np, torch
from fmrl_sdk.data.dataset import training_arrays
from fmrl_sdk.model.model import FMRLRec
from fmrl_sdk.train import distributed
from fmrl_sdk.train.evaluate import evaluate
from fmrl_sdk.train.recipe import Recipe
from fmrl_sdk.train.trainer import epoch_batches, make_objective, prepare, train_step, validation_sample

recipe = Recipe.from_dict(json.loads(sys.argv[1]))
t, max_len, stride = recipe.train, recipe.data.max_len, recipe.data.stride
rel = lambda a, b: ((a - b).abs().max() / b.abs().max()).item()
d = distributed.setup("cpu")
torch.set_num_threads(1)
prep = prepare(recipe)
every_user = prep.dataset.num_users
sample = validation_sample(prep.dataset, 150, t.seed)
dataset, windows = distributed.shard(prep.dataset, max_len, stride, d)  # what train() keeps
prep.dataset = dataset
everything = np.arange(windows.rows)
kept = {"users": dataset.num_users, "rows": int(windows.owned(everything).sum()), "all_rows": windows.rows,
        "sequence_bytes": sum(s.nbytes for s in dataset.sequences), "windows_bytes": windows.nbytes,
        "item_bytes": windows.items.nbytes}
counts = distributed.sum_counts(windows.target_counts(prep.model_config.num_items), d)
# two batches of the run's first epoch, and one of rank 0's rows only (rank 1 has none in it)
batches = epoch_batches(np.random.default_rng(t.seed), windows.lengths, t.batch_size, 3, t.length_buckets)[:2]
theirs = ~windows.owned(everything) if d.rank else windows.owned(everything)
batches.append(np.flatnonzero(theirs)[:40])

def run(where, batch):
    torch.manual_seed(t.seed)
    model = FMRLRec(prep.model_config, prep.features)
    objective = make_objective(model, t, counts)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)  # the weights follow the gradients linearly
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    wrapped, losses, grads, sizes = distributed.wrap(objective, where), [], [], []
    for rows in batches:
        x, y, scale = batch(rows)
        losses.append(train_step(wrapped, optimizer, scheduler, x, y, scale, t.grad_clip))
        grads.append([p.grad.clone() for p in model.parameters()])
        sizes.append(len(x) if scale else 0)
    return model, losses, grads, sizes

model, losses, grads, sizes = run(d, lambda rows: distributed.shard_batch(windows, rows, d))
in_sync = distributed.replicas_in_sync(model, d)
test = distributed.evaluate_on(model, dataset, "test", max_len, t.eval_batch_size, d, sharded=True)
val = distributed.evaluate_on(model, dataset, "val", max_len, t.eval_batch_size, d, users=sample, sharded=True)
gathered = lambda values, dtype: [x.tolist() for x in distributed.gather(torch.tensor(values, dtype=dtype), d)]
losses = gathered(losses, torch.float64)
rows_per_rank = gathered(sizes, torch.int64)
kept_per_rank = gathered([kept[k] for k in sorted(kept)], torch.int64)
if d.main:
    full = prepare(recipe).dataset  # one process, every user: the reference
    inputs, targets = training_arrays(full, max_len, stride)
    ref, ref_losses, ref_grads, _ = run(distributed.Dist(),
                                        lambda rows: distributed.local_batch(inputs, targets, rows, distributed.Dist()))
    own_test = evaluate(model, full, "test", max_len, t.eval_batch_size)  # this model, one process
    own_val = evaluate(model, full.subset(sample), "val", max_len, t.eval_batch_size)
    json.dump({"in_sync": in_sync, "world": d.world, "every_user": every_user,
               "full_sequence_bytes": sum(s.nbytes for s in full.sequences),
               "kept": [dict(zip(sorted(kept), k)) for k in kept_per_rank], "rows_per_rank": rows_per_rank,
               "losses": [sum(step) for step in zip(*losses)], "ref_losses": ref_losses,
               "max_rel_grad_diff": max(rel(a, b) for g, r in zip(grads, ref_grads) for a, b in zip(g, r)),
               "max_rel_weight_diff": max(rel(a.detach(), b.detach())
                                          for a, b in zip(model.parameters(), ref.parameters())),
               "test": test, "own_test": own_test, "val": val, "own_val": own_val},
              open(sys.argv[2], "w"))
distributed.teardown(d)
'''


def test_ddp_ranks_keep_only_their_users_and_train_as_one_process(tmp_path):
    """2 gloo processes on their shards (user u on rank u % 2), stride windows, three SGD steps (two
    batches of the epoch permutation and one whose rows are all rank 0's: rank 1 takes a zero-weighted
    forward): each rank holds half the users' sequences and rows, the gradients of every step and the
    weights after them are the one-process ones, and evaluation over the shards is exact."""
    script, out = tmp_path / "worker.py", tmp_path / "out.json"
    script.write_text(SHARD_WORKER)
    raw = recipe(batch_size=257)
    raw["data"].update(stride=5)
    raw["model"].update(dropout=0.0, lru_dropout=0.0)
    r = torchrun(str(script), json.dumps(raw), str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["in_sync"] and result["world"] == 2
    kept, users = result["kept"], result["every_user"]
    assert [k["users"] for k in kept] == [(users + 1) // 2, users // 2]
    assert sum(k["rows"] for k in kept) == kept[0]["all_rows"] == kept[1]["all_rows"]
    assert sum(k["sequence_bytes"] for k in kept) == result["full_sequence_bytes"]
    for k in kept:  # about half of the data each (demo users' lengths vary little)
        assert 0.4 < k["sequence_bytes"] / result["full_sequence_bytes"] < 0.6
        assert 0.4 < k["rows"] / k["all_rows"] < 0.6
    steps = list(zip(*result["rows_per_rank"]))
    assert [sum(s) for s in steps[:2]] == [257, 257] and min(min(s) for s in steps[:2]) > 0
    assert steps[2][0] == 40 and steps[2][1] == 0   # rank 1: nothing of its own in the last batch
    for loss, ref in zip(result["losses"], result["ref_losses"]):
        assert abs(loss / 2 - ref) <= 1e-5 * ref  # the mean of the ranks' scaled losses: the global mean
    assert result["max_rel_grad_diff"] <= 1e-5 and result["max_rel_weight_diff"] <= 1e-5
    for split, ref in (("test", "own_test"), ("val", "own_val")):
        for size, metrics in result[ref].items():
            for name, value in metrics.items():
                # (float32 sums per evaluation batch, and the batches hold other users: rounding only)
                assert result[split][size][name] == pytest.approx(value, rel=1e-6, abs=1e-12), (split, size, name)


def test_cli_trains_with_two_processes(tmp_path):
    path = write_recipe(tmp_path / "tiny.toml", recipe(threads=0))
    r = fmrl("train", "--recipe", str(path), "--nproc", "2", "--out", str(tmp_path / "ddp"), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    run_dir = tmp_path / "ddp"
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]  # one writer: no duplicated lines
    assert history[1]["loss"] < history[0]["loss"] and all(h["replicas_in_sync"] for h in history)
    assert json.loads((run_dir / "config.json").read_text())["launch"] == {"processes": 2, "device": "cpu"}
    assert set(json.loads((run_dir / "metrics.json").read_text())) == {"val", "test"}
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".")) == []  # no temporary files


# ---------------------------------------------------------------------------------------------
# Resume


def interrupt_after_next_epoch(args, history: Path, sig) -> subprocess.CompletedProcess:
    """Run `fmrl-sdk train ARGS`, send `sig` as soon as history.jsonl gains a line."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    lines = history.read_text().count("\n") if history.exists() else 0
    # a shell's background job (`.ci/run &`) ignores SIGINT, and Python keeps an inherited SIG_IGN: restore
    # the default so Ctrl-C reaches the child however the test suite was launched
    restore_ctrl_c = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    proc = subprocess.Popen([sys.executable, "-m", "fmrl_sdk.cli", "train", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env, preexec_fn=restore_ctrl_c)
    deadline = time.monotonic() + 300
    while not (history.exists() and history.read_text().count("\n") > lines):
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate()
    return subprocess.CompletedProcess(args, proc.returncode, "", err)


def test_resume_after_sigkill_and_ctrl_c_ends_with_the_weights_of_an_uninterrupted_run(tmp_path, small_data):
    """SIGKILL after epoch 1, resume, Ctrl-C (SIGINT) a few epochs later, resume again: bitwise the same
    final and best weights, history and metrics as a run never interrupted (one thread, so the same CPU
    kernels in the same order; every RNG, optimizer moment, schedule step and counter restored)."""
    raw = small(small_data, epochs=12, patience=12)
    path = write_recipe(tmp_path / "tiny.toml", raw)
    run_dir = tmp_path / "killed"
    history = run_dir / "history.jsonl"
    r = interrupt_after_next_epoch(["--recipe", str(path), "--out", str(run_dir)], history, signal.SIGKILL)
    assert r.returncode == -signal.SIGKILL
    assert history.read_text().count("\n") < 12 and '"test"' not in (run_dir / "metrics.json").read_text()

    held = checkpoint.lock(run_dir)  # a run still going (here: this test holds its lock) is not resumed
    r = fmrl("train", "--resume", str(run_dir))
    assert r.returncode == 2 and f"{run_dir}: in use by another train (pid {os.getpid()})" in r.stderr
    checkpoint.unlock(run_dir, held)
    r = interrupt_after_next_epoch(["--resume", str(run_dir)], history, signal.SIGINT)
    assert r.returncode == 130 and f"fmrl-sdk train --resume {run_dir}" in r.stderr
    assert history.read_text().count("\n") < 12
    r = fmrl("train", "--resume", str(run_dir), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming" in r.stdout and not (run_dir / checkpoint.LOCK).exists()

    reference = tmp_path / "reference"
    train(prepare(Recipe.from_dict(raw)), reference)
    for name in ("model.safetensors", checkpoint.TENSORS):
        resumed, uninterrupted = load_file(str(run_dir / name)), load_file(str(reference / name))
        assert resumed.keys() == uninterrupted.keys()
        for key in resumed:
            assert torch.equal(resumed[key], uninterrupted[key]), (name, key)
    strip = lambda p: [{k: v for k, v in json.loads(line).items() if not k.endswith("seconds")}
                       for line in (p / "history.jsonl").read_text().splitlines()]
    assert strip(run_dir) == strip(reference)
    metrics = [json.loads((p / "metrics.json").read_text()) for p in (run_dir, reference)]
    assert metrics[0] == metrics[1]

    r = fmrl("train", "--resume", str(run_dir))
    assert r.returncode == 2 and "already finished" in r.stderr and r.stderr.count("\n") == 1


def test_training_state_is_safetensors_and_json_and_survives_a_torn_save(tmp_path, small_data):
    run_dir = tmp_path / "run"
    train(prepare(Recipe.from_dict(small(small_data, epochs=1))), run_dir)
    meta = json.loads((run_dir / checkpoint.META).read_text())
    tensors = load_file(str(run_dir / checkpoint.TENSORS))
    assert meta["epoch"] == 1 and meta["finished"] and meta["numpy_rng"]["bit_generator"] == "PCG64"
    assert {"model.blocks.0.lru.nu_log", "rng.torch.0"} <= set(tensors)
    assert any(k.startswith("optimizer.") and k.endswith(".exp_avg_sq") for k in tensors)
    # a kill between the two renames: the JSON is from another epoch; the embedded copy is used
    (run_dir / checkpoint.META).write_text(json.dumps({**meta, "token": "stale", "epoch": 0}))
    loaded, _ = checkpoint.load_state(run_dir)
    assert loaded["epoch"] == 1 and loaded["token"] == meta["token"]
    # the derived files are made to agree with the state: later history lines go, a missing one returns
    history = run_dir / "history.jsonl"
    record = json.loads(history.read_text())
    history.write_text('{"epoch": 2, "loss": 1.0}\n')
    (run_dir / "model.safetensors").unlink()
    run = load_run_weights(run_dir, tensors)
    checkpoint.reconcile(run_dir, loaded, run, run.state_dict())
    assert [json.loads(line) for line in history.read_text().splitlines()] == [record]
    assert torch.equal(load_file(str(run_dir / "model.safetensors"))["blocks.0.lru.nu_log"],
                       tensors["model.blocks.0.lru.nu_log"])


def load_run_weights(run_dir, tensors):
    from fmrl_sdk.model.model import FMRLRec, ModelConfig

    config = json.loads((run_dir / "config.json").read_text())["model"]
    model = FMRLRec(ModelConfig(**config))
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    return model


def test_cli_resume_bad_input_is_one_line_exit_2(tmp_path):
    r = fmrl("train", "--resume", str(tmp_path / "nothing"))
    assert r.returncode == 2 and "not a run directory" in r.stderr and r.stderr.count("\n") == 1
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    r = fmrl("train", "--resume", str(tmp_path / "run"), "--epochs", "3")
    assert r.returncode == 2 and "drop --epochs" in r.stderr
    r = fmrl("train", "--resume", str(tmp_path / "run"))
    assert r.returncode == 2 and "not a run configuration" in r.stderr
    (tmp_path / "run" / "config.json").write_text('{"recipe": {}}')
    (tmp_path / "run" / "model.safetensors").write_bytes(b"")
    r = fmrl("train", "--resume", str(tmp_path / "run"))
    assert r.returncode == 2 and "no training state to resume from" in r.stderr
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.json", "model.safetensors"]
    r = fmrl("train", "--nproc", "0")
    assert r.returncode == 2 and "--nproc 0" in r.stderr
    r = fmrl("train", "--device", "tpu")
    assert r.returncode == 2 and "expected cpu or cuda" in r.stderr
    bad = tmp_path / "run" / checkpoint.TENSORS
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(FmrlError, match="not a readable training state"):
        checkpoint.load_state(tmp_path / "run")


# ---------------------------------------------------------------------------------------------
# [train] val_users: validation during training on a fixed sample of users


def test_recipe_validates_val_users():
    assert Recipe.from_dict({}).train.val_users == 0
    with pytest.raises(FmrlError, match="val_users = -1 should be an integer from 0 to "):
        Recipe.from_dict({"train": {"val_users": -1}}, source="r.toml")
    with pytest.raises(FmrlError, match="val_users = 2.5 should be an integer"):
        Recipe.from_dict({"train": {"val_users": 2.5}}, source="r.toml")


def test_validation_sample_is_fixed_and_has_validation_targets(tmp_path):
    from fmrl_sdk.data.split import SplitSpec
    from fmrl_sdk.train.distributed import Dist, evaluate_on
    from fmrl_sdk.train.evaluate import evaluate
    from fmrl_sdk.train.trainer import validation_sample
    from tests.helpers import DAY, T0, write_timed_log

    demo = load_dataset("demo")
    sample = validation_sample(demo, 300, 42)
    assert len(sample) == 300 == len(np.unique(sample)) and (np.diff(sample) > 0).all()
    assert np.array_equal(sample, validation_sample(demo, 300, 42))
    assert not np.array_equal(sample, validation_sample(demo, 300, 43))
    assert validation_sample(demo, 0, 42) is None and validation_sample(demo, demo.num_users, 42) is None
    # a time split: users drawn among those with validation events, all of whose events are scored
    timed = load_dataset(write_timed_log(tmp_path / "log.csv", users=120), min_count=3,
                         split=SplitSpec("time", str(T0 + 60 * DAY), str(T0 + 40 * DAY)))
    positions = timed.target_positions("val")
    with_val = [u for u, p in enumerate(positions) if len(p)]
    assert 20 < len(with_val) < timed.num_users
    sample = validation_sample(timed, 20, 42)
    assert set(sample) <= set(with_val) and len(sample) == 20
    assert validation_sample(timed, len(with_val), 42) is None  # every user with a target: exact anyway
    part = timed.subset(sample)
    assert [len(p) for p in part.target_positions("val")] == [len(positions[u]) for u in sample]
    model = make_model("id", num_items=timed.num_items)
    assert evaluate_on(model, timed, "val", 20, 64, Dist(), users=sample) == evaluate(model, part, "val", 20, 64)


def history_lines(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if not k.endswith("seconds")}
            for line in (run_dir / "history.jsonl").read_text().splitlines()]


def test_val_users_validates_on_one_sample_every_epoch_and_resume_and_tests_on_everyone(tmp_path, small_data,
                                                                                          monkeypatch):
    """Every epoch's validation scores the same sampled users (a resumed run too: the sample is drawn from
    the seed, not from the training RNG); history says so; the final val and test are over every user."""
    import gc
    import io

    from rich.console import Console

    from fmrl_sdk.train import trainer
    from fmrl_sdk.train.evaluate import evaluate
    from fmrl_sdk.train.run import load_run

    raw = small(small_data, epochs=4, patience=4, val_users=60)
    calls = []
    real_evaluate_on = trainer.evaluate_on

    def spy(model, dataset, split, *args, users=None, **kw):
        calls.append((split, None if users is None else users.tolist()))
        return real_evaluate_on(model, dataset, split, *args, users=users, **kw)

    monkeypatch.setattr(trainer, "evaluate_on", spy)
    log = io.StringIO()
    prep = prepare(Recipe.from_dict(raw))
    sample = trainer.validation_sample(prep.dataset, 60, 42).tolist()
    result = train(prep, tmp_path / "sampled", Console(file=log, force_terminal=False, width=200))
    assert calls == [("val", sample)] * 4 + [("val", None), ("test", None)]
    history = history_lines(tmp_path / "sampled")
    assert [h["val_users"] for h in history] == [60] * 4
    assert "epoch 1: loss" in log.getvalue() and "val (sample of 60 users) NDCG@10" in log.getvalue()
    # the best epoch's figure is the sample's; the final metrics are exact over every user
    loaded = load_run(tmp_path / "sampled")
    best = next(h for h in history if h["epoch"] == result["best_epoch"])
    on_sample = evaluate(loaded.model, prep.dataset.subset(sample), "val", 20, 1000)
    assert best["val_NDCG@10"] == {str(k): round(v["NDCG@10"], 5) for k, v in on_sample.items()}
    assert result["val"] == evaluate(loaded.model, prep.dataset, "val", 20, 1000) != on_sample
    assert result["test"] == evaluate(loaded.model, prep.dataset, "test", 20, 1000)
    assert json.loads((tmp_path / "sampled" / "metrics.json").read_text())["test"] == \
        {str(k): v for k, v in result["test"].items()}

    # interrupted after epoch 2, resumed: the same sample, history, weights and metrics
    calls.clear()
    real_append = trainer.append_history

    def append_then_stop(run_dir, record):
        real_append(run_dir, record)
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "append_history", append_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train(prepare(Recipe.from_dict(raw)), tmp_path / "resumed", Console(quiet=True))
    gc.collect()  # the interrupted call's run lock goes with its frames
    monkeypatch.setattr(trainer, "append_history", real_append)
    resumed = train(prepare(Recipe.from_dict(raw)), tmp_path / "resumed", Console(quiet=True), resume=True)
    assert calls == [("val", sample)] * 4 + [("val", None), ("test", None)]
    assert history_lines(tmp_path / "resumed") == history and resumed == result
    for name in ("model.safetensors", checkpoint.TENSORS):
        a, b = load_file(str(tmp_path / "resumed" / name)), load_file(str(tmp_path / "sampled" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_val_users_0_validates_on_every_user(tmp_path, small_data, monkeypatch):
    """0 (the default) is validation over every user, as before val_users existed: no sample, no
    "val_users" in the history; a sample as large as the users is the same run."""
    from fmrl_sdk.train import trainer

    calls = []
    real_evaluate_on = trainer.evaluate_on
    monkeypatch.setattr(trainer, "evaluate_on", lambda *a, users=None, **kw: calls.append(users) or
                        real_evaluate_on(*a, users=users, **kw))
    runs = {n: train(prepare(Recipe.from_dict(small(small_data, epochs=2, val_users=n))), tmp_path / str(n))
            for n in (0, 300)}
    assert calls == [None] * 8
    assert history_lines(tmp_path / "0") == history_lines(tmp_path / "300")
    assert all("val_users" not in h for h in history_lines(tmp_path / "0"))
    assert runs[0] == runs[300]
