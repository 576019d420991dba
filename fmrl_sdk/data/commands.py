"""CLI: `fmrl-sdk data inspect` (heavy imports inside the command)."""

from __future__ import annotations

from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    data_app = typer.Typer(no_args_is_help=True, help="Look at interaction data and item catalogues.")

    @data_app.command("inspect")
    def inspect_cmd(
        data: str = typer.Option(..., "--data", help="P5 folder, CSV/JSONL interactions file, or 'demo'."),
        items: Optional[str] = typer.Option(None, "--items",
                                            help="Item catalogue (JSONL/CSV keyed by item/item_id/id)."),
        min_count: int = typer.Option(5, "--min-count", min=1,
                                      help="k-core for CSV/JSONL data (as \\[data] min_count)."),
        max_len: int = typer.Option(50, "--max-len", min=1, help="History length trained on (as \\[data] max_len)."),
        stride: int = typer.Option(0, "--stride", min=0,
                                   help="Window stride (as \\[data] stride; 0 = last max_len only)."),
        examples: int = typer.Option(3, "--examples", min=0, help="Example item texts to show."),
        split: str = typer.Option("leave-one-out", "--split", help="leave-one-out or time (as \\[data] split)."),
        test_from: Optional[str] = typer.Option(None, "--test-from",
                                                help="Time split: unix timestamp, ISO date or fraction of events (0.8)."),
        val_from: Optional[str] = typer.Option(None, "--val-from",
                                               help="Time split: start of validation (default: as many events as the test window)."),
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    ) -> None:
        """Users, items, k-core drops, timestamp ties, targets used, catalogue coverage, example texts."""
        import json

        from rich.console import Console
        from rich.table import Table

        from ..errors import FmrlError
        from .inspect import inspect_data, report_rows
        from .split import SplitSpec

        if stride > max_len:
            raise FmrlError(f"--stride {stride}: must be at most --max-len {max_len}")
        if test_from is not None and split == "leave-one-out":
            split = "time"
        spec = SplitSpec(split, test_from or "", val_from or "")
        spec.check("data inspect")
        report = inspect_data(data, items, min_count, max_len, stride, examples, spec)
        if as_json:
            print(json.dumps(report, indent=2))
            return
        table = Table(title=f"data: {report['name']}", show_header=False)
        table.add_column("what", style="bold", no_wrap=True)
        table.add_column("value", overflow="fold")
        for what, value in report_rows(report):
            table.add_row(what, value)
        Console().print(table)

    app.add_typer(data_app, name="data")
