"""Simulation throughput against the bare runtime step: is the replay loop (JSON parsing, sessions,
recommend, metrics) close to the cost of the ExecuTorch step itself?

    python benchmarks/simulate_speed.py                          # Beauty-like: shared Beauty data (else demo)
    python benchmarks/simulate_speed.py --bundle B --stream S    # an existing bundle and stream
    python benchmarks/simulate_speed.py --sizes 16,64 --threads 1 --repeats 3 --events 0

Without --bundle it builds, under --work (default /tmp/fmrl-bench), an *untrained* seeded model on the
data (speed does not depend on the weights, only on N items, s and blocks), exports each size with
`fmrl_sdk.deploy.export.export_bundle`, and writes the test-split stream with make-stream's writer.

Measured, alternating `--repeats` times (the machine may be shared: medians are reported):
  step      the bare ExecuTorch call on prepared tensors (the stream's item vectors), state carried (p50, mean)
  simulate  `fmrl-sdk simulate`'s replay loop on the stream's first --events lines (events/s, latency p50)
  engine    the runtime's engine.step (numpy in/out, lock): its p50 minus the bare p50 = wrapper cost
  free      the replay loop with a zero-cost engine: the loop's own cost per event (JSON, sessions, metrics)
ratio = simulate events/s / (1 / step p50); target >= 0.9. On a loaded machine the step's tail (preemption)
inflates the replay's mean but not the step's p50, so the JSON also gives the ratio against the step's mean
and the contention-free prediction step_p50 / (step_p50 + wrapper + loop). Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BEAUTY = ROOT.parent / "shared" / "data" / "amazon-beauty"


def build_untrained_run(data: str, run_dir: Path, sizes: tuple[int, ...]) -> None:
    import torch

    from fmrl_sdk.data.dataset import load_dataset
    from fmrl_sdk.model.model import FMRLRec, ModelConfig
    from fmrl_sdk.train.run import save_checkpoint

    dataset = load_dataset(data)
    torch.manual_seed(0)
    cfg = ModelConfig(num_items=dataset.num_items, sizes=sizes, item_embedding="id", num_blocks=1,
                      dropout=0.0, lru_dropout=0.0)
    model = FMRLRec(cfg).eval()
    run_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, run_dir)
    (run_dir / "items.json").write_text(json.dumps(dataset.item_ids))
    config = {"recipe": {"data": {"path": str(data), "max_len": 50, "min_count": 5}}, "model": cfg.to_dict(),
              "data": {"path": str(data), "name": dataset.name}, "features": None}
    (run_dir / "config.json").write_text(json.dumps(config))


def prepare(args) -> list[tuple[Path, Path]]:
    """[(bundle, stream)] to measure."""
    if args.bundle:
        if not args.stream:
            sys.exit("--bundle needs --stream")
        return [(Path(b), Path(args.stream)) for b in args.bundle.split(",")]
    from fmrl_sdk.simulate.stream import write_stream
    from fmrl_sdk.train.run import load_run_dataset, read_run

    work = Path(args.work)
    data = args.data or (str(BEAUTY) if (BEAUTY / "sequential_data.txt").exists() else "demo")
    sizes = tuple(int(s) for s in args.sizes.split(","))
    tag = Path(data).name
    run_dir = work / f"run-{tag}"
    if not (run_dir / "model.safetensors").exists():
        print(f"building an untrained run on {data} ...", file=sys.stderr)
        build_untrained_run(data, run_dir, tuple(sorted({8, 16, 32, 64, *sizes})))
    stream = Path(args.stream) if args.stream else work / f"{tag}-test.jsonl"
    if not stream.exists():
        dataset = load_run_dataset(read_run(run_dir))
        write_stream(stream, dataset.user_ids, dataset.item_ids, dataset.sequences, "test", seed=0)
    out = []
    for size in sizes:
        bundle = work / f"bundle-{tag}-{size}"
        if not (bundle / "manifest.json").exists():
            from fmrl_sdk.deploy.export import export_bundle

            print(f"exporting size {size} ...", file=sys.stderr)
            export_bundle(run_dir, bundle, size=size, profile=f"bench-{size}", verify_sequences=4)
        out.append((bundle, stream))
    return out


def head(stream: Path, lines: int, work: Path) -> Path:
    """The first `lines` lines of the stream (a prefix of an interleaved stream is still one)."""
    if lines <= 0:
        return stream
    out = work / f"{stream.stem}.head{lines}.jsonl"
    if not out.exists():
        work.mkdir(parents=True, exist_ok=True)
        with open(stream, "rb") as src, open(out, "wb") as dst:
            for n, line in enumerate(src):
                if n >= lines:
                    break
                dst.write(line)
    return out


def stream_items(rec, stream: Path, limit: int) -> list[int]:
    items = []
    with open(stream) as f:
        for line in f:
            index = rec.item_index(json.loads(line)["item"])
            if index is not None:
                items.append(index)
            if len(items) >= limit:
                break
    return items


def item_vectors(rec, items: list[int]) -> list[np.ndarray]:
    """The float32 [s] vector of each internal index, as `Session.observe` feeds it to the program."""
    ids = rec.item_ids
    return [rec.item_vector(ids[i - 1]) for i in items]


def bare_step(rec, items: list[int]) -> dict:
    """The ExecuTorch call alone: prepared float32 [1, s] item vectors, the state carried from call to call, on the
    bundle's program loaded by the runtime's loader (as the engine loads it), without the engine's
    conversions and lock."""
    import torch

    from fmrl_sdk.runtime.program import load_program

    call = load_program(rec.bundle.program, rec.bundle.method).execute
    tensors = [torch.from_numpy(x)[None] for x in item_vectors(rec, items)]
    state = torch.zeros(rec.state_shape, dtype=torch.float32)
    for t in tensors[:200]:  # warm-up
        call((t, state))
    times = np.empty(len(tensors), dtype=np.int64)
    perf = time.perf_counter_ns
    started = perf()
    for n, t in enumerate(tensors):
        t0 = perf()
        state = call((t, state))[2]
        times[n] = perf() - t0
    wall = (perf() - started) / 1e9
    us = times / 1000.0
    return {"p50_us": float(np.percentile(us, 50)), "mean_us": float(us.mean()),
            "p99_us": float(np.percentile(us, 99)), "steps_per_s": len(tensors) / wall}


def wrapped_step(rec, items: list[int]) -> dict:
    """The runtime's engine.step: numpy vector and state in, numpy outputs out, under the engine lock."""
    engine = rec.engine
    state = np.zeros(rec.state_shape, dtype=np.float32)
    times = np.empty(len(items), dtype=np.int64)
    perf = time.perf_counter_ns
    for n, x in enumerate(item_vectors(rec, items)):
        t0 = perf()
        state = engine.step(x, state)[2]
        times[n] = perf() - t0
    return {"p50_us": float(np.percentile(times / 1000.0, 50))}


