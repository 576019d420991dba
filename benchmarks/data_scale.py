"""Columnar interaction reader at scale: synthetic logs of 1M/5M/50M rows as CSV and Parquet.

    python benchmarks/data_scale.py --rows 1e6,5e6 --dir /tmp/fmrl-data-scale \
        --json benchmarks/results/data_scale.json

For each size it writes a log (about rows/25 users, rows/100 items with Zipf-like popularity, 1% duplicate
rows, day-resolution timestamps so that ties occur, file ordered by time) as CSV and Parquet, then measures,
each in a fresh subprocess (wall time, CPU time of all its threads, and that process's own peak RSS: VmHWM
from /proc/self/status, the same as os.wait4's ru_maxrss except that it leaves out the parent's pages from before
the exec), in --repeat rounds that interleave the measurements (the fastest run of each is reported, and the
median same-round ratio to the pyarrow reference, which is steadier on a shared machine):

  imports            nothing but the imports (numpy, pyarrow, fmrl_sdk): the floor under the peak RSS
  pyarrow_csv        pyarrow.csv.read_csv on the CSV, default options: the reference
  pyarrow_parquet    pyarrow.parquet.ParquetFile(path).read(): all columns of the Parquet file
  polars_read_csv    polars.read_csv on the CSV, default options (reading only)
  polars_read_parquet  polars.read_parquet on the Parquet file (reading only)
  columnar_csv       fmrl_sdk.data.columnar: read_log + k_core(min_count=5) + sequences on the CSV
  columnar_parquet   the same on the Parquet file
  polars_csv         polars.read_csv + the same encoding / k-core / sequences (numpy) work
  polars_parquet     polars.read_parquet + the same work
  old_reader         fmrl_sdk.data.dataset.read_interactions (the row-by-row reader), up to --old-max rows

and checks that every pipeline produced the same result (a digest of item ids, user ids and sequences).
Targets (issue 31): the 5M-row CSV within 5x pyarrow's own CSV read and peak RSS <= 5x the file size;
the 5M-row Parquet in <= 2 s.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MIN_COUNT = 5


# ----------------------------------------------------------------------------------------------
# Synthetic data


def generate(rows: int, directory: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write rows-{n}.csv and rows-{n}.parquet (user,item,timestamp) into `directory`, unless present."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    directory.mkdir(parents=True, exist_ok=True)
    csv_path, pq_path = directory / f"rows-{rows}.csv", directory / f"rows-{rows}.parquet"
    if csv_path.exists() and pq_path.exists():
        return csv_path, pq_path
    rng = np.random.default_rng(seed)
    n_users, n_items = max(1, rows // 25), max(1, rows // 100)
    n_dup = rows // 100
    base = rows - n_dup
    # users: geometric activity (mean 25 events); items: Zipf-like popularity (exponent 1.1)
    lengths = 1 + rng.geometric(1 / 24, n_users)
    users = np.repeat(np.arange(n_users, dtype=np.int64), lengths)
    if len(users) < base:
        users = np.concatenate([users, rng.integers(0, n_users, base - len(users))])
    users = rng.permutation(users)[:base]
    weights = 1.0 / np.arange(1, n_items + 1) ** 1.1
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    items = rng.permutation(n_items)[np.minimum(np.searchsorted(cdf, rng.random(base)), n_items - 1)]
    # day-resolution timestamps over ~5.5 years: users with 25 events often have two on the same day
    ts = 1_400_000_000 + rng.integers(0, 2000, base) * 86_400
    dup = rng.integers(0, base, n_dup)                              # 1% exact duplicate rows
    users, items, ts = (np.concatenate([a, a[dup]]) for a in (users, items, ts))
    shuffle = rng.permutation(rows)                                 # a log: time order, ties shuffled
    order = shuffle[np.argsort(ts[shuffle], kind="stable")]
    users, items, ts = users[order], items[order], ts[order]
    user_names = pa.array([f"A{k * 7919 % (10 * n_users):07d}" for k in range(n_users)])
    item_names = pa.array([f"B{k * 104729 % (100 * n_items):09d}" for k in range(n_items)])
    table = pa.table({"user": pa.DictionaryArray.from_arrays(pa.array(users.astype(np.int32)), user_names),
                      "item": pa.DictionaryArray.from_arrays(pa.array(items.astype(np.int32)), item_names),
                      "timestamp": pa.array(ts)})
    pq.write_table(table, pq_path.with_suffix(".tmp"))
    os.replace(pq_path.with_suffix(".tmp"), pq_path)
    plain = table.set_column(0, "user", table.column(0).cast(pa.string())) \
                 .set_column(1, "item", table.column(1).cast(pa.string()))
    del table
    with open(csv_path.with_suffix(".tmp"), "wb") as f:
        f.write(b"user,item,timestamp\n")
        pcsv.write_csv(plain, f, pcsv.WriteOptions(include_header=False, quoting_style="none"))
    os.replace(csv_path.with_suffix(".tmp"), csv_path)
    return csv_path, pq_path


# ----------------------------------------------------------------------------------------------
# One measurement (runs in a fresh subprocess: `data_scale.py --measure WHAT PATH`)


def _digest(seq) -> str:
    h = hashlib.sha256()
    h.update("\n".join(seq.item_ids).encode())
    h.update("\n".join(seq.user_ids).encode())
    h.update(np.ascontiguousarray(seq.items, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(seq.offsets, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def _polars_log(path: Path):
    """The columnar Log built with polars instead of pyarrow (for the comparison only: no validation)."""
    import polars as pl

    from fmrl_sdk.data.columnar import Log

    if path.suffix == ".csv":
        df = pl.read_csv(path, columns=["user", "item", "timestamp"],
                         schema_overrides={"user": pl.Utf8, "item": pl.Utf8, "timestamp": pl.Float64})
    else:
        df = pl.read_parquet(path, columns=["user", "item", "timestamp"])
        df = df.with_columns(pl.col("user").cast(pl.Utf8), pl.col("item").cast(pl.Utf8),
                             pl.col("timestamp").cast(pl.Float64))
    out = {}
    for name in ("user", "item"):
        # the sorted distinct ids as an Enum: its physical codes are the codes in sorted-id order (about 3x
        # faster than rank("dense") on strings)
        column = df.get_column(name)
        ids = column.unique().sort()
        codes = column.cast(pl.Enum(ids)).to_physical().to_numpy().astype(np.int32)
        out[name] = (codes, ids.to_list())
    ts = df.get_column("timestamp").to_numpy()
    return Log(source=str(path), user_codes=out["user"][0], item_codes=out["item"][0],
               user_ids=out["user"][1], item_ids=out["item"][1], timestamps=ts,
               raw={"users": len(out["user"][1]), "items": len(out["item"][1]), "interactions": len(df)})


def measure(what: str, path: Path) -> dict:
    """Run one pipeline on `path`; returns its timings (seconds) and a digest of the result."""
    sys.path.insert(0, str(ROOT))
    t0 = time.perf_counter()
    cpu0 = _cpu()
    result: dict = {}
    if what == "pyarrow_csv":
        import pyarrow.csv as pcsv

        t0, cpu0 = time.perf_counter(), _cpu()
        table = pcsv.read_csv(path)
        result["rows"] = table.num_rows
    elif what == "pyarrow_parquet":
        import pyarrow.parquet as pq

        t0, cpu0 = time.perf_counter(), _cpu()
        with pq.ParquetFile(path) as opened:   # (pq.read_table would add 0.3 s: its first call imports pandas)
            table = opened.read()
        result["rows"] = table.num_rows
    elif what in ("polars_read_csv", "polars_read_parquet"):
        import polars as pl

        t0, cpu0 = time.perf_counter(), _cpu()
        frame = pl.read_csv(path) if what == "polars_read_csv" else pl.read_parquet(path)
        result["rows"] = frame.height
    elif what == "imports":   # the floor under the columnar peak RSS: the interpreter with numpy and pyarrow
        import pyarrow.compute  # noqa: F401
        import pyarrow.csv  # noqa: F401
        import pyarrow.parquet  # noqa: F401

        from fmrl_sdk.data import columnar  # noqa: F401
        t0, cpu0 = time.perf_counter(), _cpu()
    elif what in ("columnar_csv", "columnar_parquet", "polars_csv", "polars_parquet"):
        # imports happen before the clock starts, as for the pyarrow references
        import pyarrow.compute  # noqa: F401
        import pyarrow.csv  # noqa: F401
        import pyarrow.json  # noqa: F401
        import pyarrow.parquet  # noqa: F401

        from fmrl_sdk.data import columnar

        if what.startswith("polars"):
            import polars  # noqa: F401
        t0, cpu0 = time.perf_counter(), _cpu()
        log = _polars_log(path) if what.startswith("polars") else columnar.read_log(path)
        t1 = time.perf_counter()
        kept, report = columnar.k_core(log, MIN_COUNT)
        t2 = time.perf_counter()
        seq = columnar.sequences(log, kept)
        t3 = time.perf_counter()
        result.update(wall_s=round(t3 - t0, 3), cpu_s=round(_cpu() - cpu0, 3), read_s=round(t1 - t0, 3),
                      k_core_s=round(t2 - t1, 3), sequences_s=round(t3 - t2, 3),
                      k_core_rounds=report["rounds"], users=len(seq.user_ids), items=len(seq.item_ids),
                      events=int(len(seq.items)), digest=_digest(seq))
    elif what == "old_reader":
        from fmrl_sdk.data import dataset

        from fmrl_sdk.data.columnar import Sequences

        t0, cpu0 = time.perf_counter(), _cpu()
        ds = dataset.read_interactions(path, min_count=MIN_COUNT)
        result.update(wall_s=round(time.perf_counter() - t0, 3), cpu_s=round(_cpu() - cpu0, 3))
        flat = np.concatenate(ds.sequences)
        offsets = np.concatenate([[0], np.cumsum([len(s) for s in ds.sequences])])
        result.update(users=len(ds.user_ids), items=len(ds.item_ids), events=int(len(flat)),
                      digest=_digest(Sequences(ds.item_ids, ds.user_ids, flat, offsets, None)))
    else:
        raise SystemExit(f"unknown measurement {what!r}")
    result.setdefault("wall_s", round(time.perf_counter() - t0, 3))   # the digest is not timed
    result.setdefault("cpu_s", round(_cpu() - cpu0, 3))   # CPU time of every thread of the process
    result["vm_hwm_mib"] = _vm_hwm_mib()
    return result


def _vm_hwm_mib() -> float | None:
    """This process's peak RSS since its exec (VmHWM). getrusage's ru_maxrss of a child also counts the parent's
    memory from before the exec (fork/vfork share it), so a large parent would raise every child's figure."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def _cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_once(what: str, path: Path) -> dict:
    """`measure` in a fresh Python process, plus that child's own peak RSS (MiB: VmHWM, else os.wait4's)."""
    proc = subprocess.Popen([sys.executable, __file__, "--measure", what, str(path)],
                            stdout=subprocess.PIPE, cwd=ROOT)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        return {"error": f"exit code {proc.returncode}"}
    result = json.loads(out.decode().strip().splitlines()[-1])
    result["ru_maxrss_mib"] = round(usage.ru_maxrss / 1024, 1)
    result["peak_rss_mib"] = result.pop("vm_hwm_mib") or result["ru_maxrss_mib"]
    return result


