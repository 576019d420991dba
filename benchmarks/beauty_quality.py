"""The quality result on Amazon Beauty: a finished run's test metrics beside the paper's.

Reads a run directory written by `fmrl-sdk train` (config.json, history.jsonl, metrics.json with a test
split), prints per-granularity test metrics next to the paper's per-size Recall@10 and main-table row,
writes benchmarks/results/beauty.json and copies the run's checkpoint, config and history (everything
`fmrl-sdk eval` needs besides the data and features) plus a plot against the paper into --copy-to.

    python benchmarks/beauty_quality.py --run runs/beauty-hybrid-256 \
        --command "fmrl-sdk train --recipe beauty-hybrid --out runs/beauty-hybrid-256" \
        [--json benchmarks/results/beauty.json] [--copy-to benchmarks/results/beauty-256]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
from pathlib import Path

from fmrl_sdk.fileio import REPO_ROOT, atomic_write_json, read_json, read_jsonl_objects
from fmrl_sdk.train.report import plot_metrics

# ../shared/notes/fmrlrec.md: Recall@10 per granularity read off the paper's figure (+-0.003), Beauty,
# d_max = 1024, text + image; and the paper's main-table row for fMRLRec at d = 1024.
PAPER_RECALL10 = {8: .015, 16: .018, 32: .024, 64: .036, 128: .053, 256: .072, 512: .089, 1024: .094}
PAPER_MAIN_1024 = {"NDCG@5": .0415, "Recall@5": .0613, "NDCG@10": .0520, "Recall@10": .0939}
SHOWN = ("NDCG@5", "Recall@5", "NDCG@10", "Recall@10", "MRR@10")
RUN_FILES = ("config.json", "items.json", "model.safetensors", "history.jsonl", "metrics.json")


def summarise(run: Path, command: str) -> dict:
    metrics = read_json(run / "metrics.json")
    if "test" not in metrics:
        raise SystemExit(f"{run / 'metrics.json'}: no test split (run `fmrl-sdk eval --run {run}` first)")
    history = [record for _, record in read_jsonl_objects(run / "history.jsonl")]
    best = max(history, key=lambda r: r["val_NDCG@10"][max(r["val_NDCG@10"], key=int)])
    config = read_json(run / "config.json")
    return {
        **{size: {k: round(v, 6) for k, v in values.items()} for size, values in metrics["test"].items()},
        "command": command,
        "epochs": len(history),
        "best_epoch": best["epoch"],
        "seconds_per_epoch": {"train_median": statistics.median(r["train_seconds"] for r in history),
                              "validation_median": statistics.median(r["eval_seconds"] for r in history)},
        "protocol": "leave-one-out test split, full ranking over all items, history not masked, "
                    "exact per-user means",
        "recipe": config["recipe"],
        "features": Path(config["features"]).name if config.get("features") else None,
        "paper": {"recall@10_per_size": {str(k): v for k, v in PAPER_RECALL10.items()},
                  "main_table_d1024": PAPER_MAIN_1024},
    }


def print_table(result: dict) -> None:
    sizes = sorted((k for k in result if k.isdigit()), key=int)
    print(f"| size | {' | '.join(SHOWN)} | paper R@10 | R@10 - paper |")
    print("|---" * (len(SHOWN) + 3) + "|")
    for size in sizes:
        row = result[size]
        paper = PAPER_RECALL10.get(int(size))
        delta = f"{row['Recall@10'] - paper:+.4f}" if paper else "-"
        print(f"| {size} | " + " | ".join(f"{row[k]:.4f}" for k in SHOWN) + f" | {paper or '-'} | {delta} |")
    print(f"epochs {result['epochs']} (best {result['best_epoch']}), "
          f"median {result['seconds_per_epoch']['train_median']:.0f} s train + "
          f"{result['seconds_per_epoch']['validation_median']:.0f} s validation per epoch")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--command", required=True, help="The command that trained the run (recorded).")
    parser.add_argument("--json", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "beauty.json")
    parser.add_argument("--copy-to", type=Path, default=None, help="Folder for the run's files and plot.")
    args = parser.parse_args()

    result = summarise(args.run, args.command)
    print_table(result)
    atomic_write_json(args.json, result)
    print(f"wrote {args.json}")
    if args.copy_to:
        args.copy_to.mkdir(parents=True, exist_ok=True)
        for name in RUN_FILES:
            shutil.copyfile(args.run / name, args.copy_to / name)
        test = {k: v for k, v in result.items() if k.isdigit()}
        png = plot_metrics(test, args.copy_to / "test_vs_paper.png",
                           "Beauty test, full ranking (history not masked)", reference=PAPER_RECALL10)
        print(f"copied the run to {args.copy_to}" + (f"; plot {png}" if png else ""))


if __name__ == "__main__":
    main()
