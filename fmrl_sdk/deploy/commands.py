"""CLI commands of the deployment stage: `profiles` (which size each device gets, and why) and `export`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import FmrlError


def _choices(run, dataset, profiles, refresh: bool, log, k_max: int = 100):
    from .candidates import measure
    from .profiles import choose

    precisions = tuple(p for p in ("fp32", "int8") if any(p in prof.precisions for prof in profiles))
    candidates = measure(run, dataset, precisions, k_max=k_max, refresh=refresh, log=log)
    return [choose(prof, candidates) for prof in profiles]


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def register(app: typer.Typer) -> None:
    @app.command()
    def profiles(
        run: Optional[Path] = typer.Option(None, help="Run directory (default: newest under ./runs)."),
        profile: Optional[List[str]] = typer.Option(None, "--profile", help="Only these profiles: names or .toml files (repeatable)."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
        remeasure: bool = typer.Option(False, "--remeasure", help="Ignore deploy_cache.json and measure again."),
    ):
        """For every device profile: the granularity it gets and why (bundle bytes, memory, latency, NDCG@10)."""
        from rich.console import Console
        from rich.table import Table

        from ..train.run import newest_run
        from .export import load_run_and_data
        from .profiles import all_profiles, resolve_profile

        profs = [resolve_profile(p) for p in profile] if profile else all_profiles()
        if not profs:
            raise FmrlError("no device profiles found (devices/*.toml)")
        loaded, dataset = load_run_and_data(run or newest_run())
        console = Console(stderr=as_json)
        choices = _choices(loaded, dataset, profs, remeasure, lambda m: console.print(f"[dim]{m}[/]"))
        if as_json:
            out = {"run": str(loaded.path), "profiles": [
                {"profile": c.profile.to_dict(), "chosen": None if c.chosen is None else
                 {"size": c.chosen.size, "precision": c.chosen.precision}, "reason": c.reason,
                 "candidates": c.rows} for c in choices]}
            print(json.dumps(out, indent=2))
            return
        table = Table(title=f"granularity per device profile - {loaded.path}")
        for col in ("profile", "size", "prec", "bundle", "state", "memory need / budget",
                    "ms/event / budget", "val N@10", "why"):
            table.add_column(col, justify="left" if col in ("profile", "why", "prec") else "right")
        for c in choices:
            p = c.profile
            if c.chosen is None:
                table.add_row(p.name, "-", "-", "-", "-", f"- / {_mb(p.memory_budget_bytes)}",
                              f"- / {p.latency_budget_ms:g}", "-", c.reason)
                continue
            x = c.chosen
            fitting = sum(r["fits"] for r in c.rows)
            table.add_row(p.name, str(x.size), x.precision, _mb(x.bundle_bytes), f"{x.state_bytes} B",
                          f"{_mb(x.memory_bytes)} / {_mb(p.memory_budget_bytes)}",
                          f"{x.latency_ms(p):.3f} / {p.latency_budget_ms:g}", f"{x.val_ndcg10:.4f}",
                          f"best val NDCG@10 of {fitting}/{len(c.rows)} fitting")
        console.print(table)
        console.print("memory need = bundle + state + runtime buffers (measured RSS); ms/event = measured p50 "
                      "on this CPU / speed_factor; --json lists every candidate and why it does not fit. "
                      f"Measurements cached in {loaded.path}/deploy_cache.json (--remeasure).")

    @app.command()
    def export(
        profile: str = typer.Option(..., help="Device profile: a name from devices/ or a .toml file."),
        run: Optional[Path] = typer.Option(None, help="Run directory (default: newest under ./runs)."),
        out: Optional[Path] = typer.Option(None, help="Bundle directory (default: bundles/<profile>)."),
        size: Optional[int] = typer.Option(None, help="Granularity to export (default: the profile's choice)."),
        quantize: Optional[str] = typer.Option(None, help="int8: dynamic per-channel int8 weights (if the profile allows)."),
        k_max: int = typer.Option(100, "--k-max", help="Recommendations returned per event."),
    ):
        """Export the size a device profile affords as a verified ExecuTorch bundle (docs/bundle-format.md)."""
        from rich.console import Console

        from ..train.run import newest_run
        from .export import check_size, export_bundle, load_run_and_data
        from .profiles import require_choice, resolve_profile

        console = Console()
        prof = resolve_profile(profile)
        if quantize not in (None, "int8", "fp32"):
            raise FmrlError(f"--quantize {quantize!r}: expected int8")
        precision = quantize or None
        if precision and precision not in prof.precisions:
            raise FmrlError(f"--quantize {precision}: profile {prof.name} allows only {', '.join(prof.precisions)}")
        if k_max < 1:
            raise FmrlError(f"--k-max {k_max}: must be at least 1")
        loaded, dataset = load_run_and_data(run or newest_run())
        if size is not None:
            check_size(loaded, size)
            precision = precision or ("fp32" if "fp32" in prof.precisions else "int8")
        else:
            from .candidates import measure
            from .profiles import choose

            log = lambda m: console.print(f"[dim]{m}[/]")  # noqa: E731
            precisions = (precision,) if precision else tuple(prof.precisions)
            choice = choose(prof, measure(loaded, dataset, precisions, k_max=k_max, log=log))
            chosen = require_choice(choice)
            size, precision = chosen.size, chosen.precision
            console.print(f"profile {prof.name}: size {size} {precision} - {choice.reason}")
        out = out or Path("bundles") / prof.name
        result = export_bundle(loaded.path, out, size=size, profile=prof.name,
                               quantize=precision if precision == "int8" else None, k_max=k_max,
                               log=lambda m: console.print(m), run=loaded, dataset=dataset)
        m = result.manifest
        v = m["verification"]
        console.print(f"[bold]{out}[/]: size {m['granularity']} {m['precision']}, {m['sizes']['bundle_bytes']:,} bytes, "
                      f"verified on {v['sequences']} real sequences against {v['against']} "
                      f"(max |diff| {v['max_abs_diff']:.2e}, top-10 overlap {v['top10_overlap']:.3f})")
        if "int8" in result.report:
            q = result.report["int8"]
            console.print(f"int8 vs fp32: size {q['size_change']:+.1%}, top-10 overlap {q['top10_overlap_with_fp32']:.3f}, "
                          f"val NDCG@10 {q['val_NDCG@10_fp32']:.4f} -> {q['val_NDCG@10_int8']:.4f} "
                          f"({q['val_NDCG@10_change']:+.4f}, {q['val_users']} users)")
