"""Leave-one-out against time-true evaluation of one recipe on real timestamped data, end to end.

Runs the SDK's own commands (train, eval, export, make-stream, simulate) for a recipe twice: with its
time split and with leave-one-out, then prints a table and writes JSON: offline test figures of both,
the bundle's out-of-sample replay (headline, known / new users, popularity lifts, decay per window),
and the same replay adding new items from the catalogue (--items) when the run uses content.

    python benchmarks/temporal_eval.py --recipe benchmarks/recipes/movielens-time.toml \
        --features features/ml --items ../data/ml-latest-small/items.jsonl --size 64 \
        --work /tmp/temporal --json benchmarks/results/temporal_movielens.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def fmrl(*args: str) -> float:
    """Run `fmrl-sdk ARGS` (this interpreter's), fail loudly; returns seconds."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "fmrl_sdk.cli", *args], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"fmrl-sdk {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", required=True, help="Recipe with [data] split = 'time'.")
    ap.add_argument("--features", required=True, help="Features folder (fmrl-sdk featurize).")
    ap.add_argument("--items", default=None, help="Catalogue for simulate --items (new items).")
    ap.add_argument("--size", type=int, required=True, help="Granularity to export (fp32).")
    ap.add_argument("--window", default="30d", help="simulate --window.")
    ap.add_argument("--work", type=Path, required=True, help="Folder for runs, bundles, streams, reports.")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    seconds, out = {}, {"recipe": args.recipe, "size": args.size, "window": args.window}

    for split in ("time", "leave-one-out"):
        run = work / f"run-{split}"
        if not (run / "metrics.json").exists() or "test" not in json.loads((run / "metrics.json").read_text()):
            seconds[f"train {split}"] = fmrl("train", "--recipe", args.recipe, "--features", args.features,
                                             "--split", split, "--out", str(run))
        metrics = json.loads((run / "metrics.json").read_text())
        config = json.loads((run / "config.json").read_text())
        out[split] = {"test": metrics["test"], "val": metrics["val"], "data": config["data"]["report"].get("split"),
                      "users": config["data"]["users"], "items": config["data"]["items"]}

    run, bundle = work / "run-time", work / "bundle-time"
    stream, report, curve = work / "events.jsonl", work / "report.json", work / "decay.png"
    seconds["export"] = fmrl("export", "--profile", "edge-server", "--run", str(run), "--size", str(args.size),
                             "--out", str(bundle))
    seconds["make-stream"] = fmrl("make-stream", "--run", str(run), "--out", str(stream))
    seconds["simulate"] = fmrl("simulate", "--stream", str(stream), "--bundle", str(bundle), "--report",
                               str(report), "--window", args.window, "--curve", str(curve), "--quiet")
    out["simulate"] = {k: v for k, v in json.loads(report.read_text()).items() if k != "bad_line_samples"}
    if args.items:
        with_items = work / "report-items.json"
        seconds["simulate --items"] = fmrl("simulate", "--stream", str(stream), "--bundle", str(bundle),
                                           "--report", str(with_items), "--window", args.window,
                                           "--items", args.items, "--run", str(run), "--quiet")
        out["simulate_with_items"] = {k: v for k, v in json.loads(with_items.read_text()).items()
                                      if k != "bad_line_samples"}
    out["seconds"] = {k: round(v, 1) for k, v in seconds.items()}

    s = str(args.size)
    print(f"{'figure':58} {'HitRate/Recall@10':>18} {'NDCG@10':>9}")
    for split in ("leave-one-out", "time"):
        t = out[split]["test"][s]
        print(f"{'eval ' + split + ' test (offline, size ' + s + ')':58} {t['Recall@10']:18.4f} {t['NDCG@10']:9.4f}")
    r = out["simulate"]
    rows = [("simulate out-of-sample (headline)", r["headline"]),
            *[(f"  popularity {name}", m) for name, m in r["out_of_sample"]["popularity"].items()],
            *[(f"  {name} users", m) for name, m in r["out_of_sample"]["by_user"].items()],
            ("simulate in-sample (training period)", r["phases"]["in_sample"]),
            ("simulate validation window", r["phases"]["validation"])]
    if "simulate_with_items" in out:
        w = out["simulate_with_items"]
        rows += [("with --items: out-of-sample", w["headline"]),
                 *[(f"  with --items: {name} items", m) for name, m in w["out_of_sample"]["by_item"].items()]]
    for label, m in rows:
        print(f"{label + ' (' + format(m['events'], ',') + ' events)':58} {m['HitRate@10']:18.4f} {m['NDCG@10']:9.4f}")
    print("windows:", ", ".join(f"{w['window']}:{w['HitRate@10']:.3f}/{w['popularity_HitRate@10']:.3f}"
                                for w in r["out_of_sample"]["windows"]))
    print("seconds:", out["seconds"])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
