"""Is one run's test metric different from another's beyond chance? Paired differences over the same users.

Every test user gets one rank per run (`train.evaluate.user_ranks`: the protocol of `fmrl-sdk eval`, full
ranking, history not masked), so a metric such as NDCG@10 is a value per user and run. For each run after the
first this prints the mean per-user difference from the first run at one size, with its standard error
std(differences) / sqrt(users) and a 95% interval (normal approximation; users are the sample, so two seeds of
one recipe can still differ by more than this), and for every run its metric with its own standard error and
its distance from the paper's main-table value in standard errors.

    python benchmarks/paired_difference.py --run runs/I256 --run runs/N256 [--run ...] [--size 256] \
        [--json benchmarks/results/paired_difference.json] [--data PATH] [--features DIR]

Runs must share their items; every run is scored on the first run's data (read once); --features applies to
every run.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from beauty_quality import PAPER_MAIN_1024
from fmrl_sdk.errors import FmrlError
from fmrl_sdk.fileio import atomic_write_json
from fmrl_sdk.train.evaluate import rank_metrics, user_ranks
from fmrl_sdk.train.run import load_run, load_run_dataset

METRICS = ("NDCG@10", "Recall@10", "NDCG@5", "Recall@20")


def per_user(loaded, dataset, size: int | None) -> tuple[int, dict[str, np.ndarray]]:
    """(size, {metric: [users] float64}) for one loaded run on `dataset`'s test split at `size` (default:
    its largest)."""
    run = loaded.path
    size = size or loaded.sizes[-1]
    if size not in loaded.sizes:
        raise SystemExit(f"{run}: no size {size} (sizes {loaded.sizes})")
    ranks = user_ranks(loaded.model, dataset, "test", loaded.info.max_len)[size]
    values = rank_metrics(torch.from_numpy(ranks))
    return size, {name: values[name].double().numpy() for name in METRICS}


def mean_and_se(values: np.ndarray) -> tuple[float, float]:
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, action="append", required=True,
                        help="two or more; the first is the baseline")
    parser.add_argument("--size", type=int, default=None, help="granularity (default: each run's largest)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--data", default=None, help="data path, if it moved since training")
    parser.add_argument("--features", type=Path, default=None, help="features folder, if it moved since training")
    args = parser.parse_args()
    if len(args.run) < 2 or len({run.name for run in args.run}) < len(args.run):
        raise SystemExit("give at least two --run, with different folder names")
    torch.set_grad_enabled(False)
    results, dataset = {}, None
    for run in args.run:
        try:
            loaded = load_run(run, args.features)
            if dataset is None:  # read once: every run is scored on the first run's users and targets
                dataset = load_run_dataset(loaded.info, args.data, with_catalogue=False)
        except FmrlError as e:
            raise SystemExit(f"error: {e}") from None
        if loaded.item_ids != dataset.item_ids:
            raise SystemExit(f"{run}: its items differ from {args.run[0]}'s: not the same data")
        size, values = per_user(loaded, dataset, args.size)
        results[run.name] = {"run": str(run), "size": size, "values": values}
    base_name = args.run[0].name
    base = results[base_name]["values"]
    users = dataset.num_users

    report = {"baseline": base_name, "users": users, "split": "test",
              "protocol": "full ranking over all items, history not masked, per-user values; SE = std / sqrt(users)",
              "runs": {}}
    print(f"test users: {users}; baseline {base_name}; mean +- standard error; 95% interval = 1.96 SE")
    print("| run | size | metric | value +- SE | paper | (value - paper) / SE | minus baseline +- SE (paired) "
          "| 95% interval |")
    print("|---|---|---|---|---|---|---|---|")
    for name, result in results.items():
        entry = {"run": result["run"], "size": result["size"], "metrics": {}}
        for metric in METRICS:
            value, se = mean_and_se(result["values"][metric])
            row = {"value": value, "se": se}
            paper = PAPER_MAIN_1024.get(metric)
            if paper is not None:
                row["paper"], row["paper_gap_in_se"] = paper, (value - paper) / se
            cells = ["", ""]
            if name != base_name:
                diff, diff_se = mean_and_se(result["values"][metric] - base[metric])
                row["minus_baseline"], row["minus_baseline_se"] = diff, diff_se
                low, high = row["minus_baseline_95"] = [diff - 1.96 * diff_se, diff + 1.96 * diff_se]
                cells = [f"{diff:+.4f} +- {diff_se:.4f}", f"[{low:+.4f}, {high:+.4f}]"]
            entry["metrics"][metric] = row
            gap = f"{row['paper_gap_in_se']:+.1f}" if paper is not None else ""
            print(f"| {name} | {result['size']} | {metric} | {value:.4f} +- {se:.4f} | {paper or ''} | {gap} | "
                  + " | ".join(cells) + " |")
        report["runs"][name] = entry
    if args.json:
        atomic_write_json(args.json, report)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
