"""CLI commands of the server-side recipe: `train` and `eval`."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import Optional

import typer

from ..errors import FmrlError
from ..fileio import REPO_ROOT, read_json


def resolve_recipe(name_or_path: str) -> Path:
    """A recipe path, or the name of one in the repository's recipes/ folder ('demo', 'beauty', ...)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    builtin = REPO_ROOT / "recipes" / f"{name_or_path}.toml"
    if builtin.exists():
        return builtin
    raise FmrlError(f"{name_or_path}: recipe not found (a .toml path, or one of: "
                    f"{', '.join(p.stem for p in sorted((REPO_ROOT / 'recipes').glob('*.toml')))})")


def register(app: typer.Typer) -> None:
    @app.command()
    def train(
        recipe: Optional[str] = typer.Option(None, help="Recipe .toml, or a name from recipes/ (demo, beauty, ...). Default: demo."),
        data: Optional[str] = typer.Option(None, help="Data: P5 folder, CSV/JSONL file or 'demo' (overrides the recipe)."),
        features: Optional[str] = typer.Option(None, help="Features folder from `fmrl-sdk featurize` (overrides)."),
        out: Optional[Path] = typer.Option(None, help="Run directory (default runs/<recipe>-<time>)."),
        epochs: Optional[int] = typer.Option(None, help="Override \\[train] epochs."),
        sizes: Optional[str] = typer.Option(None, help="Override \\[model] sizes, e.g. 8,16,32,64."),
        item_embedding: Optional[str] = typer.Option(None, help="Override \\[model] item_embedding: content|id|hybrid."),
        seed: Optional[int] = typer.Option(None, help="Override \\[train] seed."),
        loss: Optional[str] = typer.Option(None, help="Override \\[train] loss: full|chunked|sampled."),
        resume: Optional[Path] = typer.Option(None, help="Continue this run directory from its last completed epoch (its own recipe)."),
        nproc: int = typer.Option(1, help="Data-parallel processes on this machine (launches torchrun)."),
        device: str = typer.Option("cpu", help="cpu or cuda (under torchrun: one GPU per process)."),
    ):
        """Train one nested model that holds every granularity; writes a run directory."""
        from rich.console import Console

        from . import checkpoint, distributed
        from .recipe import Recipe, load_recipe
        from .report import metrics_table
        from .trainer import prepare, train as run_training

        overrides = {"recipe": recipe, "data": data, "features": features, "out": out, "epochs": epochs,
                     "sizes": sizes, "item-embedding": item_embedding, "seed": seed, "loss": loss}
        if nproc < 1:
            raise FmrlError(f"--nproc {nproc}: expected at least 1")
        distributed.check_device(device, nproc)
        if resume is not None:
            given = [f"--{k}" for k, v in overrides.items() if v is not None]
            if given:
                raise FmrlError(f"--resume continues the run's own recipe; drop {', '.join(given)}")
            run_dir = resume
            if not (run_dir / "config.json").exists():
                raise FmrlError(f"{run_dir}: not a run directory (no config.json)")
            config = read_json(run_dir / "config.json")
            if not isinstance(config, dict) or "recipe" not in config:
                raise FmrlError(f"{run_dir / 'config.json'}: not a run configuration (no recipe)")
            rec = Recipe.from_dict(config["recipe"], source=str(run_dir / "config.json"))
            checkpoint.check_resumable(run_dir)
        else:
            recipe_path = resolve_recipe(recipe or "demo")
            rec = load_recipe(recipe_path)
            rec.override("data", "path", data)
            rec.override("data", "features", str(Path(features).resolve()) if features else None)
            rec.override("train", "epochs", epochs)
            rec.override("train", "seed", seed)
            rec.override("train", "loss", loss)
            rec.override("model", "item_embedding", item_embedding)
            if sizes:
                try:
                    rec.override("model", "sizes", [int(s) for s in sizes.split(",")])
                except ValueError:
                    raise FmrlError(f"--sizes {sizes!r}: expected comma-separated integers") from None
            run_dir = out or Path("runs") / f"{recipe_path.stem}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
            if run_dir.exists():
                raise FmrlError(f"{run_dir}: already exists (choose another --out, or --resume it)")
        prepared = prepare(rec)
        if resume is not None and read_json(run_dir / "items.json") != prepared.dataset.item_ids:
            raise FmrlError(f"{run_dir}: the run's items differ from {prepared.dataset.source}")
        if nproc > 1:  # every worker re-validates the same input; the run directory is fixed here
            args = ["--resume", str(run_dir)] if resume is not None else [
                "--recipe", str(recipe_path), "--out", str(run_dir),
                *[a for k, v in overrides.items() if v is not None and k not in ("recipe", "out")
                  for a in (f"--{k}", str(v))]]
            code = distributed.launch(nproc, ["train", *args, "--device", device])
            if code and (run_dir / checkpoint.TENSORS).exists():
                print(f"stopped: continue with `fmrl-sdk train --resume {run_dir} --nproc {nproc}`", file=sys.stderr)
            sys.exit(code)

        dist = distributed.setup(device)
        console = Console()
        try:
            run_dir = Path(distributed.broadcast_text(str(run_dir), dist))
            result = run_training(prepared, run_dir, console, dist, resume=resume is not None)
        except KeyboardInterrupt:  # the last completed epoch is saved: say how to continue
            if dist.main and (run_dir / "config.json").exists():
                print(f"interrupted: continue with `fmrl-sdk train --resume {run_dir}`", file=sys.stderr)
            sys.exit(130)
        finally:
            distributed.teardown(dist)
        if dist.main:
            console.print(metrics_table(result["test"], f"test (best epoch {result['best_epoch']}) - {run_dir}"))
            console.print(f"run written to [bold]{run_dir}[/]")

    @app.command("eval")
    def evaluate_cmd(
        run: Optional[Path] = typer.Option(None, help="Run directory (default: newest under ./runs)."),
        split: str = typer.Option("test", help="test or val."),
        mask_history: bool = typer.Option(False, "--mask-history", help="Exclude history items from the ranking (not the paper's protocol)."),
        batch_size: int = typer.Option(256, help="Users per evaluation batch."),
        plot: bool = typer.Option(True, help="Write a PNG of metrics against size into the run."),
        features: Optional[Path] = typer.Option(None, help="Features folder, if it moved since training."),
        data: Optional[str] = typer.Option(None, help="Data path, if it moved since training."),
    ):
        """Full-ranking evaluation at every granularity (Recall/NDCG/MRR@5,10,20,50)."""
        import time

        from rich.console import Console

        from ..data.dataset import load_dataset
        from .evaluate import evaluate
        from .report import metrics_table, plot_metrics
        from .run import load_run, newest_run, write_metrics
        from .trainer import make_progress

        if split not in ("test", "val"):
            raise FmrlError(f"--split {split!r}: expected test or val")
        loaded = load_run(run or newest_run(), features)
        recipe = loaded.config["recipe"]
        dataset = load_dataset(data or loaded.config["data"]["path"], min_count=recipe["data"]["min_count"])
        if dataset.item_ids != loaded.item_ids:
            raise FmrlError(f"{loaded.path}: the run's items differ from {dataset.source}")
        console = Console()
        started = time.perf_counter()
        with make_progress(console) as progress:
            metrics = evaluate(loaded.model, dataset, split, recipe["data"]["max_len"], batch_size,
                               mask_history=mask_history, progress=progress)
        seconds = time.perf_counter() - started
        key = split + ("_masked_history" if mask_history else "")
        write_metrics(loaded.path, key, metrics)
        console.print(metrics_table(metrics, f"{key}: {dataset.num_users} users, {dataset.num_items} items, "
                                              f"full ranking ({seconds:.1f} s)"))
        if plot:
            png = plot_metrics({str(k): v for k, v in metrics.items()}, loaded.path / f"metrics_{key}.png",
                               f"{dataset.name} {key}")
            console.print(f"plot: {png}" if png else "plot skipped (pip install matplotlib)")
