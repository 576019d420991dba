"""Training-step speed: the fast nested loss against the straightforward formulation.

Beauty-sized batches: 12,101 items, max_len 50, batch 32, d_max 256 (sizes 8..256), real Beauty
training sequences when ../shared/data/amazon-beauty exists (else the packaged demo users, with the
catalogue padded to 12,101 items). Each method runs the same model forward + loss + backward on the
same batches in one process. Prints a table and writes JSON (speedup = straightforward / fast time).

    python benchmarks/train_speed.py [--quick] [--json benchmarks/results/train_speed.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from fmrl_sdk.data import load_dataset
from fmrl_sdk.data.dataset import training_arrays
from fmrl_sdk.fileio import REPO_ROOT
from fmrl_sdk.model import FMRLRec, ModelConfig
from fmrl_sdk.train.evaluate import trim_left_padding
from fmrl_sdk.train.loss import nested_cross_entropy, reference_cross_entropy

BEAUTY = REPO_ROOT.parent / "shared" / "data" / "amazon-beauty"


def step_seconds(model, batches, loss_fn) -> tuple[list[float], list[float]]:
    times, losses = [], []
    for x, y in batches:
        started = time.perf_counter()
        model.zero_grad(set_to_none=True)
        table = model.item_table()
        loss = loss_fn(model(x, table), y, table)
        loss.backward()
        times.append(time.perf_counter() - started)
        losses.append(loss.item())
    return times, losses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 timed batches per method (about a minute)")
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--json", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "train_speed.json")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    n_batches = 3 if args.quick else args.batches

    data = load_dataset(BEAUTY if BEAUTY.exists() else "demo")
    num_items = 12101
    inputs, targets = training_arrays(data, 50)
    rng = np.random.default_rng(0)
    rows = [rng.choice(len(inputs), 32, replace=False) for _ in range(n_batches + 1)]
    batches = [tuple(torch.from_numpy(a) for a in (inputs[r], targets[r])) for r in rows]  # full length 50
    trimmed = [tuple(torch.from_numpy(a) for a in trim_left_padding(inputs[r], targets[r])) for r in rows]

    sizes = (8, 16, 32, 64, 128, 256)
    cfg = ModelConfig(num_items=num_items, sizes=sizes, item_embedding="content", feature_dim=384,
                      dropout=0.0, lru_dropout=0.0)
    features = torch.nn.functional.normalize(torch.randn(num_items + 1, 384), dim=1)
    model = FMRLRec(cfg, features)

    methods = {
        "straightforward": (batches, lambda h, y, e: reference_cross_entropy(h, y, e, sizes)),
        "fast (fused)": (trimmed, lambda h, y, e: nested_cross_entropy(h, y, e, sizes, method="fused")),
        "fast (masked copies)": (trimmed, lambda h, y, e: nested_cross_entropy(h, y, e, sizes, method="masked")),
        "fast (running sum)": (trimmed, lambda h, y, e: nested_cross_entropy(h, y, e, sizes, method="running_sum")),
    }
    results = {}
    for name, (data_batches, fn) in methods.items():
        step_seconds(model, data_batches[:1], fn)  # warm-up
        times, losses = step_seconds(model, data_batches[1:], fn)
        results[name] = {"median_s": statistics.median(times), "losses": losses}
    base = results["straightforward"]
    print(f"{'method':24s} {'s/step':>8s} {'speedup':>8s} {'loss rel diff':>14s}")
    for name, r in results.items():
        r["speedup"] = base["median_s"] / r["median_s"]
        r["loss_rel_diff"] = max(abs(a - b) / abs(b) for a, b in zip(r["losses"], base["losses"]))
        print(f"{name:24s} {r['median_s']:8.3f} {r['speedup']:8.2f} {r['loss_rel_diff']:14.2e}")
    fast = results["fast (fused)"]
    targets_per_batch = statistics.mean(int((y > 0).sum()) for _, y in batches[1:])
    out = {"speedup": fast["speedup"], "loss_rel_diff": fast["loss_rel_diff"],
           "straightforward_s_per_step": base["median_s"], "fast_s_per_step": fast["median_s"],
           "methods": {k: {kk: vv for kk, vv in v.items() if kk != "losses"} for k, v in results.items()},
           "setup": {"items": num_items, "max_len": 50, "batch": 32, "sizes": list(sizes),
                     "targets_per_batch": targets_per_batch, "positions_per_batch": 32 * 50,
                     "data": str(data.source), "timed_batches": n_batches},
           "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}",
           "date": date.today().isoformat(), "command": "python benchmarks/train_speed.py" + (" --quick" if args.quick else "")}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(f"speedup {out['speedup']:.2f}x (target >= 5), loss rel diff {out['loss_rel_diff']:.1e}; wrote {args.json}")


if __name__ == "__main__":
    main()
