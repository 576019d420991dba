"""CLI commands of the server-side recipe: `train` and `eval`."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import Optional

import typer

from ..errors import FmrlError
from ..fileio import check_outputs
from ..jsonio import read_json


def register(app: typer.Typer) -> None:
    _register_train(app)
    _register_eval(app)
    _register_recipes(app)


def _register_train(app: typer.Typer) -> None:
    @app.command()
    def train(
        recipe: Optional[str] = typer.Option(None, help="Recipe .toml, or a built-in name (demo, beauty, ...: `fmrl-sdk recipes`). Default: demo."),
        data: Optional[str] = typer.Option(None, help="Data: P5 folder, CSV/JSONL file or 'demo' (overrides the recipe)."),
        features: Optional[str] = typer.Option(None, help="Features folder from `fmrl-sdk featurize` (overrides)."),
        items: Optional[str] = typer.Option(None, help="Item catalogue (JSONL/CSV keyed by item) for the data report (overrides \\[data] items)."),
        stride: Optional[int] = typer.Option(None, help="Override \\[data] stride: train every window of long histories, this many targets apart (0 = last max_len only)."),
        split: Optional[str] = typer.Option(None, help="Override \\[data] split: leave-one-out or time."),
        test_from: Optional[str] = typer.Option(None, help="Override \\[data] test_from (time split): unix timestamp, ISO date or fraction of events (0.8)."),
        val_from: Optional[str] = typer.Option(None, help="Override \\[data] val_from (time split; default: as many events before test_from as after)."),
        out: Optional[Path] = typer.Option(None, help="Run directory (default runs/<recipe>-<time>)."),
        epochs: Optional[int] = typer.Option(None, help="Override \\[train] epochs."),
        sizes: Optional[str] = typer.Option(None, help="Override \\[model] sizes, e.g. 8,16,32,64."),
        item_embedding: Optional[str] = typer.Option(None, help="Override \\[model] item_embedding: content|id|hybrid."),
        seed: Optional[int] = typer.Option(None, help="Override \\[train] seed."),
        loss: Optional[str] = typer.Option(None, help="Override \\[train] loss: full|chunked|sampled."),
        resume: Optional[Path] = typer.Option(None, help="Continue this run directory from its last completed epoch (its own recipe)."),
        init_from: Optional[Path] = typer.Option(None, "--init-from", help="Warm start: begin from this run's weights, items matched by id (overrides \\[train] init_from); optimizer and schedule start fresh."),
        nproc: int = typer.Option(1, help="Data-parallel processes on this machine (launches torchrun)."),
        device: str = typer.Option("cpu", help="cpu or cuda (under torchrun: one GPU per process)."),
    ):
        """Train one nested model that holds every granularity; writes a run directory.

        The run directory is checked before any data is read: an --out that exists, that is an input (the
        data, features, catalogue, recipe or --init-from run) or that cannot be created is one error line."""
        from . import distributed
        from .trainer import prepare

        overrides = {"recipe": recipe, "data": data, "features": features, "items": items, "stride": stride,
                     "split": split, "test-from": test_from, "val-from": val_from, "out": out, "epochs": epochs,
                     "sizes": sizes, "item-embedding": item_embedding, "seed": seed, "loss": loss,
                     "init-from": str(init_from.expanduser().resolve()) if init_from is not None else None}
        if nproc < 1:
            raise FmrlError(f"--nproc {nproc}: expected at least 1")
        distributed.check_device(device, nproc)
        if resume is not None:
            rec, run_dir = _resume_recipe(resume, overrides)
        else:
            rec, run_dir = _new_recipe(overrides)
        prepared = prepare(rec)
        if resume is not None and read_json(run_dir / "items.json") != prepared.dataset.item_ids:
            raise FmrlError(f"{run_dir}: the run's items differ from {prepared.dataset.source}")
        if nproc > 1:  # every worker re-validates the same input; the run directory is fixed here
            _relaunch(run_dir, resume is not None, overrides, nproc, device)
        _train_here(prepared, run_dir, rec, resume is not None, device)


def _register_eval(app: typer.Typer) -> None:
    @app.command("eval")
    def evaluate_cmd(
        run: Optional[Path] = typer.Option(None, help="Run directory (default: newest under ./runs)."),
        split: str = typer.Option("test", help="test or val."),
        mask_history: bool = typer.Option(False, "--mask-history", help="Exclude history items from the ranking (not the paper's protocol)."),
        batch_size: int = typer.Option(256, help="Users per evaluation batch."),
        plot: bool = typer.Option(True, help="Write a PNG of metrics against size into the run."),
        features: Optional[Path] = typer.Option(None, help="Features folder, if it moved since training."),
        data: Optional[str] = typer.Option(None, help="Data path, if it moved since training."),
        items: Optional[str] = typer.Option(None, help="Item catalogue, if it moved since training (checked, then reported)."),
    ):
        """Full-ranking evaluation at every granularity (Recall/NDCG/MRR@5,10,20,50).

        What it writes into the run (metrics.json, the plot) is checked writable before evaluating."""
        import time

        from rich.console import Console

        from ..data.catalogue import alignment_lines
        from .evaluate import evaluate
        from .report import metrics_table, plot_metrics
        from .run import load_run, load_run_dataset, newest_run, write_metrics
        from .trainer import make_progress

        if split not in ("test", "val"):
            raise FmrlError(f"--split {split!r}: expected test or val")
        loaded = load_run(run or newest_run(), features)
        key = split + ("_masked_history" if mask_history else "")
        check_outputs({}, files={"the run's metrics.json": loaded.path / "metrics.json",
                                 "the plot": loaded.path / f"metrics_{key}.png" if plot else None})
        dataset = load_run_dataset(loaded.info, data, items)
        console = Console()
        for line in alignment_lines(dataset.report.get("catalogue")):
            console.print(line)
        started = time.perf_counter()
        with make_progress(console) as progress:
            metrics = evaluate(loaded.model, dataset, split, loaded.info.max_len, batch_size,
                               mask_history=mask_history, progress=progress)
        seconds = time.perf_counter() - started
        write_metrics(loaded.path, key, metrics)
        console.print(metrics_table(metrics, f"{key}: {dataset.num_users} users, {dataset.num_items} items, "
                                              f"full ranking ({seconds:.1f} s)"))
        if plot:
            png = plot_metrics({str(k): v for k, v in metrics.items()}, loaded.path / f"metrics_{key}.png",
                               f"{dataset.name} {key}")
            console.print(f"plot: {png}" if png else "plot skipped (pip install matplotlib)")


def _register_recipes(app: typer.Typer) -> None:
    @app.command("recipes")
    def recipes_cmd(
        show: Optional[str] = typer.Option(None, help="Print this recipe's TOML (to copy and edit)."),
    ):
        """List the built-in recipes (shipped in the package; `train --recipe NAME`) and where their data is."""
        import os

        from rich.console import Console
        from rich.table import Table

        from .recipe import builtin_recipes, find_recipe, load_recipe

        if show is not None:
            typer.echo(find_recipe(show)[0].read_text(), nl=False)
            return
        table = Table(title="built-in recipes (train --recipe NAME)")
        for col in ("name", "model", "data, from here", "found"):
            table.add_column(col, overflow="fold")
        for name in builtin_recipes():
            rec = load_recipe(*find_recipe(name))
            paths = [p for p in (rec.data.path, rec.data.features, rec.data.items) if p and p != "demo"]
            shown = [os.path.relpath(p) if not os.path.relpath(p).startswith("../../..") else p for p in paths]
            table.add_row(name, f"{rec.model.item_embedding} {rec.model.sizes[0]}-{rec.model.sizes[-1]}",
                          "\n".join(shown) or "packaged demo data",
                          "yes" if all(Path(p).exists() for p in paths) else "no")
        console = Console()
        console.print(table)
        console.print("Relative paths of a built-in recipe start from ./recipes/ here (a checkout's recipes/); "
                      "to change them: `fmrl-sdk recipes --show NAME > my.toml`, edit, `train --recipe my.toml`.")


def _resume_recipe(run_dir: Path, overrides: dict):
    """(recipe, run directory) of `train --resume RUN`: the run's own recipe, no override allowed; FmrlError
    when RUN is not a run, is being trained or has finished."""
    from . import checkpoint
    from .recipe import Recipe

    given = [f"--{k}" for k, v in overrides.items() if v is not None]
    if given:
        raise FmrlError(f"--resume continues the run's own recipe; drop {', '.join(given)}")
    if not (run_dir / "config.json").exists():
        raise FmrlError(f"{run_dir}: not a run directory (no config.json)")
    config = read_json(run_dir / "config.json")
    if not isinstance(config, dict) or "recipe" not in config:
        raise FmrlError(f"{run_dir / 'config.json'}: not a run configuration (no recipe)")
    rec = Recipe.from_dict(config["recipe"], source=str(run_dir / "config.json"))
    checkpoint.check_resumable(run_dir)
    check_outputs({}, folders={"--resume": run_dir})
    return rec, run_dir


def _new_recipe(overrides: dict):
    """(recipe, run directory) of a fresh `train`: the named recipe with the command line's overrides; the
    run directory (--out, or runs/<recipe>-<time>) must not exist yet."""
    from .recipe import find_recipe, load_recipe

    data, features, items, sizes = (overrides[k] for k in ("data", "features", "items", "sizes"))
    recipe_path, recipe_base = find_recipe(overrides["recipe"] or "demo")
    rec = load_recipe(recipe_path, recipe_base)
    rec.override("data", "path", data)
    rec.override("data", "features", str(Path(features).resolve()) if features else None)
    rec.override("data", "items", str(Path(items).resolve()) if items else None)
    rec.override("data", "stride", overrides["stride"])
    rec.override_split(overrides["split"], overrides["test-from"], overrides["val-from"])
    rec.override("train", "epochs", overrides["epochs"])
    rec.override("train", "seed", overrides["seed"])
    rec.override("train", "loss", overrides["loss"])
    rec.override("model", "item_embedding", overrides["item-embedding"])
    rec.override("train", "init_from", overrides["init-from"])
    if sizes:
        try:
            rec.override("model", "sizes", [int(s) for s in sizes.split(",")])
        except ValueError:
            raise FmrlError(f"--sizes {sizes!r}: expected comma-separated integers") from None
    run_dir = overrides["out"] or Path("runs") / f"{recipe_path.stem}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    data = rec.data
    inputs = {"the data": data.path if data.path != "demo" else None, "the features": data.features or None,
              "the catalogue": data.items or None, "the --init-from run": rec.train.init_from or None,
              "the recipe": recipe_path}
    check_outputs(inputs, folders={"--out": run_dir})
    if run_dir.exists():
        raise FmrlError(f"{run_dir}: already exists (choose another --out, or --resume it)")
    return rec, run_dir


def _relaunch(run_dir: Path, resume: bool, overrides: dict, nproc: int, device: str):
    """Run this command again in `nproc` torchrun workers (on the fixed run directory) and exit with their code."""
    from . import checkpoint, distributed

    args = ["--resume", str(run_dir)] if resume else [
        "--recipe", overrides["recipe"] or "demo", "--out", str(run_dir),
        *[a for k, v in overrides.items() if v is not None and k not in ("recipe", "out") for a in (f"--{k}", str(v))]]
    code = distributed.launch(nproc, ["train", *args, "--device", device])
    if code and (run_dir / checkpoint.TENSORS).exists():
        print(f"stopped: continue with `fmrl-sdk train --resume {run_dir} --nproc {nproc}`", file=sys.stderr)
    sys.exit(code)


def _train_here(prepared, run_dir: Path, rec, resume: bool, device: str) -> None:
    """Train in this process (one of the torchrun workers, or alone) and print the test metrics."""
    from rich.console import Console

    from ..data.dataset import report_line
    from . import distributed
    from .report import metrics_table
    from .trainer import train as run_training

    dist = distributed.setup(device)
    console = Console()
    if dist.main:
        console.print(report_line(prepared.dataset, rec.data.max_len, rec.data.stride))
    finished = False
    try:
        run_dir = Path(distributed.broadcast_text(str(run_dir), dist))
        result = run_training(prepared, run_dir, console, dist, resume=resume)
        finished = True
    except KeyboardInterrupt:  # the last completed epoch is saved: say how to continue
        if dist.main and (run_dir / "config.json").exists():
            print(f"interrupted: continue with `fmrl-sdk train --resume {run_dir}`", file=sys.stderr)
        sys.exit(130)
    finally:
        distributed.teardown(dist, together=finished)
    if dist.main:
        console.print(metrics_table(result["test"], f"test (best epoch {result['best_epoch']}) - {run_dir}"))
        console.print(f"run written to [bold]{run_dir}[/]")