def summarize(runs: list[dict]) -> dict:
    """The fastest run (its stage times and peak RSS), every run's wall and CPU time, the largest peak RSS."""
    ok = [r for r in runs if "wall_s" in r]
    if not ok:
        return runs[0]
    best = dict(min(ok, key=lambda r: r["wall_s"]))
    best["wall_s_all"] = [r["wall_s"] for r in ok]
    best["cpu_s_all"] = [r["cpu_s"] for r in ok]
    best["peak_rss_mib_max"] = max(r["peak_rss_mib"] for r in ok)
    return best


def _versions() -> dict:
    import platform

    import pyarrow

    out = {"python": platform.python_version(), "numpy": np.__version__, "pyarrow": pyarrow.__version__}
    try:
        import polars

        out["polars"] = polars.__version__
    except ImportError:
        out["polars"] = None
    return out


# ----------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1e6,5e6", help="comma-separated sizes, e.g. 1e6,5e6,5e7")
    parser.add_argument("--dir", default="/tmp/fmrl-data-scale", help="where the synthetic files go")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--old-max", type=float, default=1e6, help="run the old reader up to this many rows")
    parser.add_argument("--repeat", type=int, default=3,
                        help="rounds of every measurement (the fastest run is reported, and the median same-round "
                             "ratio to the pyarrow reference)")
    parser.add_argument("--skip", default="", help="comma-separated measurements to leave out")
    parser.add_argument("--measure", nargs=2, metavar=("WHAT", "PATH"), help=argparse.SUPPRESS)
    parser.add_argument("--generate", nargs=2, metavar=("ROWS", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        generate(int(args.generate[0]), Path(args.generate[1]))
        return
    if args.measure:
        print(json.dumps(measure(args.measure[0], Path(args.measure[1]))))
        return
    skip = {s for s in args.skip.split(",") if s}
    sizes = [int(float(s)) for s in args.rows.split(",")]
    load = os.getloadavg()
    results = {"machine": {"cpus": os.cpu_count(), "load_before": [round(x, 2) for x in load],
                           "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()},
               "versions": _versions(), "min_count": MIN_COUNT, "repeat": args.repeat, "sizes": []}
    print(f"machine: {os.cpu_count()} CPUs, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    header = f"{'rows':>10} {'measurement':<19} {'wall s':>8} {'cpu s':>7} {'read s':>7} {'kcore s':>7} " \
             f"{'seq s':>7} {'peak MiB':>9} {'x ref':>6} {'paired':>6} {'x file':>6}  digest"
    for rows in sizes:
        t = time.perf_counter()
        # in a child process: the generator's arrays would otherwise sit in this process for every measurement
        subprocess.run([sys.executable, __file__, "--generate", str(rows), args.dir], check=True, cwd=ROOT)
        csv_path, pq_path = Path(args.dir) / f"rows-{rows}.csv", Path(args.dir) / f"rows-{rows}.parquet"
        print(f"data {rows:,} rows: {csv_path.stat().st_size / 2**20:.0f} MiB CSV, "
              f"{pq_path.stat().st_size / 2**20:.0f} MiB Parquet ({time.perf_counter() - t:.1f} s)")
        entry = {"rows": rows, "csv_mib": round(csv_path.stat().st_size / 2**20, 1),
                 "parquet_mib": round(pq_path.stat().st_size / 2**20, 1), "runs": {}}
        plan = [("imports", csv_path), ("pyarrow_csv", csv_path), ("pyarrow_parquet", pq_path),
                ("polars_read_csv", csv_path), ("polars_read_parquet", pq_path), ("columnar_csv", csv_path),
                ("columnar_parquet", pq_path), ("polars_csv", csv_path), ("polars_parquet", pq_path)]
        plan = [(what, path) for what, path in plan if what not in skip]
        # rounds interleave the measurements, so that a burst of load from elsewhere hits all of them alike
        runs: dict[str, list[dict]] = {what: [] for what, _ in plan}
        for _ in range(args.repeat):
            for what, path in plan:
                runs[what].append(run_once(what, path))
        if rows <= args.old_max and "old_reader" not in skip:
            plan.append(("old_reader", csv_path))
            runs["old_reader"] = [run_once("old_reader", csv_path)]   # slow: once
        print(header)
        for what, path in plan:
            r = entry["runs"][what] = summarize(runs[what])
            ref_name = "pyarrow_csv" if path == csv_path else "pyarrow_parquet"
            ref = None if what == "imports" else entry["runs"].get(ref_name, {}).get("wall_s")
            size_mib = path.stat().st_size / 2**20
            r["x_reference"] = round(r["wall_s"] / ref, 2) if ref and "wall_s" in r else None
            if what != "imports" and "wall_s" in r and what != "old_reader":   # same-round ratios to the reference
                pairs = [a["wall_s"] / b["wall_s"] for a, b in zip(runs[what], runs[ref_name])
                         if "wall_s" in a and "wall_s" in b]
                r["x_reference_median_paired"] = round(float(np.median(pairs)), 2) if pairs else None
            r["rss_x_file"] = round(r["peak_rss_mib"] / size_mib, 2) if "peak_rss_mib" in r else None
            fmt = lambda k: f"{r[k]:.3f}" if isinstance(r.get(k), float) else "-"  # noqa: E731
            print(f"{rows:>10,} {what:<19} {fmt('wall_s'):>8} {fmt('cpu_s'):>7} {fmt('read_s'):>7} "
                  f"{fmt('k_core_s'):>7} {fmt('sequences_s'):>7} {r.get('peak_rss_mib', '-'):>9} "
                  f"{r['x_reference'] or '-':>6} {r.get('x_reference_median_paired') or '-':>6} "
                  f"{r['rss_x_file'] or '-':>6}  {r.get('digest', r.get('error', ''))}", flush=True)
        digests = {r["digest"] for r in entry["runs"].values() if "digest" in r}
        entry["results_agree"] = len(digests) == 1
        col = entry["runs"].get("columnar_csv", {})
        ref = entry["runs"].get("pyarrow_csv", {})
        if "wall_s" in col and "wall_s" in ref:
            entry["targets"] = {
                "csv_x_pyarrow": col["x_reference"], "csv_x_pyarrow_median_paired": col["x_reference_median_paired"],
                "csv_within_5x_pyarrow": col["wall_s"] <= 5 * ref["wall_s"],
                "csv_peak_rss_within_5x_file": col["peak_rss_mib"] <= 5 * entry["csv_mib"],
                "parquet_within_2s": entry["runs"].get("columnar_parquet", {}).get("wall_s", 1e9) <= 2.0}
        print(f"results agree: {entry['results_agree']}; targets: {entry.get('targets')}")
        results["sizes"].append(entry)
    results["machine"]["load_after"] = [round(x, 2) for x in os.getloadavg()]
    print(f"load after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