class FreeEngine:
    """Returns a fixed output at no cost: the replay loop's own overhead per event."""

    def __init__(self, rec):
        rows, size = rec.state_shape
        self.out = rec.engine.step(np.zeros(size, dtype=np.float32), np.zeros((rows, size), dtype=np.float32))

    def step(self, x, state):
        return self.out


def loop_overhead(rec, stream: Path) -> dict:
    from fmrl_sdk.runtime import Recommender

    free = Recommender(rec.bundle, FreeEngine(rec))
    report = simulate_once(free, stream)
    return {"us_per_event": 1e6 / report["events_per_s"], "latency_p50_us": report["p50_us"]}


def simulate_once(rec, stream: Path) -> dict:
    from fmrl_sdk.simulate.replay import Options, Replay

    report = Replay(rec, stream, Options(k=10)).run()
    return {"events": report["events"], "events_per_s": report["events_per_s"],
            "p50_us": report["latency_us"]["p50"], "p99_us": report["latency_us"]["p99"],
            "state_bytes_per_user": report["state_bytes_per_user"], "users": report["users"],
            "peak_rss_bytes": report["peak_rss_bytes"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", help="Bundle dir(s), comma-separated (default: build Beauty-like ones).")
    parser.add_argument("--stream", help="events.jsonl (default: make-stream of the data, test split).")
    parser.add_argument("--data", help="Data for the built bundles (default: shared Beauty, else demo).")
    parser.add_argument("--sizes", default="64", help="Granularities to export and measure.")
    parser.add_argument("--work", default="/tmp/fmrl-bench")
    parser.add_argument("--threads", type=int, default=None, help="ExecuTorch threads (default: ExecuTorch's).")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--events", type=int, default=50000,
                        help="Replay the first N lines of the stream (0: all of it).")
    parser.add_argument("--step-events", type=int, default=20000, help="Steps in each bare-step measurement.")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "simulate_speed.json"))
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from fmrl_sdk.runtime import Recommender

    rows = []
    for bundle, stream in prepare(args):
        stream = head(stream, args.events, Path(args.work))
        rec = Recommender.open(bundle, threads=args.threads)
        items = stream_items(rec, stream, args.step_events)
        steps, wrapped, sims, free = [], [], [], []
        for _ in range(args.repeats):
            steps.append(bare_step(rec, items))
            wrapped.append(wrapped_step(rec, items))
            sims.append(simulate_once(rec, stream))
            free.append(loop_overhead(rec, stream))
        step_p50 = statistics.median(s["p50_us"] for s in steps)
        wrapper_us = statistics.median(w["p50_us"] for w in wrapped) - step_p50
        loop_us = statistics.median(f["us_per_event"] for f in free)
        step_mean = statistics.median(s["mean_us"] for s in steps)
        eps = statistics.median(s["events_per_s"] for s in sims)
        rows.append({
            "bundle": str(bundle), "stream": str(stream), "granularity": rec.granularity,
            "num_items": rec.num_items, "k_max": rec.k_max, "threads": args.threads,
            "events": sims[0]["events"], "users": sims[0]["users"],
            "step_p50_us": step_p50, "step_mean_us": step_mean,
            "events_per_s": eps, "event_p50_us": statistics.median(s["p50_us"] for s in sims),
            "ratio_vs_step_p50": eps / (1e6 / step_p50),
            "ratio_vs_step_mean": eps / (1e6 / step_mean),
            "engine_wrapper_us": wrapper_us, "loop_overhead_us": loop_us,
            "ratio_predicted_quiet": step_p50 / (step_p50 + max(wrapper_us, 0.0) + loop_us),
            "state_bytes_per_user": sims[0]["state_bytes_per_user"],
            "peak_rss_bytes": max(s["peak_rss_bytes"] for s in sims),
            "repeats": {"step": steps, "engine_step": wrapped, "simulate": sims, "free_engine": free},
        })
        rec.close()

    table = Table(title="simulate throughput vs bare ExecuTorch step (medians of repeats)")
    for col in ("s", "items", "events", "step p50 us", "step mean us", "sim events/s", "1/step p50",
                "ratio (p50)", "ratio (mean)", "event p50 us", "wrapper us", "loop us", "ratio (quiet)",
                "state B"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["granularity"]), f"{r['num_items']:,}", f"{r['events']:,}", f"{r['step_p50_us']:.1f}",
                      f"{r['step_mean_us']:.1f}", f"{r['events_per_s']:,.0f}", f"{1e6 / r['step_p50_us']:,.0f}",
                      f"{r['ratio_vs_step_p50']:.2f}", f"{r['ratio_vs_step_mean']:.2f}",
                      f"{r['event_p50_us']:.1f}", f"{r['engine_wrapper_us']:.1f}", f"{r['loop_overhead_us']:.1f}",
                      f"{r['ratio_predicted_quiet']:.2f}", f"{r['state_bytes_per_user']:,}")
    Console(width=200).print(table)
    result = {
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "load_avg_1m": os.getloadavg()[0]},
        "results": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
