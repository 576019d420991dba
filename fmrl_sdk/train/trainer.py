"""One training run of the nested model: every granularity learned at once, early-stopped on validation.

The loop is deliberately plain: one optimizer, one scheduler, one `Objective` (model + loss) called on
each batch, built from row descriptors when it is needed (windows.py). Data-parallel training only keeps
this process's shard of the users, takes the rows of each batch that are theirs and wraps the objective
in DDP (see distributed.py; a single process is `Dist()`, where all three are no-ops). At the end
of every epoch the whole training state is saved (checkpoint.py), so `resume=True` continues a killed
run from its last completed epoch with the same result.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .. import __version__
from ..data.dataset import Dataset, data_report, load_dataset
from ..errors import FmrlError, WriteError
from ..fileio import atomic_write_json, cannot_write
from ..model.model import FMRLRec, ModelConfig, uses_content
from . import checkpoint, distributed, warm_start
from .distributed import Dist, evaluate_on
from .loss import NegativeSampler, Objective
from .recipe import Recipe, TrainSection
from .run import append_history, load_item_features, save_checkpoint, write_metrics
from .windows import Windows


@dataclass
class Prepared:
    """Everything validated before a run directory is created."""

    recipe: Recipe
    dataset: Dataset
    features: torch.Tensor | None
    model_config: ModelConfig
    init_from: Path | None = None   # [train] init_from, checked (warm_start.check): OLD's absolute path


def prepare(recipe: Recipe) -> Prepared:
    dataset = load_dataset(recipe.data.path, min_count=recipe.data.min_count, items=recipe.data.items or None,
                           split=recipe.data.split_spec())
    m = recipe.model
    features = None
    if uses_content(m.item_embedding):
        if not recipe.data.features:
            raise FmrlError(f"{recipe.source}: item_embedding = {m.item_embedding!r} needs content features: "
                            "run `fmrl-sdk featurize` and pass --features DIR (or use item_embedding = 'id')")
        features = load_item_features(recipe.data.features, dataset.item_ids)
    cfg = ModelConfig(num_items=dataset.num_items, sizes=tuple(m.sizes),
                      feature_dim=0 if features is None else features.shape[1], item_embedding=m.item_embedding,
                      whiten_features=m.whiten_features and uses_content(m.item_embedding), id_dims=m.id_dims,
                      num_blocks=m.num_blocks, dropout=m.dropout, lru_dropout=m.lru_dropout, r_min=m.r_min, r_max=m.r_max)
    init_from = warm_start.check(recipe.train.init_from, cfg) if recipe.train.init_from else None
    return Prepared(recipe, dataset, features, cfg, init_from)


def initial_model(prep: Prepared, device: torch.device | str = "cpu") -> tuple[FMRLRec, dict | None]:
    """The model at step 0 and the warm-start record (None for a cold start): seeded fresh weights, then
    OLD's where prep.init_from is set (warm_start.init_model: items matched by id)."""
    torch.manual_seed(prep.recipe.train.seed)
    model = FMRLRec(prep.model_config, prep.features)
    init_from = warm_start.init_model(model, prep.dataset.item_ids, prep.init_from) if prep.init_from else None
    return model.to(device), init_from


def warmup_cosine(warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


def make_progress(console: Console) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=console, transient=False)


def make_objective(model: FMRLRec, t: TrainSection, targets: Windows | np.ndarray) -> Objective:
    """The recipe's loss around the model; the popularity proposal counts the training targets.

    targets: the training rows (`Windows`), a training target array [rows, L] (0: no target), or already
    the counts per item [num_items] (a data-parallel run adds up its ranks' `Windows.target_counts`).
    """
    sampler = None
    if t.loss == "sampled":
        n = model.cfg.num_items
        counts = torch.from_numpy(training_target_counts(targets, n)) if t.negative_sampler == "popularity" else None
        sampler = NegativeSampler(n, t.negative_sampler, counts)
    return Objective(model, model.cfg.sizes, t.size_weights, t.loss, t.loss_method, t.item_chunk,
                     t.num_negatives, sampler, t.label_smoothing)


