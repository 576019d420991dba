"""CLI: `fmrl-sdk simulate` (replay a stream through a bundle) and `fmrl-sdk make-stream`.
Heavy modules (numpy, the runtime, ExecuTorch) are imported inside the commands."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import FmrlError


def simulate(stream, bundle=None, k: int = 10, report=None, out=None, state_dir=None, resume: bool = False,
             strict: bool = False, snapshot_every: int = 10000, exclude_seen: bool = False,
             console=None, rec=None, threads: int | None = None, limit: int = 0, score_from: str | None = None,
             window: str | None = None, curve=None, items=None, run=None) -> dict:
    """Run a simulation (the CLI's body, usable from Python). Returns the report dict.
    An output (--out, --report, --curve, the snapshot) that is an input (the stream, a bundle file) or
    another output, or whose folder is not writable, is refused before anything is written.
    score_from: the cut (unix timestamp or ISO date) instead of the bundle's recorded split; window: the
    report windows after a time cut (scoring.parse_window; default 7d); items + run: add items the bundle
    lacks from this catalogue, with the run's item vectors, when the stream first names them."""
    from ..fileio import atomic_write_json, check_outputs_are_not_inputs, check_writable
    from ..runtime import Recommender, newest_bundle
    from .replay import SNAPSHOT, Options, Replay
    from .scoring import DEFAULT_WINDOW, cut_for, parse_window, plot_windows

    check_writable({"--out": out, "--report": report, "--curve": curve}, folders={"--state-dir": state_dir})
    if rec is None:
        rec = Recommender.open(bundle if bundle is not None else newest_bundle("bundles"), threads=threads)
    inputs = {"the stream": stream, **{f"the bundle's {name}": rec.bundle.path / name
                                       for name in ("manifest.json", *rec.manifest["files"])}}
    if items is not None:
        inputs["--items"] = items
    snapshot = Path(state_dir) / SNAPSHOT if state_dir is not None else None
    check_outputs_are_not_inputs({"--out": out, "--report": report, "--curve": curve, "the snapshot": snapshot},
                                 inputs)
    if limit < 0:
        raise FmrlError(f"--limit {limit}: expected 0 (whole stream) or a positive number of events")
    if (items is None) != (run is None):
        raise FmrlError("--items and --run go together: the catalogue's new items get the run's item vectors")
    cut = cut_for(rec.manifest, score_from)
    if window is not None and cut.kind != "time":
        raise FmrlError(f"--window: needs a time cut (this bundle's split is {cut.kind}; pass --score-from)")
    windows = parse_window(window or DEFAULT_WINDOW) if cut.kind == "time" else None
    if curve is not None and windows is None:
        raise FmrlError("--curve: needs a time cut (the windows after it are what it plots)")
    new_items = new_item_vectors(stream, rec, items, run, console) if items is not None else None
    replay = Replay(rec, stream, Options(k=k, exclude_seen=exclude_seen, strict=strict,
                                         snapshot_every=snapshot_every, limit=limit, cut=cut, window=windows),
                    out=out, state_dir=state_dir, new_items=new_items)
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
    if curve is not None:
        plot_windows(result, curve)
    return result


def new_item_vectors(stream, rec, items, run, console=None) -> dict:
    """{item id: vector [s]} for the items of catalogue `items` that the stream names and the bundle
    lacks, from the run's encoders and projector (train.vectors.item_vectors, the `item-vectors` path)."""
    import json
    import tempfile

    import numpy as np

    from ..data.catalogue import read_catalogue
    from ..runtime.vectors import read_item_vectors
    from ..train.vectors import item_vectors
    from .events import BadLine, parse_line
    from .replay import read_line

    catalogue = read_catalogue(items)
    wanted: dict[str, dict] = {}
    with open(stream, "rb") as f:
        while True:
            raw, size = read_line(f)   # a line over the limit (raw None) is a bad line, as in the replay
            if not size:
                break
            try:
                parsed = parse_line(raw) if raw is not None else None
            except BadLine:
                continue
            if parsed is not None and parsed[1] not in wanted and rec.resolve(parsed[1]) is None:
                row = catalogue.rows.get(parsed[1])
                if row is not None:
                    wanted[parsed[1]] = row
    if not wanted:
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        new = Path(tmp) / "new_items.jsonl"
        new.write_text("".join(json.dumps({**row, "item": item}) + "\n" for item, row in wanted.items()))
        item_vectors(run, new, rec.granularity, Path(tmp) / "vectors.safetensors", console=console)
        ids, vectors = read_item_vectors(Path(tmp) / "vectors.safetensors")
    return {item: np.asarray(v, dtype=np.float32) for item, v in zip(ids, vectors)}


def _figures(m: dict, k: int) -> str:
    return f"HitRate@{k} {m[f'HitRate@{k}']:.4f}, NDCG@{k} {m[f'NDCG@{k}']:.4f}"


def result_rows(result: dict) -> list[tuple[str, str]]:
    """The quality rows of a replay report, the out-of-sample headline first, every figure labelled."""
    k, head, oos = result["k"], result["headline"], result["out_of_sample"]
    rows = [(f"[bold]{head['label']}[/]", f"[bold]{_figures(head, k)}[/]")]
    for name, base in oos.get("popularity", {}).items():
        lift = oos["lift"][name][f"HitRate@{k}"]
        what = {"before_cut": "popularity before the cut", "before_event": "popularity before each event",
                "trailing": f"trailing popularity ({base.get('span')})"}[name]
        rows.append((f"  {what}", _figures(base, k) + (f" (lift x{lift:.2f})" if lift else "")))
    for group in ("by_user", "by_item"):
        for name, m in oos.get(group, {}).items():
            if m["events"]:
                rows.append((f"  {name} {group[3:]}s ({m['events']:,} events)", _figures(m, k)))
    new = oos.get("new_item_events")
    if new and (new["added"] or new["skipped"]):
        rows.append(("  new items", f"{new['added']:,} added from --items, {new['skipped']:,} out-of-sample "
                                    "events skipped (item unknown, no --items)"))
    if oos.get("windows"):
        rows.append((f"  windows ({oos['window']})", f"{len(oos['windows'])} after the cut, in the report"))
    for name, m in result["phases"].items():
        label = {"in_sample": "in-sample (training period)", "validation": "validation window (chose the model)",
                 "out_of_sample": None, "all_events_in_sample": "all events (in-sample: trained on)",
                 "all_events_unknown": None}[name]
        if label:
            rows.append((label, _figures(m, k)))
    return rows


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
    for row in result_rows(result):
        table.add_row(*row)
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
        score_from: Optional[str] = typer.Option(None, help="Out-of-sample from this unix timestamp or ISO date "
                                                 "(default: the split the bundle's run recorded)."),
        window: Optional[str] = typer.Option(None, help="Report windows after a time cut: 1d, 7d (default), 12h, "
                                             "or N events."),
        curve: Optional[Path] = typer.Option(None, help="Write the windows' HitRate curve as a PNG (time cut)."),
        items: Optional[Path] = typer.Option(None, help="Catalogue of new items: add those the stream names "
                                             "(needs --run)."),
        run: Optional[Path] = typer.Option(None, help="The bundle's run, for new items' vectors (with --items)."),
    ):
        """Replay an event stream through a bundle, one session per user: online metrics, latency, memory."""
        from rich.console import Console

        console = Console(stderr=False)
        result = simulate(stream, bundle, k, report, out, state_dir, resume, strict, snapshot_every,
                          exclude_seen, console=None if quiet else console, threads=threads, limit=limit,
                          score_from=score_from, window=window, curve=curve, items=items, run=run)
        if not quiet:
            console.print(summary_table(result))
            if report:
                console.print(f"report: {report}")

    @app.command("make-stream")
    def make_stream_cmd(
        out: Path = typer.Option(..., help="events.jsonl to write."),
        run: Optional[Path] = typer.Option(None, help="Run directory: use the data it was trained on, with its split."),
        data: Optional[str] = typer.Option(None, help="Data: P5 folder, CSV/JSONL file or 'demo'."),
        split: str = typer.Option("test", help="Up to which part: test (everything), val or train."),
        seed: int = typer.Option(0, help="Seed of the user interleaving (data without timestamps only)."),
        min_count: int = typer.Option(5, help="k-core for CSV/JSONL data (--data only)."),
    ):
        """Write the data as events: real timestamps and order where the data has them, else users
        interleaved by a seeded random merge with synthetic timestamps."""
        from ..data.dataset import load_dataset
        from ..fileio import check_writable
        from ..train.run import load_run_dataset, read_run
        from .stream import make_stream

        if (run is None) == (data is None):
            raise FmrlError("pass exactly one of --run or --data")
        check_writable({"--out": out})
        dataset = load_run_dataset(read_run(run), with_catalogue=False) if run is not None else load_dataset(data, min_count=min_count)
        info = make_stream(out, dataset, split, seed)
        if info["order"] == "real":
            what = ("every row of the file (time split: new users and new items included)" if dataset.cuts is not None
                    else "the rows of the k-core")
            typer.echo(f"wrote {info['events']:,} events of {info['users']:,} users to {out}: {what} up to the "
                       f"{split} part, real timestamps, ties in file order")
        else:
            typer.echo(f"wrote {info['events']:,} events of {info['users']:,} users ({split} split) to {out}: the data "
                       f"has no timestamps, so users are interleaved at random (seed {seed}) with synthetic "
                       "timestamps 60 s apart")
