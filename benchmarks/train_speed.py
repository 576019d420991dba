"""The whole training step: the SDK's against the straightforward (reference) formulation.

One step = item table + model forward + loss + backward + grad-norm clip + AdamW, dropout on (0.6), on the
same real Beauty batches (32 random users, max_len 50, 12,101 items, sizes 8..256, 1 block, content model over
the MiniLM features in features/beauty-minilm, or random unit vectors of the same shape when that folder is
absent). Methods:

  straightforward  the reference's formulation: every batch padded to 50, hidden states at every position,
                   one [B, L, N] product and autograd cross-entropy per size
  sdk full         what `fmrl-sdk train` runs with loss = "full": batch trimmed, hidden states only where a
                   target is, fused nested cross-entropy (hand-written backward over reused [T, N] buffers)
  sdk sampled      loss = "sampled": only the item rows the batch touches, 1,000 shared popularity negatives

Also one epoch of each SDK step over length-bucketed batches (what recipes with length_buckets run). Prints a
table and writes JSON (speedup = straightforward / method, per step).

    python benchmarks/train_speed.py [--quick] [--json benchmarks/results/train_speed.json]
"""

from __future__ import annotations

import argparse
import copy
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
from fmrl_sdk.model import FMRLRec, ModelConfig
from fmrl_sdk.train.evaluate import trim_left_padding
from fmrl_sdk.train.loss import NegativeSampler, Objective
from fmrl_sdk.train.run import load_item_features
from fmrl_sdk.train.trainer import epoch_batches
from reference_loss import reference_cross_entropy  # benchmarks/ (run as python benchmarks/train_speed.py)

REPO_ROOT = Path(__file__).resolve().parent.parent  # the checkout

BEAUTY = REPO_ROOT.parent / "shared" / "data" / "amazon-beauty"
FEATURES = REPO_ROOT / "features" / "beauty-minilm"
SIZES = (8, 16, 32, 64, 128, 256)


def straightforward_loss(model):
    """The reference formulation as a callable (x, y) -> loss over `model`."""
    def loss(x, y):
        table = model.item_table()
        return reference_cross_entropy(model(x, table), y, table, SIZES)
    return loss


