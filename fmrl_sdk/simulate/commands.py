"""CLI: `fmrl-sdk simulate` (replay a stream through a bundle) and `fmrl-sdk make-stream`.
Heavy modules (numpy, the runtime, ExecuTorch) are imported inside the commands."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import FmrlError


def simulate(stream, bundle=None, k: int = 10, report=None, out=None, state_dir=None, resume: bool = False,
             strict: bool = False, snapshot_every: int = 10000, exclude_seen: bool = False,
             console=None, rec=None, threads: int | None = None, limit: int = 0) -> dict:
    """Run a simulation (the CLI's body, usable from Python). Returns the report dict.
    An output (--out, --report, the snapshot) that is an input (the stream, a bundle file) or another
    output is refused before anything is written."""
    from ..fileio import atomic_write_json, check_outputs_are_not_inputs
    from ..runtime import Recommender, newest_bundle
    from .replay import SNAPSHOT, Options, Replay

    if rec is None:
        rec = Recommender.open(bundle if bundle is not None else newest_bundle("bundles"), threads=threads)
    inputs = {"the stream": stream, **{f"the bundle's {name}": rec.bundle.path / name
                                       for name in ("manifest.json", *rec.manifest["files"])}}
    snapshot = Path(state_dir) / SNAPSHOT if state_dir is not None else None
    check_outputs_are_not_inputs({"--out": out, "--report": report, "the snapshot": snapshot}, inputs)
    if limit < 0:
        raise FmrlError(f"--limit {limit}: expected 0 (whole stream) or a positive number of events")
    replay = Replay(rec, stream, Options(k=k, exclude_seen=exclude_seen, strict=strict,
                                         snapshot_every=snapshot_every, limit=limit), out=out, state_dir=state_dir)
    if console is None:
        result = replay.run(resume=resume)
    else:
        from rich.progress import (BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
                                   TransferSpeedColumn)

        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TransferSpeedColumn(),
                      TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                      console=console) as progress:
            result = replay.run(resume=resume, progress=progress)
        if replay.resumed:
            console.print(f"resumed from {Path(state_dir) / 'snapshot.bin'}")
    if report is not None:
        atomic_write_json(report, result)
    return result


def summary_table(result: dict):
    from rich.table import Table

    table = Table(title=f"simulate: {result['stream']} on {result['bundle']} (s={result['granularity']})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("events (valid / lines)", f"{result['events']:,} / {result['lines']:,}")
    if result.get("limit"):
        table.add_row("limit", f"first {result['limit']:,} events only (--limit)")
    bad = result["bad_lines"]
    table.add_row("bad lines", ", ".join(f"{k}: {v}" for k, v in bad.items()) if bad else "0")
    table.add_row("users", f"{result['users']:,}")
    for name, value in result["online"].items():
        table.add_row(f"online {name}", f"{value:.4f}")
    for name, value in result["online_last_event"].items():
        table.add_row(f"last event {name}", f"{value:.4f}")
    lat = result["latency_us"]
    table.add_row("latency us p50 / p95 / p99 / max",
                  f"{lat['p50']:.0f} / {lat['p95']:.0f} / {lat['p99']:.0f} / {lat['max']:.0f}")
    table.add_row("events/s", f"{result['events_per_s']:,.0f}")
    table.add_row("state bytes per user", f"{result['state_bytes_per_user']:,}")
    table.add_row("peak RSS", f"{result['peak_rss_bytes'] / 2**20:,.0f} MiB")
    return table


def register(app: typer.Typer) -> None:
    @app.command("simulate")
    def simulate_cmd(
        stream: Path = typer.Option(..., help="events.jsonl: {user, item, ts?, event?} per line."),
        bundle: Optional[Path] = typer.Option(None, help="Bundle directory (default: newest under ./bundles)."),
        k: int = typer.Option(10, help="Items recommended before each event (<= the bundle's k_max)."),
        report: Optional[Path] = typer.Option(None, help="Write the report JSON here."),
        out: Optional[Path] = typer.Option(None, help="Write every recommendation (JSONL) here."),
        state_dir: Optional[Path] = typer.Option(None, help="Snapshot user states and progress here."),
        resume: bool = typer.Option(False, "--resume", help="Continue from the snapshot in --state-dir."),
        strict: bool = typer.Option(False, "--strict", help="Stop at the first bad line (exit code 2)."),
        snapshot_every: int = typer.Option(10000, help="Events between snapshots (with --state-dir)."),
        exclude_seen: bool = typer.Option(False, "--exclude-seen",
                                          help="Drop (probably) seen items from recommendations."),
        threads: Optional[int] = typer.Option(None, help="ExecuTorch CPU threads (default: one per core)."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bar or table."),
        limit: int = typer.Option(0, help="Replay only the first N events (0 = all); the report says so."),
    ):
        """Replay an event stream through a bundle, one session per user: online metrics, latency, memory."""
        from rich.console import Console

        console = Console(stderr=False)
        result = simulate(stream, bundle, k, report, out, state_dir, resume, strict, snapshot_every,
                          exclude_seen, console=None if quiet else console, threads=threads, limit=limit)
        if not quiet:
            console.print(summary_table(result))
            if report:
                console.print(f"report: {report}")

    @app.command("make-stream")
    def make_stream_cmd(
        out: Path = typer.Option(..., help="events.jsonl to write."),
        run: Optional[Path] = typer.Option(None, help="Run directory: use the data it was trained on."),
        data: Optional[str] = typer.Option(None, help="Data: P5 folder, CSV/JSONL file or 'demo'."),
        split: str = typer.Option("test", help="test (whole sequences), val or train."),
        seed: int = typer.Option(0, help="Seed of the user interleaving."),
        min_count: int = typer.Option(5, help="k-core filter for CSV/JSONL data (--data only)."),
    ):
        """Write each user's sequence up to the split as events, users interleaved by a seeded random merge."""
        from ..data.dataset import load_dataset
        from ..train.run import load_run_dataset, read_run
        from .stream import write_stream

        if (run is None) == (data is None):
            raise FmrlError("pass exactly one of --run or --data")
        dataset = load_run_dataset(read_run(run), with_catalogue=False) if run is not None else load_dataset(data, min_count=min_count)
        info = write_stream(out, dataset.user_ids, dataset.item_ids, dataset.sequences, split, seed)
        typer.echo(f"wrote {info['events']:,} events of {info['users']:,} users ({split} split, seed {seed}) to {out}")
