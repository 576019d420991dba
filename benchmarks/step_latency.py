"""Per-event latency of the exported recurrent step, against its floors and the recompute baseline.

    python benchmarks/step_latency.py [--run runs/NAME] [--quick] [--sizes 16,64,256] [--json results.json]
    python benchmarks/step_latency.py --items 12101 --sizes 16,64,256     # catalogue scale, random weights
    python benchmarks/step_latency.py --items 12101 --sizes 8,16,32,64,128,256 --compare-topk DIR [--cpp BENCH]

For every granularity (--quick: two sizes) and precision (fp32, int8), per event, in microseconds:
  step_p50_us / step_p99_us   the bundle's .pte `forward(x, state)` through the ExecuTorch Python runtime,
                              x = the item's vector read from the bundle's item table (as the runtime does)
  eager_step_p50_us           the same step model in eager PyTorch
  floor_p50_us                the scoring product alone (hidden [1, s] x table [N, s]^T, same precision)
                              exported with XNNPACK and run the same way: what reading the table costs
  cpu_floor_p50_us            the fastest plain fp32 mat-vec torch does over the same table on this CPU
  window50_p50_us             recomputing from scratch: the parallel size-s model over the last 50 items
                              (+ scores + top-k), the alternative to carrying state
and in bytes: bundle_bytes (the files export writes), table_bytes (the item vectors inside it; int8: + scales),
weights_fp32_bytes (fp32 item table + block weights), ram_after_load_bytes (the program bytes the runtime
keeps, which also hold the item vectors, + the RSS growth of loading and running it, in a fresh process).
Targets: step p50 <= 1.5 x floor_p50_us (fp32 also <= 2 x cpu_floor_p50_us); step >= 5x faster than
window50; fp32 bundle_bytes <= 1.25 x weights_fp32_bytes.

--compare-topk DIR (issue 28 part 4): per size and precision, the top-k inside the program (ExecuTorch's
`block_topk`, the programs before format 3's change) against the format-3 program returning all N scores with
the runtime's `select_topk`, and the scoring floor, alternating --repeats times in one process; the programs
and input vectors go to DIR, and with --cpp (a built fmrl_step_bench: configure the C++ runtime with
-DFMRL_WITH_STEP_BENCH=ON) the same comparison runs in C.

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
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from latency_tools import (
    InProgramTopK,
    build_floor_program,
    cpu_floor,
    lower_as_step,
    time_calls,
    time_eager_step,
    time_window,
)

from fmrl_sdk.deploy.candidates import Prober, bundle_bytes
from fmrl_sdk.deploy.export import (
    block_weight_bytes,
    build_program,
    make_step,
    sample_sequences,
)
from fmrl_sdk.deploy.measure import event_stream, time_step_program
from fmrl_sdk.runtime.engine import select_topk
from fmrl_sdk.runtime.program import load_program, set_threads


def load_subject(run: str | None, quick: bool):
    """(model, dataset, label)."""
    from fmrl_sdk.data.dataset import load_dataset
    from fmrl_sdk.deploy.export import load_run_and_data
    from fmrl_sdk.train.run import newest_run, read_run

    if run is None and quick:  # the newest demo run, if any
        demo_runs = [p.parent for p in Path("runs").glob("*/model.safetensors")
                     if read_run(p.parent).config.get("data", {}).get("name") == "demo"]
        run = str(max(demo_runs, key=lambda p: (p / "model.safetensors").stat().st_mtime)) if demo_runs else None
    elif run is None and Path("runs").exists() and any(Path("runs").glob("*/model.safetensors")):
        run = str(newest_run("runs"))
    if run is not None:
        loaded, dataset = load_run_and_data(run)
        return loaded.model, dataset, str(loaded.path)
    if not quick:
        sys.exit("no run under ./runs: pass --run, or --quick for a demo-shaped model with random weights")
    from fmrl_sdk.model.model import FMRLRec, ModelConfig
    from fmrl_sdk.train.recipe import find_recipe, load_recipe

    recipe = load_recipe(*find_recipe("demo"))
    dataset = load_dataset("demo")
    torch.manual_seed(0)
    cfg = ModelConfig(num_items=dataset.num_items, sizes=tuple(recipe.model.sizes), item_embedding="id",
                      num_blocks=recipe.model.num_blocks)
    return FMRLRec(cfg).eval(), dataset, "demo-shaped model, random weights"


def random_subject(num_items: int, sizes: list[int]):
    """(model, dataset, label): random weights over `num_items` items (catalogue scale without a trained
    run: latency does not depend on the weights' values); event streams come from the demo data."""
    from fmrl_sdk.data.dataset import load_dataset
    from fmrl_sdk.model.model import FMRLRec, ModelConfig

    torch.manual_seed(0)
    cfg = ModelConfig(num_items=num_items, sizes=tuple(sizes), item_embedding="id", num_blocks=1)
    return FMRLRec(cfg).eval(), load_dataset("demo"), f"random weights, {num_items:,} items, 1 block"


def bench_size(model, dataset, size: int, precision: str, events: int, tmp: Path) -> dict:
    step = make_step(model, size, 100, precision)
    program = build_program(step, precision)
    method = load_program(program.pte, trusted=True)
    sequences = sample_sequences(dataset, 64)
    items = event_stream(sequences, events)
    inputs = [torch.from_numpy(program.table.vector(i))[None] for i in items]
    num_state = (2 * step.num_blocks, size)
    stepped = time_step_program(method, inputs, num_state)
    table = step.scorer.table
    floor_method = load_program(build_floor_program(table, precision), trusted=True)
    hiddens = [(torch.randn(1, size),) for _ in range(events)]
    floor = time_calls(lambda h: floor_method.execute((h,)), hiddens)
    # eager torch: the better of 1 and 2 intra-op threads (on a loaded 2-core machine torch's parallel
    # regions can wait a whole scheduler quantum for the second thread, even for tiny matrices)
    eager = best_threads(lambda: time_eager_step(program.reference, inputs[: max(200, events // 4)], num_state))
    cpu = best_threads(lambda: cpu_floor(table, calls=events))
    window = best_threads(lambda: time_window(model, size, sequences, calls=max(100, events // 5)))
    pte_path = tmp / f"{size}-{precision}.pte"
    pte_path.write_bytes(program.pte)
    with Prober() as prober:
        loaded = prober.probe(pte_path, num_state, torch.cat(inputs[:100]).numpy(), events=100)
    files_bytes = bundle_bytes(program, dataset.item_ids, step.cold_start())
    weights = 4 * step.num_items * size + block_weight_bytes(step)
    row = {"size": size, "precision": precision, "num_items": step.num_items, "pte_bytes": len(program.pte),
           "item_table_file": program.item_table["file"], "bundle_bytes": files_bytes,
           "table_bytes": program.table_bytes, "weights_fp32_bytes": weights,
           "ram_after_load_bytes": len(program.pte) + int(loaded["rss_growth_bytes"]),
           "step_p50_us": round(stepped["p50"], 1), "step_p99_us": round(stepped["p99"], 1),
           "eager_step_p50_us": round(eager["p50"], 1), "floor_p50_us": round(floor["p50"], 1),
           "cpu_floor_p50_us": round(cpu["p50"], 1), "cpu_floor_how": cpu["how"],
           "window50_p50_us": round(window["p50"], 1)}
    row["step_over_floor"] = round(row["step_p50_us"] / row["floor_p50_us"], 2)
    row["step_over_cpu_floor"] = round(row["step_p50_us"] / row["cpu_floor_p50_us"], 2)
    row["window50_over_step"] = round(row["window50_p50_us"] / row["step_p50_us"], 1)
    row["bundle_over_weights"] = round(files_bytes / weights, 3)   # items.json weighs at small sizes
    row["pte_over_weights"] = round(len(program.pte) / weights, 3)
    return row


def compare_topk(model, dataset, size: int, precision: str, events: int, repeats: int, out: Path,
                 cpp: str | None, threads: int) -> dict:
    """In-program top-k vs all scores + the runtime's select_topk vs the scoring floor (Python, and C with
    `cpp`), p50 per event in microseconds: medians over `repeats` alternating rounds of `events` calls."""
    import subprocess

    import numpy as np

    step = make_step(model, size, 100, precision)
    args = step.example_inputs()
    prefix = out / f"{size}-{precision}"
    programs = {"topk": lower_as_step(InProgramTopK(step), args, precision),
                "scores": lower_as_step(step, args, precision),
                "floor": build_floor_program(step.scorer.table, precision)}
    for name, data in programs.items():
        Path(f"{prefix}-{name}.pte").write_bytes(data)
    items = event_stream(sample_sequences(dataset, 64), events)
    vectors = np.stack([step.vector(i)[0].numpy() for i in items]).astype("<f4")
    Path(f"{prefix}-x.f32").write_bytes(vectors.tobytes())
    methods = {name: load_program(data, trusted=True) for name, data in programs.items()}
    inputs = [torch.from_numpy(v)[None] for v in vectors]
    num_state, k = (2 * step.num_blocks, size), step.k_max

    def run(name: str) -> float:
        method, state, samples = methods[name].execute, torch.zeros(*num_state), []
        for x in inputs:
            t = time.perf_counter()
            if name == "floor":
                method((x,))
            else:
                out = method((x, state))
                if name == "scores":
                    select_topk(out[0].numpy(), k)
                state = out[2]
            samples.append(time.perf_counter() - t)
        return 1e6 * float(np.median(samples))

    for name in methods:   # warm-up
        run(name)
    rounds = {name: [] for name in methods}
    for _ in range(repeats):
        for name in methods:
            rounds[name].append(run(name))
    p50 = {name: float(np.median(v)) for name, v in rounds.items()}
    row = {"size": size, "precision": precision, "num_items": step.num_items, "k": k, "events": events,
           "repeats": repeats, "load_average": [round(x, 2) for x in os.getloadavg()],
           "py_in_program_topk_p50_us": round(p50["topk"], 1), "py_runtime_topk_p50_us": round(p50["scores"], 1),
           "py_floor_p50_us": round(p50["floor"], 1),
           "py_in_program_over_floor": round(p50["topk"] / p50["floor"], 2),
           "py_runtime_over_floor": round(p50["scores"] / p50["floor"], 2)}
    if cpp:
        c = json.loads(subprocess.run(
            [cpp, "--compare", str(prefix), "--size", str(size), "--rows", str(num_state[0]), "--items",
             str(step.num_items), "--k", str(k), "--events", str(events), "--repeats", str(repeats),
             "--threads", str(threads)], check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        row.update({"c_in_program_topk_p50_us": round(c["in_program_topk_p50_us"], 1),
                    "c_runtime_topk_p50_us": round(c["runtime_topk_p50_us"], 1),
                    "c_floor_p50_us": round(c["floor_p50_us"], 1),
                    "c_in_program_over_floor": round(c["in_program_topk_over_floor"], 2),
                    "c_runtime_over_floor": round(c["runtime_topk_over_floor"], 2),
                    "c_load_average": [round(x, 2) for x in os.getloadavg()]})
    return row


def best_threads(measure) -> dict:
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        results.append({**measure(), "torch_threads": threads})
    torch.set_num_threads(2)
    return min(results, key=lambda r: r["p50"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=None)
    parser.add_argument("--quick", action="store_true", help="two sizes (smallest and largest), fewer events")
    parser.add_argument("--sizes", default=None, help="comma-separated sizes (default: every trained size)")
    parser.add_argument("--precisions", default="fp32,int8")
    parser.add_argument("--events", type=int, default=None, help="timed events per measurement")
    parser.add_argument("--json", default=None, help="write results here")
    parser.add_argument("--items", type=int, default=None,
                        help="a random-weight model with this many items (e.g. 12101, the Beauty catalogue) instead of a run")
    parser.add_argument("--threads", type=int, default=1,
                        help="XNNPACK threadpool size for the .pte runs (1, as `profiles` measures: faster here)")
    parser.add_argument("--compare-topk", default=None, metavar="DIR",
                        help="in-program top-k vs the runtime's (issue 28 part 4); programs written to DIR")
    parser.add_argument("--cpp", default=None,
                        help="with --compare-topk: a built fmrl_step_bench (cmake -DFMRL_WITH_STEP_BENCH=ON), to compare in C too")
    parser.add_argument("--repeats", type=int, default=3, help="with --compare-topk: alternating rounds")
    args = parser.parse_args()
    torch.set_num_threads(2)
    set_threads(args.threads)
    if args.items:
        if not args.sizes:
            sys.exit("--items needs --sizes")
        model, dataset, label = random_subject(args.items, [int(s) for s in args.sizes.split(",")])
    else:
        model, dataset, label = load_subject(args.run, args.quick)
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else list(model.cfg.sizes)
    if args.quick and not args.sizes:
        sizes = [sizes[0], sizes[-1]]
    events = args.events or (300 if args.quick else 1000)
    meta = {"subject": label, "xnnpack_threads": args.threads, "num_items": model.cfg.num_items, "machine": platform.platform(),
            "cpus": os.cpu_count(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "load_average": os.getloadavg(), "command": " ".join(sys.argv)}
    rows = []
    if args.compare_topk:
        out = Path(args.compare_topk)
        out.mkdir(parents=True, exist_ok=True)
        for size in sizes:
            for precision in args.precisions.split(","):
                rows.append(compare_topk(model, dataset, size, precision, args.events or 2000, args.repeats, out,
                                         args.cpp, args.threads))
                print(json.dumps(rows[-1]), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
        return
    with tempfile.TemporaryDirectory(prefix="fmrl-step-latency-") as tmp:
        for size in sizes:
            for precision in args.precisions.split(","):
                rows.append(bench_size(model, dataset, size, precision, events, Path(tmp)))
                print(json.dumps(rows[-1]), flush=True)
    print_table(rows, meta)
    out = {"meta": meta, "results": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


def print_table(rows: list[dict], meta: dict) -> None:
    cols = ["size", "precision", "step_p50_us", "step_p99_us", "eager_step_p50_us", "floor_p50_us",
            "cpu_floor_p50_us", "window50_p50_us", "step_over_floor", "step_over_cpu_floor", "window50_over_step",
            "bundle_bytes", "bundle_over_weights", "pte_over_weights", "ram_after_load_bytes"]
    print(f"\n{meta['subject']} | {meta['num_items']} items | {meta['machine']} | {meta['cpus']} CPUs | "
          f"load {tuple(round(x, 1) for x in meta['load_average'])} | {meta['date']}")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")


if __name__ == "__main__":
    main()
