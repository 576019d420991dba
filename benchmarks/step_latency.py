"""Per-event latency of the exported recurrent step, against its floors and the recompute baseline.

    python benchmarks/step_latency.py [--run runs/NAME] [--quick] [--json results.json]
    python benchmarks/step_latency.py --designs onehot,static,dynamic,portable [--sizes 64]

For every granularity (--quick: two sizes) and precision (fp32, int8), per event, in microseconds:
  step_p50_us / step_p99_us   the bundle's .pte `forward(item, state)` through the ExecuTorch Python runtime
  eager_step_p50_us           the same step model in eager PyTorch
  floor_p50_us                the scoring product alone (hidden [1, s] x table [N, s]^T, same precision)
                              exported with XNNPACK and run the same way: what reading the table costs
  cpu_floor_p50_us            the fastest plain fp32 mat-vec torch does over the same table on this CPU
  window50_p50_us             recomputing from scratch: the parallel size-s model over the last 50 items
                              (+ scores + top-k), the alternative to carrying state
Targets: step p50 <= 1.5 x floor_p50_us; step >= 5x faster than window50.

--designs compares the ways of storing the item table (export.TABLE_DESIGNS): .pte bytes and step p50.
Without --run: the newest run under ./runs (--quick: the newest demo run there, else a demo-shaped model with random weights
- latency does not depend on the weights' values). XNNPACK threads: --threads (1); eager torch timings
are the better of 1 and 2 intra-op threads.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

from fmrl_sdk.deploy.export import (TABLE_DESIGNS, build_floor_program, build_program, load_method, make_step,
                                    sample_sequences)
from fmrl_sdk.deploy.measure import (cpu_floor, event_stream, time_calls, time_eager_step, time_step_program,
                                     time_window)


def load_subject(run: str | None, quick: bool):
    """(model, dataset, label)."""
    from fmrl_sdk.data.dataset import load_dataset
    from fmrl_sdk.deploy.export import load_run_and_data
    from fmrl_sdk.train.run import newest_run

    if run is None and quick:  # the newest demo run, if any
        demo_runs = [p.parent for p in Path("runs").glob("*/model.safetensors")
                     if json.loads((p.parent / "config.json").read_text()).get("data", {}).get("name") == "demo"]
        run = str(max(demo_runs, key=lambda p: (p / "model.safetensors").stat().st_mtime)) if demo_runs else None
    elif run is None and Path("runs").exists() and any(Path("runs").glob("*/model.safetensors")):
        run = str(newest_run("runs"))
    if run is not None:
        loaded, dataset = load_run_and_data(run)
        return loaded.model, dataset, str(loaded.path)
    if not quick:
        sys.exit("no run under ./runs: pass --run, or --quick for a demo-shaped model with random weights")
    from fmrl_sdk.model.model import FMRLRec, ModelConfig
    from fmrl_sdk.train.recipe import load_recipe
    from fmrl_sdk.train.commands import resolve_recipe

    recipe = load_recipe(resolve_recipe("demo"))
    dataset = load_dataset("demo")
    torch.manual_seed(0)
    cfg = ModelConfig(num_items=dataset.num_items, sizes=tuple(recipe.model.sizes), item_embedding="id",
                      num_blocks=recipe.model.num_blocks)
    return FMRLRec(cfg).eval(), dataset, "demo-shaped model, random weights"


def bench_size(model, dataset, size: int, precision: str, events: int, design: str) -> dict:
    step = make_step(model, size, 100, precision, design)
    pte, reference = build_program(step, precision, design)
    method = load_method(pte)
    sequences = sample_sequences(dataset, 64)
    items = event_stream(sequences, events)
    num_state = (2 * step.num_blocks, size)
    stepped = time_step_program(method, items, num_state)
    table = step.scorer.table
    floor_method = load_method(build_floor_program(table, precision))
    hiddens = [(torch.randn(1, size),) for _ in range(events)]
    floor = time_calls(lambda h: floor_method.execute([h]), hiddens)
    # eager torch: the better of 1 and 2 intra-op threads (on a loaded 2-core machine torch's parallel
    # regions can wait a whole scheduler quantum for the second thread, even for tiny matrices)
    eager = best_threads(lambda: time_eager_step(reference, items[: max(200, events // 4)], num_state))
    cpu = best_threads(lambda: cpu_floor(table, calls=events))
    window = best_threads(lambda: time_window(model, size, sequences, calls=max(100, events // 5)))
    row = {"size": size, "precision": precision, "num_items": step.num_items, "pte_bytes": len(pte),
           "step_p50_us": round(stepped["p50"], 1), "step_p99_us": round(stepped["p99"], 1),
           "eager_step_p50_us": round(eager["p50"], 1), "floor_p50_us": round(floor["p50"], 1),
           "cpu_floor_p50_us": round(cpu["p50"], 1), "cpu_floor_how": cpu["how"],
           "window50_p50_us": round(window["p50"], 1)}
    row["step_over_floor"] = round(row["step_p50_us"] / row["floor_p50_us"], 2)
    row["step_over_cpu_floor"] = round(row["step_p50_us"] / row["cpu_floor_p50_us"], 2)
    row["window50_over_step"] = round(row["window50_p50_us"] / row["step_p50_us"], 1)
    return row


def best_threads(measure) -> dict:
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        results.append({**measure(), "torch_threads": threads})
    torch.set_num_threads(2)
    return min(results, key=lambda r: r["p50"])


def bench_designs(model, dataset, sizes, designs, events: int) -> list[dict]:
    rows = []
    sequences = sample_sequences(dataset, 64)
    items = event_stream(sequences, events)
    for size in sizes:
        for design in designs:
            step = make_step(model, size, 100, "fp32", design)
            pte, _ = build_program(step, "fp32", design)
            t = time_step_program(load_method(pte), items, (2 * step.num_blocks, size))
            rows.append({"size": size, "design": design, "pte_bytes": len(pte),
                         "table_bytes": 4 * step.num_items * size, "step_p50_us": round(t["p50"], 1),
                         "step_p99_us": round(t["p99"], 1)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=None)
    parser.add_argument("--quick", action="store_true", help="two sizes (smallest and largest), fewer events")
    parser.add_argument("--sizes", default=None, help="comma-separated sizes (default: every trained size)")
    parser.add_argument("--precisions", default="fp32,int8")
    parser.add_argument("--events", type=int, default=None, help="timed events per measurement")
    parser.add_argument("--designs", default=None, help=f"compare table designs: {','.join(TABLE_DESIGNS)}")
    parser.add_argument("--json", default=None, help="write results here")
    parser.add_argument("--threads", type=int, default=1,
                        help="XNNPACK threadpool size for the .pte runs (1, as `profiles` measures: faster here)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    from executorch.extension.pybindings import portable_lib

    portable_lib._unsafe_reset_threadpool(args.threads)
    model, dataset, label = load_subject(args.run, args.quick)
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else list(model.cfg.sizes)
    if args.quick and not args.sizes:
        sizes = [sizes[0], sizes[-1]]
    events = args.events or (300 if args.quick else 1000)
    meta = {"subject": label, "xnnpack_threads": args.threads, "num_items": model.cfg.num_items, "machine": platform.platform(),
            "cpus": os.cpu_count(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "load_average": os.getloadavg(), "command": " ".join(sys.argv)}
    if args.designs:
        rows = bench_designs(model, dataset, sizes, [d for d in args.designs.split(",") if d != "int8"], events)
        out = {"meta": meta, "designs": rows}
    else:
        rows = []
        for size in sizes:
            for precision in args.precisions.split(","):
                rows.append(bench_size(model, dataset, size, precision, events, "onehot"))
                print(json.dumps(rows[-1]), flush=True)
        print_table(rows, meta)
        out = {"meta": meta, "results": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


def print_table(rows: list[dict], meta: dict) -> None:
    cols = ["size", "precision", "step_p50_us", "step_p99_us", "eager_step_p50_us", "floor_p50_us",
            "cpu_floor_p50_us", "window50_p50_us", "step_over_floor", "step_over_cpu_floor", "window50_over_step"]
    print(f"\n{meta['subject']} | {meta['num_items']} items | {meta['machine']} | {meta['cpus']} CPUs | "
          f"load {tuple(round(x, 1) for x in meta['load_average'])} | {meta['date']}")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")


if __name__ == "__main__":
    main()
