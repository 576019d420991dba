"""Recipes, the trainer, run directories, evaluation and the train/eval CLI, bad input included."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fmrl_sdk.data import load_dataset
from fmrl_sdk.errors import FmrlError
from fmrl_sdk.train.evaluate import evaluate, rank_metrics, user_ranks
from fmrl_sdk.train.recipe import Recipe, load_recipe
from fmrl_sdk.train.run import load_run
from fmrl_sdk.train.trainer import prepare, train

TINY = {"data": {"path": "demo", "max_len": 20},
        "model": {"sizes": [4, 8, 16], "item_embedding": "id", "dropout": 0.0, "lru_dropout": 0.0},
        "train": {"epochs": 2, "batch_size": 256, "lr": 3e-3, "warmup_steps": 2, "patience": 5,
                  "eval_batch_size": 1000}}


def fmrl(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "fmrl_sdk.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    result = train(prepare(Recipe.from_dict(json.loads(json.dumps(TINY)))), run_dir)
    return run_dir, result


def test_run_directory_has_everything_export_needs(tiny_run):
    run_dir, result = tiny_run
    for name in ("config.json", "model.safetensors", "items.json", "metrics.json", "history.jsonl"):
        assert (run_dir / name).exists(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) == {"val", "test"}
    assert set(metrics["test"]) == {"4", "8", "16"}
    assert {"Recall@10", "NDCG@10", "MRR@10", "Recall@50", "NDCG@5"} <= set(metrics["test"]["16"])
    config = json.loads((run_dir / "config.json").read_text())
    assert config["data"]["users"] == 2000 and config["model"]["sizes"] == [4, 8, 16]
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert len(history) == 2 and history[1]["loss"] < history[0]["loss"]  # the loss falls
    assert history[0]["loss"] < np.log(7374) + 0.5


def test_reloaded_run_reproduces_its_metrics(tiny_run):
    run_dir, result = tiny_run
    run = load_run(run_dir)
    again = evaluate(run.model, load_dataset("demo"), "test", max_len=20, batch_size=333)
    for size in (4, 8, 16):
        for name, value in result["test"][size].items():
            assert abs(again[size][name] - value) < 1e-9, (size, name)


def test_read_run_is_the_one_reading_of_a_run_directory(tiny_run, tmp_path):
    from fmrl_sdk.train.run import load_run_dataset, read_run

    run_dir, _ = tiny_run
    info = read_run(run_dir)
    assert info.finished is True and info.has_checkpoint   # train() marks the state finished
    config = json.loads((run_dir / "config.json").read_text())
    assert (info.data_path, info.min_count, info.max_len, info.items, info.features) == (
        config["data"]["path"], 5, 20, None, None)
    assert load_run_dataset(info).item_ids == info.item_ids == load_run(run_dir).item_ids
    # an interrupted run (state without the finished flag), a run without training state, a moved one
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("config.json", "items.json", "model.safetensors"):
        (copy / name).write_bytes((run_dir / name).read_bytes())
    assert read_run(copy).finished is None
    state = json.loads((run_dir / "train_state.json").read_text())
    (copy / "train_state.json").write_text(json.dumps({k: v for k, v in state.items() if k != "finished"}))
    assert read_run(copy).finished is False
    config = json.loads((copy / "config.json").read_text())
    (copy / "feats").mkdir()
    config["features"] = "feats"   # relative, not found from the cwd: found next to the run
    del config["data"]["path"]
    (copy / "config.json").write_text(json.dumps(config))
    assert read_run(copy).features == copy / "feats"
    with pytest.raises(FmrlError, match="no data.path"):
        load_run_dataset(read_run(copy))
    with pytest.raises(FmrlError, match="not a run directory"):
        read_run(tmp_path)
    # a catalogue recorded at training time that has moved: content users are told, id-only users go on
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("config.json", "items.json"):
        (moved / name).write_bytes((run_dir / name).read_bytes())
    config = json.loads((moved / "config.json").read_text())
    config["recipe"]["data"]["items"] = str(tmp_path / "gone.jsonl")
    (moved / "config.json").write_text(json.dumps(config))
    with pytest.raises(FmrlError, match="gone.jsonl"):
        load_run_dataset(read_run(moved))
    assert load_run_dataset(read_run(moved), with_catalogue=False).item_ids == info.item_ids


def test_metrics_from_ranks():
    m = rank_metrics(torch.tensor([0, 4, 9, 60]), ks=(10,))
    assert m["Recall@10"].tolist() == [1, 1, 1, 0]
    assert np.allclose(m["NDCG@10"].tolist(), [1, 1 / np.log2(6), 1 / np.log2(11), 0])
    assert np.allclose(m["MRR@10"].tolist(), [1, 1 / 5, 1 / 10, 0])


def test_evaluation_ranks_against_brute_force(tiny_run):
    run = load_run(tiny_run[0])
    data = load_dataset("demo")
    metrics = evaluate(run.model, data, "test", max_len=20, batch_size=500)
    metrics_masked = evaluate(run.model, data, "test", max_len=20, batch_size=500, mask_history=True)
    histories, targets = data.history_and_target("test")
    from fmrl_sdk.data.dataset import left_pad
    with torch.no_grad():
        table = run.model.item_table()
        hidden = run.model(torch.from_numpy(left_pad(histories, 20)), table)[:, -1]
        for size in (4, 16):
            scores = run.model.scores(hidden, table, size)
            hits = [int((scores[u] > scores[u, t - 1]).sum()) < 10 for u, t in enumerate(targets)]
            assert abs(np.mean(hits) - metrics[size]["Recall@10"]) < 1e-12
            masked = scores.clone()
            for u, h in enumerate(histories):
                masked[u, h[-20:] - 1] = float("-inf")
            hits = [int((masked[u] > masked[u, t - 1]).sum()) < 10 for u, t in enumerate(targets)]
            assert abs(np.mean(hits) - metrics_masked[size]["Recall@10"]) < 1e-12


def test_evaluation_with_a_changed_scoring_table(tiny_run):
    """scoring_table changes what items are scored against, not the model's input table."""
    run = load_run(tiny_run[0])
    data = load_dataset("demo")
    from fmrl_sdk.data.dataset import left_pad
    with torch.no_grad():
        table = run.model.item_table()
        changed = table.clone()
        changed[:, 4:] = torch.randn_like(changed[:, 4:])
        metrics = evaluate(run.model, data, "test", max_len=20, batch_size=500, scoring_table=changed)
        assert evaluate(run.model, data, "test", max_len=20, batch_size=500, scoring_table=table) == \
            evaluate(run.model, data, "test", max_len=20, batch_size=500)
        histories, targets = data.history_and_target("test")
        hidden = run.model(torch.from_numpy(left_pad(histories, 20)), table)[:, -1]
        for size in run.model.cfg.sizes:
            scores = run.model.scores(hidden, changed, size)
            hits = [int((scores[u] >= scores[u, t - 1]).sum()) - 1 < 10 for u, t in enumerate(targets)]
            assert abs(np.mean(hits) - metrics[size]["Recall@10"]) < 1e-12