def training_target_counts(targets: Windows | np.ndarray, num_items: int) -> np.ndarray:
    """int64 [num_items]: how often each item is a trained target (see make_objective's `targets`)."""
    if isinstance(targets, Windows):
        return targets.target_counts(num_items)
    if targets.ndim == 1:
        return targets.astype(np.int64)
    return np.bincount(targets[targets > 0] - 1, minlength=num_items)


def validation_sample(dataset: Dataset, n: int, seed: int) -> np.ndarray | None:
    """The users ([train] val_users) validation during training scores: `n` users with a validation target,
    drawn with `seed` (always the same ones for a dataset and seed: every epoch and resume), ascending
    positions; None for every user (n = 0, or at least as many as have a validation target)."""
    eligible = np.flatnonzero([len(p) > 0 for p in dataset.target_positions("val")])
    if not n or n >= len(eligible):
        return None
    return np.sort(np.random.default_rng([seed, 0x76616C]).choice(eligible, n, replace=False))


def make_optimizer(model: FMRLRec, t: TrainSection, steps_per_epoch: int):
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(t.warmup_steps, t.epochs * steps_per_epoch))
    return optimizer, scheduler


def epoch_batches(rng: np.random.Generator, lengths: np.ndarray, batch_size: int, steps: int,
                  length_buckets: int) -> list[np.ndarray]:
    """One epoch's batches (row indices): a random permutation cut into `steps` batches of `batch_size`.

    length_buckets > 0: within each run of that many batches the rows are sorted by length (lengths [rows],
    targets per row) and then all batches are shuffled, so a batch holds similar lengths and is padded far
    less. Every epoch still uses every row once; only the grouping into batches changes.
    """
    order = rng.permutation(len(lengths))
    if length_buckets:
        group = length_buckets * batch_size
        order = np.concatenate([g[np.argsort(lengths[g], kind="stable")]
                                for g in np.split(order, range(group, len(order), group))])
    batches = [order[i * batch_size:(i + 1) * batch_size] for i in range(steps)]
    return [batches[i] for i in rng.permutation(steps)] if length_buckets else batches


def selection_score(val: dict[int, dict[str, float]], select_on: str) -> float:
    """The validation figure early stopping and the kept checkpoint follow: NDCG@10 at the largest size
    ('largest', the paper) or its mean over all sizes ('mean', every granularity counts the same)."""
    if select_on == "largest":
        return val[max(val)]["NDCG@10"]
    return sum(v["NDCG@10"] for v in val.values()) / len(val)


