"""`fmrl-sdk quickstart`: the whole flow on the packaged demo data, through the same commands a user runs."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import typer

from ..jsonio import read_json


def register(app: typer.Typer) -> None:
    @app.command()
    def quickstart(
        workdir: Path = typer.Option(Path("."), help="Where runs/, bundles/ and quickstart/ are written."),
        profile: str = typer.Option("phone-lowmem", help="Device profile to export for."),
        epochs: int = typer.Option(0, help="Override the demo recipe's epochs (0 = recipe)."),
    ):
        """Train on the demo data, choose sizes per device, export a bundle, replay a stream: a summary at the end.

        Every output under --workdir is checked writable before training starts."""
        from rich.console import Console
        from rich.table import Table

        from ..deploy.export import BUNDLE_MARKER, bundle_paths
        from ..fileio import check_outputs

        console = Console()
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        run = workdir / "runs" / f"demo-{stamp}"
        bundle = workdir / "bundles" / profile  # the path README, examples/app.py and examples/cpp use
        events = workdir / "quickstart" / f"events-{stamp}.jsonl"
        report = workdir / "quickstart" / f"report-{stamp}.json"
        check_outputs({}, folders={"--workdir": workdir})   # first: the folder the user named
        check_outputs({}, files={"the stream": events, "the report": report,
                                 "the one-file bundle": bundle_paths(bundle)[1]},
                      folders={"the run": run}, replaced={"the bundle": (bundle, BUNDLE_MARKER)})
        train_args = ["train", "--recipe", "demo", "--out", str(run)] + (["--epochs", str(epochs)] if epochs else [])
        steps = [
            ("train", train_args, run),
            ("profiles", ["profiles", "--run", str(run)], None),
            ("export", ["export", "--profile", profile, "--run", str(run), "--out", str(bundle)], bundle),
            ("make-stream", ["make-stream", "--run", str(run), "--out", str(events)], events),
            ("simulate", ["simulate", "--stream", str(events), "--bundle", str(bundle), "--report", str(report)],
             report),
        ]
        seconds = {}
        for name, args, _ in steps:
            console.rule(f"[bold]{name}[/]: fmrl-sdk {' '.join(args)}")
            started = time.perf_counter()
            app(args, standalone_mode=False)
            seconds[name] = time.perf_counter() - started

        manifest = read_json(bundle / "manifest.json")
        result = read_json(report)
        table = Table(title="quickstart: what was built and measured")
        table.add_column("step")
        table.add_column("seconds", justify="right")
        table.add_column("output")
        for name, _, output in steps:
            table.add_row(name, f"{seconds[name]:.1f}", str(output or ""))
        console.print(table)
        head = result["headline"]
        figures = ", ".join(f"{k} {head[k]:.4f}" for k in head if "@" in k)
        in_sample = ", ".join(f"{k} {v:.4f}" for k, v in result["online"].items())
        console.print(f"bundle {bundle}: size {manifest['granularity']} for {manifest['profile']}, "
                      f"{manifest['sizes']['bundle_bytes']:,} bytes, {result['state_bytes_per_user']:,} bytes "
                      "per user session")
        console.print(f"simulate: [bold]{head['label']}: {figures}[/]; all {result['events']:,} events "
                      f"(in-sample: trained on) {in_sample}; {result['users']:,} users, "
                      f"p50 {result['latency_us']['p50']:.0f} us/event, {result['events_per_s']:.0f} events/s")
        console.print(f"total {sum(seconds.values()):.0f} s")
