"""CLI commands of the deployment stage: `profiles` (which size each device gets, and why) and `export`."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import FmrlError


def _choices(run, dataset, profiles, refresh: bool, console, k_max: int = 100):
    from .candidates import measure
    from .profiles import choose

    precisions = tuple(p for p in ("fp32", "int8") if any(p in prof.precisions for prof in profiles))
    with measuring(console) as progress:
        candidates = measure(run, dataset, precisions, k_max=k_max, refresh=refresh, progress=progress)
    return [choose(prof, candidates) for prof in profiles]


@contextlib.contextmanager
def measuring(console):
    """A rich progress bar (with time left) for candidates.measure: yields its progress(done, total, label)
    callback. The bar appears on the first call: nothing is shown when every candidate is cached."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    bar = Progress(TextColumn("measuring {task.description}"), BarColumn(bar_width=20), MofNCompleteColumn(),
                   TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(), console=console)
    task = None

    def progress(done: int, total: int, label: str) -> None:
        nonlocal task
        if task is None:
            bar.start()
            task = bar.add_task(label, total=total)
        bar.update(task, completed=done, description=label)

    try:
        yield progress
    finally:
        if task is not None:
            bar.stop()


def describe_run(console, info, strict: bool) -> None:
    """Say which run is used; a run whose training did not finish: one warning line, or under --strict
    an FmrlError."""
    console.print(f"run [bold]{info.path}[/]")
    if info.finished is False:
        what = (f"{info.path}: training did not finish (interrupted; `fmrl-sdk train --resume {info.path}` "
                "continues it)")
        if strict:
            raise FmrlError(f"{what}; --strict refuses to use it")
        console.print(f"[yellow]warning:[/] {what}")


def _mb(n: int) -> str:
    """Megabytes, short: 6.16, 8, 1000."""
    mb = n / 1e6
    return f"{mb:.0f}" if mb >= 100 else f"{mb:.2f}".rstrip("0").rstrip(".")


WIDE = 120  # console columns from which `profiles` also shows bundle bytes and the reason per row


def profiles_table(choices, title: str, width: int):
    """The per-profile choice as a table that fits `width` columns: narrow consoles drop the bundle and
    reason columns (the reasons of profiles with no fitting size follow the table)."""
    from rich.table import Table

    wide = width >= WIDE
    table = Table(title=title)
    columns = ["profile", "size", "prec", "session", "MB need / budget", "ms need / budget", "N@10"]
    if wide:
        columns[3:3] = ["bundle MB"]
        columns.append("why")
    for col in columns:
        table.add_column(col, justify="left" if col in ("profile", "prec", "why") else "right",
                         overflow="fold", no_wrap=col == "profile")
    notes = []
    for c in choices:
        p = c.profile
        if c.chosen is None:
            row = [p.name, "-", "-", "-", f"- / {_mb(p.memory_budget_bytes)}", f"- / {p.latency_budget_ms:g}", "-"]
            if wide:
                row[3:3] = ["-"]
                row.append(c.reason)
            else:
                notes.append(f"{p.name}: {c.reason}")
            table.add_row(*row)
            continue
        x = c.chosen
        fitting = sum(r["fits"] for r in c.rows)
        row = [p.name, str(x.size), x.precision, f"{x.state_bytes:,} B",
               f"{_mb(x.memory_bytes)} / {_mb(p.memory_budget_bytes)}",
               f"{x.latency_ms(p):.3f} / {p.latency_budget_ms:g}", f"{x.val_ndcg10:.4f}"]
        if wide:
            row[3:3] = [_mb(x.bundle_bytes)]
            row.append(f"best val NDCG@10 of {fitting}/{len(c.rows)} fitting")
        table.add_row(*row)
    return table, notes


def register(app: typer.Typer) -> None:
    _register_profiles(app)
    _register_export(app)