def test_user_ranks_per_user_in_user_order(tiny_run):
    """user_ranks: each user's own rank (brute force, up to float ties), in the split's user order whatever
    the batching, and the ranks `evaluate` averages."""
    run = load_run(tiny_run[0])
    data = load_dataset("demo")
    from fmrl_sdk.data.dataset import left_pad
    histories, targets = data.history_and_target("test")
    with torch.no_grad():
        table = run.model.item_table()
        hidden = run.model(torch.from_numpy(left_pad(histories, 20)), table)[:, -1]
    for batch_size in (7, 1000):
        ranks = user_ranks(run.model, data, "test", max_len=20, batch_size=batch_size)
        metrics = evaluate(run.model, data, "test", max_len=20, batch_size=batch_size)
        assert ranks.keys() == set(run.model.cfg.sizes)
        for size in run.model.cfg.sizes:
            scores = run.model.scores(hidden, table, size)
            target = scores.gather(1, torch.from_numpy(targets - 1)[:, None])
            noise = 1e-6 * scores.abs().amax(1, keepdim=True)
            above = (scores > target + noise).sum(1)       # surely ranked above the target
            level = (scores >= target - noise).sum(1) - 1  # above or within float noise of it
            rank = torch.from_numpy(ranks[size])
            assert bool(((above <= rank) & (rank <= level)).all()), size
            assert (level - above).float().mean() < 0.1  # the bounds pin most users' rank exactly
            for name, values in rank_metrics(rank).items():
                assert abs(values.mean().item() - metrics[size][name]) < 1e-6


