"""What resume guarantees (docs/training.md): leftovers of killed writes are removed on the next start,
two fresh one-thread runs are bitwise equal, a restored training state saves back bit for bit, and the
run's lock is released however training ends.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fmrl_sdk.errors import FmrlError
from tests.conftest import write_small_interactions


# ----------------------------------------------------------------------------------------------
# Training: leftovers of killed writes, what resume guarantees


def test_partial_writes_of_a_killed_run_are_removed_on_the_next_start(tmp_path):
    from fmrl_sdk.train import checkpoint

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    leftovers = [".history.jsonl.k2j3.tmp", ".metrics.json.a8c1.tmp", ".model.safetensors.zz.tmp",
                 f".{checkpoint.META}.q1.tmp", f".{checkpoint.TENSORS}.tmp"]
    kept = ["history.jsonl", "metrics.json", ".lock", ".notes.tmp", "x.tmp"]
    for name in leftovers + kept:
        (run_dir / name).write_text("x")
    assert checkpoint.remove_partial_writes(run_dir) == sorted(leftovers)
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(kept)


def small_recipe(tmp_path: Path, epochs: int) -> dict:
    """300 users, 120 items (as tests/test_train_scale.py), one thread."""
    path = write_small_interactions(tmp_path / "small.csv")
    return {"data": {"path": str(path), "max_len": 20, "min_count": 1},
            "model": {"sizes": [4, 8, 16], "item_embedding": "id", "dropout": 0.1, "lru_dropout": 0.1},
            "train": {"epochs": epochs, "batch_size": 64, "lr": 1e-2, "warmup_steps": 2, "patience": 5,
                      "eval_batch_size": 1000, "threads": 1}}


@pytest.fixture(scope="module")
def two_fresh_runs(tmp_path_factory):
    """The same 2-epoch recipe trained twice from scratch, one thread."""
    import torch

    from fmrl_sdk.train.recipe import Recipe
    from fmrl_sdk.train.trainer import prepare, train

    base = tmp_path_factory.mktemp("fresh")
    raw = small_recipe(base, epochs=2)
    threads = torch.get_num_threads()
    runs = []
    try:
        for name in ("a", "b"):
            prep = prepare(Recipe.from_dict(raw))
            train(prep, base / name)
            runs.append(base / name)
    finally:
        torch.set_num_threads(threads)
    return prep, runs


def test_two_fresh_one_thread_runs_are_bitwise_equal(two_fresh_runs):
    """The premise of bitwise resume (docs/training.md): with threads = 1 the arithmetic repeats exactly."""
    import torch
    from safetensors.torch import load_file

    from fmrl_sdk.train import checkpoint

    _, (a, b) = two_fresh_runs
    ta, tb = (load_file(str(run / checkpoint.TENSORS)) for run in (a, b))
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    losses = [[json.loads(line)["loss"] for line in (run / "history.jsonl").read_text().splitlines()] for run in (a, b)]
    assert losses[0] == losses[1] and len(losses[0]) == 2


def test_a_restored_training_state_saves_back_bit_for_bit(two_fresh_runs, tmp_path):
    """Resume guarantee 1 (docs/training.md): weights, best weights, optimizer moments, schedule, every
    generator and counter come back exactly. Fresh objects with other seeds, restored, saved again: the
    same tensors and the same JSON."""
    import torch
    from safetensors.torch import load_file

    from fmrl_sdk.model.model import FMRLRec
    from fmrl_sdk.train import checkpoint
    from fmrl_sdk.train.trainer import make_optimizer

    prep, (run, _) = two_fresh_runs
    meta, tensors = checkpoint.load_state(run)
    torch.manual_seed(1234)
    model = FMRLRec(prep.model_config, prep.features)
    optimizer, scheduler = make_optimizer(model, prep.recipe.train, 1)
    rng = np.random.default_rng(99)
    best = checkpoint.restore(meta, tensors, model, optimizer, scheduler, rng, 0, torch.device("cpu"),
                              run / checkpoint.TENSORS)
    added_by_save = ("format", "token", "best_is_current", "world_size", "optimizer", "scheduler", "numpy_rng",
                     "finished")
    scalars = {k: v for k, v in meta.items() if k not in added_by_save}
    again = tmp_path / "again"
    again.mkdir()
    checkpoint.save_state(again, model, optimizer, scheduler, rng, scalars, best, [torch.get_rng_state()], [])
    meta2, tensors2 = checkpoint.load_state(again)
    assert tensors.keys() == tensors2.keys()
    assert all(torch.equal(tensors[k], tensors2[k]) for k in tensors)
    drop = lambda m: {k: v for k, v in m.items() if k not in ("token", "finished")}  # noqa: E731
    assert drop(meta2) == drop(meta)
    assert load_file(str(again / checkpoint.TENSORS)).keys() == tensors.keys()


def test_the_next_start_of_a_run_removes_what_a_kill_left_half_written(two_fresh_runs):
    from fmrl_sdk.train import checkpoint
    from fmrl_sdk.train.trainer import train

    prep, (_, run) = two_fresh_runs
    leftovers = [".history.jsonl.k2j3.tmp", ".metrics.json.a8c1.tmp"]
    for name in leftovers:
        (run / name).write_text("half")
    with pytest.raises(FmrlError, match="already finished"):
        train(prep, run, resume=True)
    assert not any((run / name).exists() for name in leftovers) and not (run / checkpoint.LOCK).exists()


def test_a_training_that_raises_releases_the_run_lock_and_can_be_resumed(tmp_path, monkeypatch):
    """The lock is released in `finally`: after a failure in the middle of training (here, writing the
    history of epoch 1) no lock file is left, nobody holds the lock, and a resume runs to the end."""
    import torch

    from fmrl_sdk.train import checkpoint, trainer
    from fmrl_sdk.train.recipe import Recipe

    raw, run = small_recipe(tmp_path, epochs=2), tmp_path / "run"
    threads = torch.get_num_threads()

    def failing_history(run_dir, record):
        raise OSError("disk full")

    try:
        monkeypatch.setattr(trainer, "append_history", failing_history)
        with pytest.raises(OSError, match="disk full"):
            trainer.train(trainer.prepare(Recipe.from_dict(raw)), run)
        assert not (run / checkpoint.LOCK).exists()
        checkpoint.unlock(run, checkpoint.lock(run))   # free: taking it does not raise "another process"
        monkeypatch.undo()
        result = trainer.train(trainer.prepare(Recipe.from_dict(raw)), run, resume=True)
    finally:
        torch.set_num_threads(threads)
    assert result["best_epoch"] >= 1 and not (run / checkpoint.LOCK).exists()
    assert checkpoint.load_state(run)[0]["finished"]