def train_step(objective, optimizer, scheduler, x: torch.Tensor, y: torch.Tensor, scale: float,
               grad_clip: float) -> float:
    """One optimizer step on a batch; `scale` weights this process's loss in a data-parallel average."""
    loss = objective(x, y) * scale
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(objective.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()
    return loss.item()


def train(prep: Prepared, run_dir: Path, console: Console | None = None, dist: Dist | None = None,
          resume: bool = False) -> dict:
    """Train to early stopping, keep the best checkpoint, evaluate val and test. Returns metrics.

    dist: this process's place in a data-parallel run (default: one CPU process); only rank 0 writes.
      With several processes this rank keeps only its shard of the users (distributed.shard): prep.dataset
      is replaced by that shard, so that the other users' sequences are freed.
    resume: continue the existing run_dir from its last completed epoch instead of creating run_dir.
    """
    started_training = time.perf_counter()
    dist = dist or Dist()
    console = (console or Console()) if dist.main else Console(quiet=True)
    tr, init_from, stats, data_record = _setup(prep, run_dir, dist, console, resume, started_training)
    created = dist.main and not resume
    if created:
        _create_run_dir(run_dir, prep, tr.model, dist, data_record, init_from)
    lock = None
    write_failed = False
    try:  # the lock is released however training ends (an exception included)
        lock = checkpoint.lock(run_dir) if dist.main else None
        if dist.main and resume:
            checkpoint.remove_partial_writes(run_dir)  # writes a kill cut short
        if resume and checkpoint.has_state(run_dir):
            _restore(tr)
        if init_from and not resume:
            console.print(warm_start.describe(init_from))
        t = tr.t
        console.print(f"[bold]training[/] {tr.dataset.name}: {stats} | sizes {list(tr.sizes)} | "
                      f"{tr.model.num_params()['total']:,} parameters | loss {t.loss} | "
                      f"{dist.world} x {dist.device.type} | run {run_dir}")
        _epochs(tr)
        return _final_evaluation(tr)
    except BaseException as e:
        write_failed = isinstance(e, (WriteError, OSError)) or type(e).__name__ == "SafetensorError"
        raise
    finally:
        checkpoint.unlock(run_dir, lock)
        if write_failed and created and not checkpoint.has_state(run_dir):
            # full disk (or the like) before the first epoch was saved: nothing to resume, so leave no
            # directory behind that would block a retry with the same --out
            shutil.rmtree(run_dir, ignore_errors=True)


@dataclass
class _Training:
    """One `train` call's moving parts (built by `_setup`) and what resume restores (`s`, best_weights)."""

    prep: Prepared
    run_dir: Path
    dist: Dist
    console: Console
    rng: np.random.Generator
    model: FMRLRec
    dataset: Dataset               # this rank's shard in a data-parallel run
    windows: Windows
    val_sample: np.ndarray | None
    steps_per_epoch: int
    objective: Objective
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    started: float                 # perf_counter at the start of this session (elapsed_seconds)
    s: dict = field(default_factory=lambda: {"epoch": 0, "best": -1.0, "best_epoch": 0, "waited": 0,
                                             "best_val": {}})   # what resume restores
    best_weights: dict | None = None

    @property
    def t(self) -> TrainSection:
        return self.prep.recipe.train

    @property
    def sizes(self) -> tuple:
        return self.prep.model_config.sizes

    @property
    def sharded(self) -> bool:
        return self.dist.world > 1


def _setup(prep: Prepared, run_dir: Path, dist: Dist, console: Console, resume: bool,
           started_training: float) -> tuple[_Training, dict | None, dict, dict | None]:
    """(the training's moving parts, the warm-start record, the data's stats, config.json's "data")."""
    recipe, dataset, t = prep.recipe, prep.dataset, prep.recipe.train
    torch.set_num_threads(t.threads or max(1, (os.cpu_count() or 1) // dist.local_world))
    rng = np.random.default_rng(t.seed)
    model, init_from = initial_model(prep, dist.device)
    if dist.world > 1:
        torch.manual_seed(t.seed + dist.rank)  # same initial weights, own dropout masks and negatives
    # what needs every user, before this rank drops the others: stats, the run's data record, the sample
    stats = dataset.stats()
    data_record = _data_record(prep) if dist.main and not resume else None
    val_sample = validation_sample(dataset, t.val_users, t.seed)
    dataset, windows = distributed.shard(dataset, recipe.data.max_len, recipe.data.stride, dist)
    if dist.world > 1:
        prep.dataset = dataset  # the caller's reference to every user goes too
    steps_per_epoch = distributed.steps_per_epoch(windows.rows, t.batch_size, dist)
    counts = None
    if t.loss == "sampled" and t.negative_sampler == "popularity":
        counts = distributed.sum_counts(windows.target_counts(prep.model_config.num_items), dist)
    objective = make_objective(model, t, windows if counts is None else counts).to(dist.device)
    optimizer, scheduler = make_optimizer(model, t, steps_per_epoch)
    tr = _Training(prep, run_dir, dist, console, rng, model, dataset, windows, val_sample, steps_per_epoch,
                   objective, optimizer, scheduler, started_training)
    return tr, init_from, stats, data_record


def _restore(tr: _Training) -> None:
    """Continue from run_dir's training state: weights, optimizer, scheduler, RNGs and `s`."""
    run_dir, dist = tr.run_dir, tr.dist
    meta, tensors = checkpoint.load_state(run_dir)
    if meta.get("finished"):
        raise FmrlError(f"{run_dir}: training already finished (epoch {meta['epoch']}); nothing to resume")
    tr.best_weights = checkpoint.restore(meta, tensors, tr.model, tr.optimizer, tr.scheduler, tr.rng, dist.rank,
                                         dist.device, run_dir / checkpoint.TENSORS) or _copy(tr.model)
    tr.s = {key: meta[key] for key in tr.s}
    if dist.main:
        checkpoint.reconcile(run_dir, meta, tr.model, tr.best_weights)
    s = tr.s
    tr.console.print(f"[bold]resuming[/] {run_dir} after epoch {s['epoch']} "
                     f"(best {s['best']:.4f} @ {s['best_epoch']})")


def _epochs(tr: _Training) -> None:
    """Epochs from the one after `s["epoch"]` to early stopping (or [train] epochs)."""
    t, s, console = tr.t, tr.s, tr.console
    selected = "NDCG@10 mean over sizes" if t.select_on == "mean" else f"NDCG@10[{tr.sizes[-1]}]"
    val_name = "val" if tr.val_sample is None else f"val (sample of {len(tr.val_sample)} users)"
    step_fn = distributed.wrap(tr.objective, tr.dist)
    last_epoch = t.epochs if s["waited"] < t.patience else s["epoch"]
    with make_progress(console) as progress:
        epochs_task = progress.add_task("epochs", total=t.epochs, completed=s["epoch"], info="")
        for epoch in range(s["epoch"] + 1, last_epoch + 1):
            tr.objective.train()
            started = time.perf_counter()
            loss = _train_epoch(tr, step_fn, progress, epoch)
            train_seconds = time.perf_counter() - started
            score = _end_of_epoch(tr, progress, epoch, loss, started, train_seconds)
            s["epoch"] = epoch
            progress.update(epochs_task, advance=1,
                            info=f"{val_name} {selected} {score:.4f} (best {s['best']:.4f} @ {s['best_epoch']})")
            if not console.is_terminal:  # logs get one line per epoch
                console.print(f"epoch {epoch}: loss {loss:.4f}, {val_name} {selected} {score:.4f}, "
                              f"{train_seconds:.0f} s train, best {s['best']:.4f} @ {s['best_epoch']}")
            if s["waited"] >= t.patience:
                console.print(f"early stop after epoch {epoch}: no improvement for {t.patience} epochs")
                break


def _train_epoch(tr: _Training, step_fn, progress: Progress, epoch: int) -> float:
    """One pass over this rank's rows; returns the mean loss over every rank."""
    t, dist, steps_per_epoch = tr.t, tr.dist, tr.steps_per_epoch
    batches = epoch_batches(tr.rng, tr.windows.lengths, t.batch_size, steps_per_epoch, t.length_buckets)
    batch_task = progress.add_task(f"epoch {epoch}", total=steps_per_epoch, info="")
    running = 0.0
    for step, rows in enumerate(batches):
        x, y, scale = distributed.shard_batch(tr.windows, rows, dist)
        running += train_step(step_fn, tr.optimizer, tr.scheduler, x, y, scale, t.grad_clip)
        progress.update(batch_task, advance=1, info=f"loss {running / (step + 1):.4f}")
    progress.remove_task(batch_task)
    return distributed.sum_across([running / steps_per_epoch], dist)[0] / dist.world


def _end_of_epoch(tr: _Training, progress: Progress, epoch: int, loss: float, started: float,
                  train_seconds: float) -> float:
    """Validate, follow the best epoch, save the training state (+ the best checkpoint and val metrics)
    and the history record. Returns the epoch's selection score."""
    t, dist, s, model, run_dir = tr.t, tr.dist, tr.s, tr.model, tr.run_dir
    val = evaluate_on(model, tr.dataset, "val", tr.prep.recipe.data.max_len, t.eval_batch_size, dist, progress,
                      users=tr.val_sample, sharded=tr.sharded)
    score = selection_score(val, t.select_on)
    improved = score > s["best"]
    if improved:
        s.update(best=score, best_epoch=epoch, waited=0, best_val=val)
        tr.best_weights = _copy(model)
    else:
        s["waited"] += 1
    record = {"epoch": epoch, "loss": loss, "train_seconds": round(train_seconds, 2),
              "eval_seconds": round(time.perf_counter() - started - train_seconds, 2),
              "val_NDCG@10": {str(k): round(val[k]["NDCG@10"], 5) for k in tr.sizes}, "best": improved,
              "elapsed_seconds": round(time.perf_counter() - tr.started, 1)}  # this session's
    if tr.val_sample is not None:
        record["val_users"] = len(tr.val_sample)
    if dist.world > 1:
        record["replicas_in_sync"] = distributed.replicas_in_sync(model, dist)
    torch_rng = distributed.gather(torch.get_rng_state(), dist)
    cuda_rng = distributed.gather(torch.cuda.get_rng_state(dist.device), dist) if dist.cuda else []
    if dist.main:  # the training state first: files derived from it are rewritten on resume
        checkpoint.save_state(run_dir, model, tr.optimizer, tr.scheduler, tr.rng,
                              {**s, "epoch": epoch, "seed": t.seed, "record": record},
                              None if improved else tr.best_weights, torch_rng, cuda_rng)
        if improved:
            save_checkpoint(model, run_dir)
            write_metrics(run_dir, "val", val)
        append_history(run_dir, record)
    if not record.get("replicas_in_sync", True):
        raise RuntimeError(f"data-parallel replicas hold different weights after epoch {epoch}")
    return score


def _final_evaluation(tr: _Training) -> dict:
    """The best weights, evaluated on val and test (always exact: every user, whatever val_users)."""
    t, dist, run_dir, max_len = tr.t, tr.dist, tr.run_dir, tr.prep.recipe.data.max_len
    tr.model.load_state_dict(tr.best_weights)
    val = evaluate_on(tr.model, tr.dataset, "val", max_len, t.eval_batch_size, dist, sharded=tr.sharded)
    test = evaluate_on(tr.model, tr.dataset, "test", max_len, t.eval_batch_size, dist, sharded=tr.sharded)
    if dist.main:
        write_metrics(run_dir, "val", val)
        write_metrics(run_dir, "test", test)
        checkpoint.mark_finished(run_dir)
    return {"val": val, "test": test, "best_epoch": tr.s["best_epoch"]}


def _copy(model: FMRLRec) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _data_record(prep: Prepared) -> dict:
    """config.json's "data": where the data is, its stats, split and report (needs every user)."""
    recipe, dataset = prep.recipe, prep.dataset
    # "demo" stays a name: the packaged folder moves with every (re)install of the SDK
    return {"path": "demo" if recipe.data.path == "demo" else dataset.source, "name": dataset.name,
            **dataset.stats(), "split": dataset.split_info(),
            "report": data_report(dataset, recipe.data.max_len, recipe.data.stride)}


def _create_run_dir(run_dir: Path, prep: Prepared, model: FMRLRec, dist: Dist, data: dict,
                    init_from: dict | None = None) -> None:
    try:  # atomic: of two runs started with the same --out, exactly one creates it
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        run_dir.mkdir()
    except FileExistsError:
        raise FmrlError(f"{run_dir}: already exists (choose another --out, or --resume it)") from None
    except OSError as e:
        raise cannot_write(run_dir, e) or e from None
    try:
        _write_run_files(run_dir, prep, model, dist, data, init_from)
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)  # ours, just created: a retry with the same --out must work
        raise


def _write_run_files(run_dir: Path, prep: Prepared, model: FMRLRec, dist: Dist, data: dict,
                     init_from: dict | None) -> None:
    recipe, dataset = prep.recipe, prep.dataset
    atomic_write_json(run_dir / "items.json", dataset.item_ids)
    atomic_write_json(run_dir / "config.json", {
        "sdk_version": __version__, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "recipe": recipe.to_dict(), "recipe_source": recipe.source, "model": prep.model_config.to_dict(),
        "data": data,
        "features": str(Path(recipe.data.features).resolve()) if prep.features is not None else None,
        "params": model.num_params(), "launch": {"processes": dist.world, "device": dist.device.type},
        **({"init_from": init_from} if init_from else {})})
