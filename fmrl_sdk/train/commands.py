"""CLI commands of the server-side recipe: `train` and `eval`."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Optional

import typer

from ..errors import FmrlError
from ..fileio import REPO_ROOT


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
        recipe: str = typer.Option("demo", help="Recipe .toml, or a name from recipes/ (demo, beauty, ...)."),
        data: Optional[str] = typer.Option(None, help="Data: P5 folder, CSV/JSONL file or 'demo' (overrides the recipe)."),
        features: Optional[str] = typer.Option(None, help="Features folder from `fmrl-sdk featurize` (overrides)."),
        out: Optional[Path] = typer.Option(None, help="Run directory (default runs/<recipe>-<time>)."),
        epochs: Optional[int] = typer.Option(None, help="Override [train] epochs."),
        sizes: Optional[str] = typer.Option(None, help="Override [model] sizes, e.g. 8,16,32,64."),
        item_embedding: Optional[str] = typer.Option(None, help="Override [model] item_embedding: content|id|hybrid."),
        seed: Optional[int] = typer.Option(None, help="Override [train] seed."),
    ):
        """Train one nested model that holds every granularity; writes a run directory."""
        from rich.console import Console

        from .recipe import load_recipe
        from .report import metrics_table
        from .trainer import prepare, train as run_training

        recipe_path = resolve_recipe(recipe)
        rec = load_recipe(recipe_path)
        rec.override("data", "path", data)
        rec.override("data", "features", str(Path(features).resolve()) if features else None)
        rec.override("train", "epochs", epochs)
        rec.override("train", "seed", seed)
        rec.override("model", "item_embedding", item_embedding)
        if sizes:
            try:
                rec.override("model", "sizes", [int(s) for s in sizes.split(",")])
            except ValueError:
                raise FmrlError(f"--sizes {sizes!r}: expected comma-separated integers") from None
        run_dir = out or Path("runs") / f"{recipe_path.stem}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        if run_dir.exists():
            raise FmrlError(f"{run_dir}: already exists (choose another --out)")
        prepared = prepare(rec)
        console = Console()
        result = run_training(prepared, run_dir, console)
        console.print(metrics_table(result["test"], f"test (best epoch {result['best_epoch']}) - {run_dir}"))
        console.print(f"run written to [bold]{run_dir}[/]")

    @app.command("eval")
    def evaluate_cmd(
        run: Optional[Path] = typer.Option(None, help="Run directory (default: newest under ./runs)."),
        split: str = typer.Option("test", help="test or val."),
        mask_history: bool = typer.Option(False, "--mask-history", help="Exclude history items from the ranking (not the paper's protocol)."),
        batch_size: int = typer.Option(256, help="Users per evaluation batch."),
        plot: bool = typer.Option(True, help="Write a PNG of metrics against size into the run."),
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
        loaded = load_run(run or newest_run())
        recipe = loaded.config["recipe"]
        dataset = load_dataset(loaded.config["data"]["path"], min_count=recipe["data"]["min_count"])
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