def _register_profiles(app: typer.Typer) -> None:
    @app.command()
    def profiles(
        run: Optional[Path] = typer.Option(None, help="Run directory (default: newest under ./runs)."),
        profile: Optional[List[str]] = typer.Option(None, "--profile", help="Only these profiles: names or .toml files (repeatable)."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
        remeasure: bool = typer.Option(False, "--remeasure", help="Ignore deploy_cache.json and measure again."),
        strict: bool = typer.Option(False, "--strict", help="Refuse a run whose training did not finish."),
    ):
        """For every device profile: the granularity it gets and why (memory, latency, NDCG@10)."""
        from rich.console import Console

        from ..train.run import newest_run, read_run
        from .export import load_run_and_data
        from .profiles import all_profiles, resolve_profile

        profs = [resolve_profile(p) for p in profile] if profile else all_profiles()
        if not profs:
            raise FmrlError("no device profiles found (devices/*.toml)")
        console = Console(stderr=as_json)
        run = run or newest_run()
        describe_run(console, read_run(run), strict)
        loaded, dataset = load_run_and_data(run)
        choices = _choices(loaded, dataset, profs, remeasure, console)
        if as_json:
            out = {"run": str(loaded.path), "profiles": [
                {"profile": c.profile.to_dict(), "chosen": None if c.chosen is None else
                 {"size": c.chosen.size, "precision": c.chosen.precision}, "reason": c.reason,
                 "candidates": c.rows} for c in choices]}
            print(json.dumps(out, indent=2))
            return
        table, notes = profiles_table(choices, "granularity per device profile", console.width)
        console.print(table)
        for note in notes:
            console.print(note)
        console.print("session = bytes of one user's saved state; memory need = bundle + session + runtime "
                      "buffers (measured RSS); ms = measured p50 on this CPU / speed_factor; N@10 = validation "
                      "NDCG@10. --json lists every candidate and why it does not fit. Measurements cached in "
                      f"{loaded.path}/deploy_cache.json (--remeasure).")


def _register_export(app: typer.Typer) -> None:
    @app.command()
    def export(
        profile: str = typer.Option(..., help="Device profile: a built-in name (devices/) or a .toml file."),
        run: Optional[Path] = typer.Option(None, help="Run directory (default: newest under ./runs)."),
        out: Optional[Path] = typer.Option(None, help="Bundle directory (default: bundles/<profile>)."),
        size: Optional[int] = typer.Option(None, help="Granularity to export (default: the profile's choice)."),
        quantize: Optional[str] = typer.Option(None, help="int8: dynamic per-channel int8 weights (if the profile allows)."),
        k_max: int = typer.Option(100, "--k-max", help="Recommendations returned per event."),
        strict: bool = typer.Option(False, "--strict", help="Refuse a run whose training did not finish."),
        bundle_format: str = typer.Option("both", "--format",
                                          help="dir: the bundle directory; file: the one-file OUT.fmrlb beside it "
                                               "(what apps ship); both (default)."),
    ):
        """Export the size a device profile affords as a verified ExecuTorch bundle (docs/bundle-format.md).

        The outputs are checked before any work: an --out that cannot be written, that is the run or its data
        (or a folder holding them), or that is a non-empty folder other than an earlier bundle is one error
        line. One export at a time per --out: a second one gets "in use by another export (pid N)"."""
        from rich.console import Console

        from ..train.run import newest_run, read_run
        from .export import bundle_lock, check_bundle_outputs, export_bundle, load_run_and_data

        console = Console()
        prof, precision = _export_options(profile, quantize, k_max, bundle_format)
        run = run or newest_run()
        info = read_run(run)
        out = out or Path("bundles") / prof.name
        check_bundle_outputs(out, bundle_format, info)
        describe_run(console, info, strict)
        with bundle_lock(out):
            loaded, dataset = load_run_and_data(run)
            size, precision = _export_size(console, loaded, dataset, prof, size, precision, k_max)
            result = export_bundle(loaded.path, out, size=size, profile=prof.name,
                                   quantize=precision if precision == "int8" else None, k_max=k_max,
                                   log=lambda m: console.print(m), run=loaded, dataset=dataset,
                                   format=bundle_format, locked=True)
        m = result.manifest
        v = m["verification"]
        console.print(f"[bold]{result.out}[/]: size {m['granularity']} {m['precision']}, {m['sizes']['bundle_bytes']:,} bytes, "
                      f"verified on {v['sequences']} real sequences against {v['against']} "
                      f"(max |diff| {v['max_abs_diff']:.2e}, top-10 overlap {v['top10_overlap']:.3f})")
        if "int8" in result.report:
            q = result.report["int8"]
            console.print(f"int8 vs fp32: size {q['size_change']:+.1%}, top-10 overlap {q['top10_overlap_with_fp32']:.3f}, "
                          f"val NDCG@10 {q['val_NDCG@10_fp32']:.4f} -> {q['val_NDCG@10_int8']:.4f} "
                          f"({q['val_NDCG@10_change']:+.4f}, {q['val_users']} users)")


def _export_options(profile: str, quantize, k_max: int, bundle_format: str):
    """(the device profile, the precision asked for or None) of export's options, checked."""
    from .profiles import resolve_profile

    prof = resolve_profile(profile)
    if quantize not in (None, "int8", "fp32"):
        raise FmrlError(f"--quantize {quantize!r}: expected int8")
    precision = quantize or None
    if precision and precision not in prof.precisions:
        raise FmrlError(f"--quantize {precision}: profile {prof.name} allows only {', '.join(prof.precisions)}")
    if k_max < 1:
        raise FmrlError(f"--k-max {k_max}: must be at least 1")
    if bundle_format not in ("dir", "file", "both"):
        raise FmrlError(f"--format {bundle_format!r}: expected dir, file or both")
    return prof, precision


def _export_size(console, loaded, dataset, prof, size, precision, k_max: int) -> tuple[int, str]:
    """(size, precision) to export: --size as given, or the profile's choice among the measured candidates."""
    from .export import check_size
    from .profiles import choose, require_choice

    if size is not None:
        check_size(loaded, size)
        return size, precision or ("fp32" if "fp32" in prof.precisions else "int8")
    from .candidates import measure

    precisions = (precision,) if precision else tuple(prof.precisions)
    with measuring(console) as progress:
        candidates = measure(loaded, dataset, precisions, k_max=k_max, progress=progress)
    chosen = require_choice(choice := choose(prof, candidates))
    console.print(f"profile {prof.name}: size {chosen.size} {chosen.precision} - {choice.reason}")
    return chosen.size, chosen.precision