@pytest.mark.parametrize("raw,match", [
    ({"train": {"epochz": 3}}, r"\[train\]: unknown key 'epochz'"),
    ({"optim": {}}, r"unknown table \[optim\]"),
    ({"model": {"sizes": [8, 4]}}, "strictly increasing"),
    ({"train": {"lr": "fast"}}, r"lr = 'fast' should be a finite number"),
    ({"model": {"item_embedding": "ids"}}, "item_embedding must be one of"),
    ({"train": {"size_weights": [1, 2]}}, r"size_weights = \[1, 2\] needs 8"),
    ({"model": {"whiten_features": 1}}, r"whiten_features = 1 should be true or false"),
    ({"model": {"item_embedding": "content", "id_dims": 8}}, r"id_dims = 8 needs item_embedding = 'hybrid'"),
    ({"model": {"item_embedding": "hybrid", "sizes": [8, 16], "id_dims": 32}}, r"1 <= id_dims <= the largest"),
    ({"train": {"epochs": True}}, r"epochs = True should be an integer"),
    ({"train": {"select_on": "best"}}, r"select_on must be 'mean' or 'largest'"),
    ({"train": {"length_buckets": -1}}, r"\[train\] length_buckets = -1 should be an integer from 0 to 2,147,483,647$"),
    ({"train": {"lr": float("inf")}}, r"lr = inf should be a finite number"),       # trained to NaN before
    ({"train": {"weight_decay": float("nan")}}, r"weight_decay = nan should be a finite number"),
    ({"model": {"sizes": ["8", "16"]}}, r"sizes = \['8', '16'\] should be a list of integers"),
    ({"model": {"sizes": [8, 16.5]}}, r"should be a list of integers"),
    ({"train": {"size_weights": [1, float("inf")]}}, r"should be a list of finite numbers"),
])
def test_recipe_validation(raw, match):
    with pytest.raises(FmrlError, match=match):
        Recipe.from_dict(raw, source="r.toml")


COUNT = "2,147,483,647"
# (table, key, value, what the message says after "r.toml: [table] key = value should be ")
RANGES = [
    ("model", "lru_dropout", -1, "a finite number in [0, 1)"),          # said "dropouts in [0, 1)"
    ("model", "dropout", 1, "a finite number in [0, 1)"),
    ("model", "r_max", 1.5, "a finite number in (0, 1]"),
    ("train", "epochs", 0, f"an integer from 1 to {COUNT}"),          # said "[train] positive sizes"
    ("train", "batch_size", 0, f"an integer from 1 to {COUNT}"),
    ("train", "eval_batch_size", 0, f"an integer from 1 to {COUNT}"),
    ("train", "weight_decay", -1.0, "a finite number >= 0"),           # said "lr > 0, grad_clip > 0"
    ("train", "lr", 0, "a finite number > 0"),
    ("train", "grad_clip", -0.5, "a finite number > 0"),
    ("train", "label_smoothing", 1, "a finite number in [0, 1)"),
    ("train", "warmup_steps", -1, f"an integer from 0 to {COUNT}"),    # said "counts >= 0"
    ("train", "threads", -1, "an integer from 0 to 1,024"),
    ("train", "threads", 1 << 40, "an integer from 0 to 1,024"),
    ("train", "patience", 0, f"an integer from 1 to {COUNT}"),         # 0 trained no epoch at all
    ("train", "item_chunk", 0, f"an integer from 1 to {COUNT}"),
    ("train", "num_negatives", 2**31, f"an integer from 1 to {COUNT}"),
    ("train", "val_users", -1, f"an integer from 0 to {COUNT}"),
    ("data", "max_len", 2**63, "an integer from 1 to 100,000"),        # loaded beyond 64 bits
    ("data", "min_count", 0, f"an integer from 1 to {COUNT}"),
    ("data", "stride", 51, "an integer from 0 to max_len (50)"),
    ("model", "num_blocks", 0, "an integer from 1 to 1,024"),
    ("train", "seed", 2**70, "an integer from 0 to 9,223,372,036,854,775,807"),   # loaded beyond 64 bits
    ("train", "seed", -1, "an integer from 0 to 9,223,372,036,854,775,807"),      # numpy refused it in train
]


