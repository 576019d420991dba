"""One training run of the nested model: every granularity learned at once, early-stopped on validation.

The loop is deliberately plain (one process, one optimizer, one scheduler) so that data-parallel
training and resume can wrap it without a rewrite.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .. import __version__
from ..data.dataset import Dataset, load_dataset, training_arrays
from ..errors import FmrlError
from ..fileio import atomic_write_json
from ..model.model import FMRLRec, ModelConfig
from .evaluate import evaluate, trim_left_padding
from .loss import nested_cross_entropy
from .recipe import Recipe
from .run import append_history, load_item_features, save_checkpoint, write_metrics


@dataclass
class Prepared:
    """Everything validated before a run directory is created."""

    recipe: Recipe
    dataset: Dataset
    features: torch.Tensor | None
    model_config: ModelConfig


def prepare(recipe: Recipe) -> Prepared:
    dataset = load_dataset(recipe.data.path, min_count=recipe.data.min_count)
    m = recipe.model
    features = None
    if m.item_embedding in ("content", "hybrid"):
        if not recipe.data.features:
            raise FmrlError(f"{recipe.source}: item_embedding = {m.item_embedding!r} needs content features: "
                            "run `fmrl-sdk featurize` and pass --features DIR (or use item_embedding = 'id')")
        features = load_item_features(recipe.data.features, dataset.item_ids)
    cfg = ModelConfig(num_items=dataset.num_items, sizes=tuple(m.sizes),
                      feature_dim=0 if features is None else features.shape[1], item_embedding=m.item_embedding,
                      num_blocks=m.num_blocks, dropout=m.dropout, lru_dropout=m.lru_dropout,
                      r_min=m.r_min, r_max=m.r_max)
    return Prepared(recipe, dataset, features, cfg)


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


def train(prep: Prepared, run_dir: Path, console: Console | None = None) -> dict:
    """Train to early stopping, keep the best checkpoint, evaluate val and test. Returns metrics."""
    console = console or Console()
    recipe, dataset, t = prep.recipe, prep.dataset, prep.recipe.train
    torch.set_num_threads(t.threads or os.cpu_count() or 1)
    torch.manual_seed(t.seed)
    rng = np.random.default_rng(t.seed)
    model = FMRLRec(prep.model_config, prep.features)
    inputs, targets = training_arrays(dataset, recipe.data.max_len)
    steps_per_epoch = math.ceil(len(inputs) / t.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(t.warmup_steps, t.epochs * steps_per_epoch))
    sizes, largest = prep.model_config.sizes, prep.model_config.sizes[-1]

    run_dir.mkdir(parents=True, exist_ok=False)
    atomic_write_json(run_dir / "items.json", dataset.item_ids)
    atomic_write_json(run_dir / "config.json", {
        "sdk_version": __version__, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "recipe": recipe.to_dict(), "recipe_source": recipe.source, "model": prep.model_config.to_dict(),
        "data": {"path": dataset.source, "name": dataset.name, **dataset.stats()},
        "features": str(Path(recipe.data.features).resolve()) if prep.features is not None else None,
        "params": model.num_params()})
    console.print(f"[bold]training[/] {dataset.name}: {dataset.stats()} | sizes {list(sizes)} | "
                  f"{model.num_params()['total']:,} parameters | run {run_dir}")

    best, best_epoch, waited, val = -1.0, 0, 0, {}
    with make_progress(console) as progress:
        epochs_task = progress.add_task("epochs", total=t.epochs, info="")
        for epoch in range(1, t.epochs + 1):
            model.train()
            started = time.perf_counter()
            order = rng.permutation(len(inputs))
            batch_task = progress.add_task(f"epoch {epoch}", total=steps_per_epoch, info="")
            running = 0.0
            for step in range(steps_per_epoch):
                rows = order[step * t.batch_size:(step + 1) * t.batch_size]
                x, y = (torch.from_numpy(a) for a in trim_left_padding(inputs[rows], targets[rows]))
                table = model.item_table()
                loss = nested_cross_entropy(model(x, table), y, table, sizes, t.size_weights, t.loss_method)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
                optimizer.step()
                scheduler.step()
                running += loss.item()
                progress.update(batch_task, advance=1, info=f"loss {running / (step + 1):.4f}")
            progress.remove_task(batch_task)
            train_seconds = time.perf_counter() - started
            val = evaluate(model, dataset, "val", recipe.data.max_len, t.eval_batch_size, progress=progress)
            score = val[largest]["NDCG@10"]
            improved = score > best
            if improved:
                best, best_epoch, waited = score, epoch, 0
                save_checkpoint(model, run_dir)
                write_metrics(run_dir, "val", val)
            else:
                waited += 1
            append_history(run_dir, {"epoch": epoch, "loss": running / steps_per_epoch,
                                     "train_seconds": round(train_seconds, 2),
                                     "eval_seconds": round(time.perf_counter() - started - train_seconds, 2),
                                     "val_NDCG@10": {str(s): round(val[s]["NDCG@10"], 5) for s in sizes},
                                     "best": improved})
            progress.update(epochs_task, advance=1, info=f"val N@10[{largest}] {score:.4f} (best {best:.4f} @ {best_epoch})")
            if not console.is_terminal:  # logs get one line per epoch
                console.print(f"epoch {epoch}: loss {running / steps_per_epoch:.4f}, val NDCG@10[{largest}] "
                              f"{score:.4f}, {train_seconds:.0f} s train, best {best:.4f} @ {best_epoch}")
            if waited >= t.patience:
                console.print(f"early stop after epoch {epoch}: no improvement for {t.patience} epochs")
                break

    from .run import load_run

    best_model = load_run(run_dir).model
    val = evaluate(best_model, dataset, "val", recipe.data.max_len, t.eval_batch_size)
    test = evaluate(best_model, dataset, "test", recipe.data.max_len, t.eval_batch_size)
    write_metrics(run_dir, "val", val)
    write_metrics(run_dir, "test", test)
    return {"val": val, "test": test, "best_epoch": best_epoch}
