"""Warm start against a cold start on the newer data of a time split: wall time to the cold run's best.

Trains OLD on the data before a first cut (if it does not exist yet), then the same recipe on the data
up to a second cut twice, side by side (same load): from random weights (cold; or --cold names an existing
cold run) and `--init-from OLD` (warm). Reports, from each run's history.jsonl, the cold run's best validation score (mean NDCG@10 over
sizes, the recipe's select_on) and the wall time (seconds since training started, at the end of that
epoch's validation) each run needed to reach it, plus both runs' test figures.

    python benchmarks/warm_start.py --recipe benchmarks/recipes/movielens-time.toml --features features-ml \
        --old-test-from 0.7 --test-from 0.8 --work /tmp/warm --json benchmarks/results/warm_start.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def train(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fmrl_sdk.cli", "train", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def wait(proc: subprocess.Popen, what: str) -> None:
    _, err = proc.communicate()
    if proc.returncode:
        sys.exit(f"{what} failed:\n{err[-2000:]}")


def history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


def score(record: dict) -> float:
    values = record["val_NDCG@10"].values()
    return sum(values) / len(values)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", required=True)
    ap.add_argument("--features", required=True)
    ap.add_argument("--old-test-from", required=True, help="OLD's cut (its training ends at its val_from).")
    ap.add_argument("--test-from", required=True, help="The new runs' cut.")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--cold", type=Path, default=None,
                    help="An existing cold run of the same recipe and cut to compare with (training is seeded and "
                         "deterministic: its validation curve is the one a new cold run would give).")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    base = ["--recipe", args.recipe, "--features", args.features]
    old, cold, warm = args.work / "old", args.cold or args.work / "cold", args.work / "warm"
    if not (old / "metrics.json").exists() or "test" not in json.loads((old / "metrics.json").read_text()):
        wait(train([*base, "--test-from", args.old_test_from, "--out", str(old)]), "OLD")
    runs = {} if (warm / "metrics.json").exists() and "test" in json.loads((warm / "metrics.json").read_text()) \
        else {"warm": train([*base, "--test-from", args.test_from, "--init-from", str(old), "--out", str(warm)])}
    if args.cold is None:
        runs["cold"] = train([*base, "--test-from", args.test_from, "--out", str(cold)])
    for name, proc in runs.items():
        wait(proc, name)

    cold_history, warm_history = history(cold), history(warm)
    best = max(score(r) for r in cold_history)
    out = {"recipe": args.recipe, "old_test_from": args.old_test_from, "test_from": args.test_from,
           "cold_run": str(cold),
           "cold_best_val_mean_NDCG@10": best,
           "init_from": json.loads((warm / "config.json").read_text()).get("init_from")}
    for name, records, run in (("cold", cold_history, cold), ("warm", warm_history, warm)):
        reached = next((r for r in records if score(r) >= best), None)
        out[name] = {"epochs": len(records), "best_val": max(score(r) for r in records),
                     "reached_at_epoch": reached and reached["epoch"],
                     "seconds_to_reach": reached and reached["elapsed_seconds"],
                     "train_seconds_to_reach": reached and round(sum(r["train_seconds"] for r in records
                                                                     if r["epoch"] <= reached["epoch"]), 1),
                     "seconds_total": records[-1]["elapsed_seconds"],
                     "test": json.loads((run / "metrics.json").read_text())["test"]}
    c, w = out["cold"], out["warm"]
    out["warm_over_cold_time"] = (w["seconds_to_reach"] / c["seconds_to_reach"]
                                  if w["seconds_to_reach"] is not None else None)
    # the same work per epoch in both runs: under equal load the time ratio is the epoch ratio
    out["warm_over_cold_epochs"] = (w["reached_at_epoch"] / c["reached_at_epoch"]
                                    if w["reached_at_epoch"] is not None else None)
    print(f"cold best validation mean NDCG@10 {best:.4f} (epoch {c['reached_at_epoch']}, {c['seconds_to_reach']} s)")
    if w["seconds_to_reach"] is None:
        print(f"warm never reached it (best {w['best_val']:.4f} in {w['epochs']} epochs, {w['seconds_total']} s)")
    else:
        print(f"warm reached it at epoch {w['reached_at_epoch']}, {w['seconds_to_reach']} s: "
              f"{out['warm_over_cold_time']:.1%} of the cold run's time, {out['warm_over_cold_epochs']:.1%} of its "
              "epochs (target <= 25%; compare times only when both ran under the same load)")
    for name in ("cold", "warm"):
        top = out[name]["test"][max(out[name]["test"], key=int)]
        print(f"{name}: best val {out[name]['best_val']:.4f}, test Recall@10 {top['Recall@10']:.4f} "
              f"NDCG@10 {top['NDCG@10']:.4f} at the largest size, {out[name]['epochs']} epochs")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
