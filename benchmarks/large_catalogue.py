"""Training-step memory and time on a synthetic 1,000,000-item catalogue: chunked vs sampled vs full loss.

A content-feature model (384-d frozen features, as MiniLM; sizes 64,128,256), batch 32, max_len 50
(every position has a target: 1,600 targets per step). Each configuration runs in a fresh Python
process so that its peak resident memory (getrusage ru_maxrss) is its own; `setup` is the resident
memory before the first step (features, model, optimizer, batch), `peak` the maximum over the run.
A step is forward + loss + backward + AdamW. The full softmax keeps about 3 [targets x items] float32
buffers (scores, softmax, gradient): at the large size it runs only if its estimate fits both
--budget-gb and the memory available now (the machine may be shared), else the estimate is reported.

    python benchmarks/large_catalogue.py [--quick] [--items 1000000] [--steps 2]
        [--budget-gb 24] [--json benchmarks/results/large_catalogue.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FEATURE_DIM, BATCH, MAX_LEN = 384, 32, 50


def worker(cfg: dict) -> dict:
    import numpy as np
    import torch

    from fmrl_sdk.model import FMRLRec, ModelConfig
    from fmrl_sdk.train.loss import NegativeSampler, Objective

    torch.manual_seed(0)
    n, sizes = cfg["items"], tuple(cfg["sizes"])
    features = torch.randn(n + 1, FEATURE_DIM)
    features /= features.norm(dim=1, keepdim=True)
    features[0] = 0
    model = FMRLRec(ModelConfig(num_items=n, sizes=sizes, feature_dim=FEATURE_DIM, item_embedding="content",
                                dropout=0.1, lru_dropout=0.1), features)
    del features
    rng = np.random.default_rng(0)
    popularity = 1.0 / np.arange(1, n + 1)  # Zipf: a few popular items, a long tail
    popularity /= popularity.sum()
    sequences = torch.from_numpy(rng.choice(n, size=(BATCH, MAX_LEN + 1), p=popularity) + 1)
    counts = torch.from_numpy(np.bincount(sequences.flatten().numpy() - 1, minlength=n))
    sampler = NegativeSampler(n, cfg.get("sampler", "popularity"), counts)
    objective = Objective(model, sizes, loss=cfg["loss"], item_chunk=cfg.get("item_chunk", 8192),
                          num_negatives=cfg.get("num_negatives", 1000), sampler=sampler)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = sequences[:, :-1].contiguous(), sequences[:, 1:].contiguous()
    setup_kb = _rss_kb()
    times, losses = [], []
    for _ in range(cfg["steps"] + 1):  # the first step warms up allocators and kernels
        started = time.perf_counter()
        loss = objective(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - started)
        losses.append(loss.item())
    return {"setup_gb": setup_kb / 2**20, "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "step_seconds": times[1:], "first_step_seconds": times[0], "loss_values": losses,
            "threads": torch.get_num_threads()}


def _rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def run(cfg: dict) -> dict:
    """One configuration in a fresh interpreter (its own peak memory)."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(cfg)], capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        return {**cfg, "error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
    return {**cfg, **json.loads(proc.stdout.strip().splitlines()[-1]), "wall_seconds": time.perf_counter() - started}


def full_softmax_gb(items: int, d: int) -> float:
    """Features + item table and its gradient + 3 [targets x items] buffers, float32, plus 0.5 GB."""
    return (items * (FEATURE_DIM + 2 * d) + 3 * BATCH * MAX_LEN * items) * 4 / 2**30 + 0.5


def available_gb() -> float:
    with open("/proc/meminfo") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["MemAvailable"].split()[0]) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--sizes", default="64,128,256")
    ap.add_argument("--steps", type=int, default=2, help="timed steps per configuration (after one warm-up)")
    ap.add_argument("--quick", action="store_true", help="100,000 items, 1 timed step")
    ap.add_argument("--budget-gb", type=float, default=24.0, help="run the full softmax only if it fits")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "large_catalogue.json")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    items = 100_000 if args.quick else args.items
    steps = 1 if args.quick else args.steps
    sizes = [int(s) for s in args.sizes.split(",")]
    base = {"sizes": sizes, "steps": steps}
    configs = [{"loss": "sampled", "items": items, "num_negatives": 1000, **base},
               {"loss": "sampled", "items": items, "num_negatives": 8192, **base},
               {"loss": "chunked", "items": items, "item_chunk": 8192, **base}]
    small = max(10_000, items // 10)  # the full softmax where it fits, next to chunked, for scale
    configs += [{"loss": "full", "items": small, **base}, {"loss": "chunked", "items": small, "item_chunk": 8192, **base}]
    skipped = []
    need, limit = full_softmax_gb(items, sizes[-1]), min(args.budget_gb, available_gb() - 1)
    if need <= limit:
        configs.append({"loss": "full", "items": items, **base})
    else:
        skipped.append({"loss": "full", "items": items, "estimated_gb": round(need, 1),
                        "reason": f"needs about {need:.1f} GB (3 score buffers of {BATCH * MAX_LEN} targets x "
                                  f"{items:,} items alone: {3 * BATCH * MAX_LEN * items * 4 / 2**30:.1f} GB), over "
                                  f"{limit:.1f} GB (min of --budget-gb and the memory available now, less 1 GB)"})
    load_before = os.getloadavg()
    results = []
    for cfg in configs:
        print(f"running {cfg} ...", flush=True)
        results.append(run(cfg))
        print(f"  -> {results[-1]}", flush=True)
    print(f"\n{'loss':8} {'items':>10} {'negatives/chunk':>16} {'setup GB':>9} {'peak GB':>8} "
          f"{'step-setup GB':>14} {'s/step (min)':>12}")
    for r in results:
        knob = r.get("num_negatives", r.get("item_chunk", "-"))
        if "error" in r:
            print(f"{r['loss']:8} {r['items']:>10,} {knob:>16} error: {r['error']}")
            continue
        step = min(r["step_seconds"])
        print(f"{r['loss']:8} {r['items']:>10,} {knob:>16} {r['setup_gb']:>9.2f} {r['peak_gb']:>8.2f} "
              f"{r['peak_gb'] - r['setup_gb']:>14.2f} {step:>12.2f}")
    for s in skipped:
        print(f"{s['loss']:8} {s['items']:>10,} {'-':>16} not run: {s['reason']}")
    report = {"date": date.today().isoformat(), "machine": {"platform": platform.platform(),
              "cpus": os.cpu_count(), "load_average_before": load_before, "load_average_after": os.getloadavg()},
              "setup": {"feature_dim": FEATURE_DIM, "item_embedding": "content", "batch": BATCH, "max_len": MAX_LEN,
                        "targets_per_step": BATCH * MAX_LEN, "sizes": sizes,
                        "step": "forward + loss + backward + AdamW; table: fastest timed step after one warm-up (shared, loaded CPU)",
                        "memory": "ru_maxrss of a fresh process per configuration; setup = RSS before the first step"},
              "results": results, "not_run": skipped}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten {args.json}")


if __name__ == "__main__":
    main()