@pytest.mark.parametrize("table, key, value, what", RANGES, ids=[f"{c[1]}={c[2]}" for c in RANGES])
def test_recipe_ranges_name_the_key_value_and_range(table, key, value, what):
    shown = repr(float(value)) if what.startswith("a finite number") else repr(value)
    with pytest.raises(FmrlError) as e:
        Recipe.from_dict({table: {key: value}}, source="r.toml")
    assert str(e.value) == f"r.toml: [{table}] {key} = {shown} should be {what}"


@pytest.mark.parametrize("raw, message", [
    ({"model": {"sizes": [8, 2**63]}}, f": [model] sizes must be strictly increasing integers from 1 to 65,536, "
                                       f"got [8, {2**63}]"),
    ({"model": {"r_min": 0.5, "r_max": 0.5}}, ": [model] r_min = 0.5 should be below r_max = 0.5"),
    ({"train": {"lr": 10**400}}, f" [train]: lr = {10**400} should be a finite number"),     # OverflowError before
    ({"train": {"size_weights": [1, 10**400]}}, f" [train]: size_weights = [1, {10**400}] should be a list of "
                                                "finite numbers"),
])
def test_recipe_numbers_beyond_their_range_are_one_line(raw, message):
    with pytest.raises(FmrlError) as e:
        Recipe.from_dict(raw, source="r.toml")
    assert str(e.value) == "r.toml" + message


def test_recipe_ranges_hold_for_overrides_and_their_bounds_load():
    recipe = Recipe.from_dict({"data": {"max_len": 100_000}, "model": {"sizes": [1, 65_536]},
                               "train": {"seed": 2**63 - 1, "threads": 1_024, "patience": 1}}, source="r.toml")
    with pytest.raises(FmrlError, match=r"^r.toml: \[train\] epochs = 0 should be an integer from 1 to "):
        recipe.override("train", "epochs", 0)      # what `train --epochs 0` does


def test_shipped_recipes_load():
    shipped = sorted(Path("recipes").glob("*.toml"))
    assert {p.stem for p in shipped} >= {"demo", "beauty", "beauty-hybrid", "sports", "toys", "clothing"}
    for path in shipped:
        assert load_recipe(path).train.patience >= 1
    beauty = load_recipe("recipes/beauty.toml")
    assert beauty.model.sizes == [8, 16, 32, 64, 128, 256, 512, 1024]
    assert (beauty.train.lr, beauty.train.batch_size, beauty.model.dropout) == (1e-4, 32, 0.6)


def test_cli_train_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nepochz = 1\n")
    out = tmp_path / "run"
    r = fmrl("train", "--recipe", str(bad), "--out", str(out))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "unknown key 'epochz'" in r.stderr
    assert not out.exists()
    r = fmrl("train", "--recipe", "demo", "--data", str(tmp_path / "missing"), "--out", str(out))
    assert r.returncode == 2 and "data not found" in r.stderr and not out.exists()
    r = fmrl("train", "--recipe", "no-such-recipe")
    assert r.returncode == 2 and "recipe not found" in r.stderr
    r = fmrl("train", "--recipe", "demo", "--item-embedding", "content", "--out", str(out))
    assert r.returncode == 2 and "needs content features" in r.stderr and not out.exists()


def test_cli_train_rejects_features_that_do_not_match_items(tmp_path):
    features = tmp_path / "features"
    r = fmrl("featurize", "--from-npy", str(_npy(tmp_path, 10)), "--data", "demo", "--out", str(features))
    assert r.returncode == 2  # 10 rows for 7,374 items
    assert not features.exists()


def _npy(tmp_path, rows):
    path = tmp_path / "f.npy"
    np.save(path, np.ones((rows, 4), dtype=np.float32))
    return path


def test_cli_eval_writes_metrics_and_plot(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    r = fmrl("eval", "--run", str(run_dir), "--split", "val", "--mask-history")
    assert r.returncode == 0, r.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "val_masked_history" in metrics
    assert (run_dir / "metrics_val_masked_history.png").stat().st_size > 1000
    r = fmrl("eval", "--run", str(tmp_path / "nothing"))
    assert r.returncode == 2 and "run directory not found" in r.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    r = fmrl("eval", "--run", str(empty))
    assert r.returncode == 2 and "no checkpoint" in r.stderr