def timed_steps(loss_fn, model, batches) -> tuple[list[float], dict[str, float]]:
    """Seconds per whole step, and the share of forward+loss / backward / clip+AdamW over all steps.
    loss_fn(x, y) is built once over `model` (the trainer's Objective keeps its buffers across steps)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    times, parts = [], np.zeros(3)
    for x, y in batches:
        t0 = time.perf_counter()
        loss = loss_fn(x, y)
        t1 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        t3 = time.perf_counter()
        times.append(t3 - t0)
        parts += (t1 - t0, t2 - t1, t3 - t2)
    share = parts / parts.sum()
    return times, {"forward_loss": share[0], "backward": share[1], "optimizer": share[2]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="4 timed batches per method, no epoch timing")
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--json", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "train_speed.json")
    args = ap.parse_args()
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    n_batches = 4 if args.quick else args.batches

    data = load_dataset(BEAUTY if BEAUTY.exists() else "demo")
    if FEATURES.exists() and BEAUTY.exists():
        features, feature_source = load_item_features(FEATURES, data.item_ids), str(FEATURES)
    else:
        features = torch.nn.functional.normalize(torch.randn(12101 + 1, 384), dim=1)
        features[0], feature_source = 0, "random unit vectors (features/beauty-minilm not found)"
    num_items = features.shape[0] - 1
    inputs, targets = training_arrays(data, 50)
    rng = np.random.default_rng(0)
    rows = [rng.choice(len(inputs), 32, replace=False) for _ in range(n_batches + 1)]
    padded = [tuple(torch.from_numpy(a) for a in (inputs[r], targets[r])) for r in rows]  # full length 50
    trimmed = [tuple(torch.from_numpy(a) for a in trim_left_padding(inputs[r], targets[r])) for r in rows]

    cfg = ModelConfig(num_items=num_items, sizes=SIZES, item_embedding="content", feature_dim=features.shape[1],
                      dropout=0.6, lru_dropout=0.6)
    torch.manual_seed(0)
    base = FMRLRec(cfg, features)
    counts = torch.from_numpy(np.bincount(targets[targets > 0] - 1, minlength=num_items))
    sampler = NegativeSampler(num_items, "popularity", counts)

    def sdk(loss):
        return lambda model: Objective(model, SIZES, loss=loss, sampler=sampler)

    methods = {"straightforward": (padded, straightforward_loss), "sdk full": (trimmed, sdk("full")),
               "sdk sampled": (trimmed, sdk("sampled"))}
    # the same function of the weights: losses with dropout off on the first batch
    eval_model = copy.deepcopy(base).eval()
    with torch.no_grad():
        reference = straightforward_loss(eval_model)(*padded[0]).item()
        full_diff = abs(sdk("full")(eval_model)(*trimmed[0]).item() - reference) / reference

    results = {}
    for name, (batches, make_loss) in methods.items():
        model = copy.deepcopy(base).train()
        loss_fn = make_loss(model)
        timed_steps(loss_fn, model, batches[:1])  # warm-up
        times, share = timed_steps(loss_fn, model, batches[1:])
        results[name] = {"median_s": statistics.median(times), "share": share}
    straight = results["straightforward"]["median_s"]
    print(f"{'method':18s} {'s/step':>8s} {'speedup':>8s}   forward+loss / backward / clip+AdamW")
    for name, r in results.items():
        r["speedup"] = straight / r["median_s"]
        s = r["share"]
        print(f"{name:18s} {r['median_s']:8.3f} {r['speedup']:8.2f}   "
              f"{s['forward_loss']:.0%} / {s['backward']:.0%} / {s['optimizer']:.0%}")
    print(f"sdk full loss vs straightforward, dropout off: relative difference {full_diff:.1e}")

    epochs = {}
    if not args.quick:  # whole epochs over length-bucketed batches, as the recipes train
        lengths = (targets > 0).sum(1)
        for name, batch_size in (("sdk full", 32), ("sdk sampled", 32), ("sdk sampled", 128)):
            order = epoch_batches(np.random.default_rng(1), lengths, batch_size, len(inputs) // batch_size, 50)
            batches = [tuple(torch.from_numpy(a) for a in trim_left_padding(inputs[r], targets[r])) for r in order]
            started = time.perf_counter()
            model = copy.deepcopy(base).train()
            timed_steps(methods[name][1](model), model, batches)
            seconds = time.perf_counter() - started
            epochs[f"{name}, batch {batch_size}"] = {"seconds": seconds, "steps": len(batches)}
            print(f"one epoch, {name}, batch {batch_size}, length-bucketed: {seconds:.1f} s ({len(batches)} steps)")

    out = {"speedup_full": results["sdk full"]["speedup"], "speedup_sampled": results["sdk sampled"]["speedup"],
           "full_loss_rel_diff": full_diff, "methods": results, "epochs": epochs,
           "setup": {"items": num_items, "max_len": 50, "batch": 32, "sizes": list(SIZES), "dropout": 0.6,
                     "item_embedding": "content", "features": feature_source, "data": str(data.source),
                     "targets_per_batch": statistics.mean(int((y > 0).sum()) for _, y in padded[1:]),
                     "timed_batches": n_batches, "threads": threads},
           "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}",
           "date": date.today().isoformat(), "command": "python benchmarks/train_speed.py" + (" --quick" if args.quick else "")}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(f"whole step: sdk full {out['speedup_full']:.2f}x, sdk sampled {out['speedup_sampled']:.2f}x the "
          f"straightforward step; wrote {args.json}")


if __name__ == "__main__":
    main()
