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

Training at scale (--train-rows, none by default), on the Parquet log of each size given:

    python benchmarks/data_scale.py --rows "" --train-rows 5e6 --json benchmarks/results/data_scale.json --update
    python benchmarks/data_scale.py --rows "" --train-rows 5e7 --train-steps 200 --eval sample ...

  train   in a fresh subprocess: the log loaded by trainer.prepare (load_dataset, leave-one-out, min_count 5,
          and the model config: item_embedding "id", sizes 8..64), then ONE epoch of sampled-softmax training
          (1000 shared negatives, popularity proposal, batch 256, max_len 50) through the trainer's own pieces
          (distributed.shard's Windows, steps_per_epoch, make_objective, make_optimizer, epoch_batches,
          shard_batch, train_step): load, setup and epoch seconds, steps, peak RSS (VmHWM). --train-steps N
          stops after N steps and reports the epoch extrapolated from the measured steps/s (labelled so).
  eval    in another fresh subprocess, with the trained weights: validation on a sample of --val-users users
          drawn as [train] val_users draws it (trainer.validation_sample, scored by distributed.evaluate_on as
          the trainer does), then (--eval all) evaluate(model, dataset, "val") over every user; seconds and
          peak RSS after each.
  paired  (run by hand: `data_scale.py --measure paired PARQUET --model ROUNDS,STEPS,USERS`) alternates, in one
          process, STEPS training steps and validation over USERS sampled users, ROUNDS times: each round's
          projected full-pass / epoch ratio, which load from elsewhere hits alike (see measure_paired).
Target (issue 31): on the 5M-row log one validation pass costs no more than one sampled training epoch.
--update merges into an existing --json (entries for other sizes are kept).
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


def run_once(what: str, path: Path, extra: list[str] | None = None) -> dict:
    """`measure` in a fresh Python process, plus that child's own peak RSS (MiB: VmHWM, else os.wait4's)."""
    proc = subprocess.Popen([sys.executable, __file__, "--measure", what, str(path), *(extra or [])],
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
# One sampled training epoch and validation passes at scale (`--train-rows`; each in a fresh subprocess:
# `data_scale.py --measure train|eval PATH ...`)

VAL_USERS = 20_000


def train_recipe(path: Path):
    """The recipe the training measurement runs: the Parquet log, leave-one-out, min_count 5, max_len 50; id
    item embeddings, sizes 8..64; sampled softmax (1000 shared negatives, popularity proposal), batch 256."""
    from fmrl_sdk.train.recipe import Recipe

    return Recipe.from_dict({"data": {"path": str(path), "min_count": MIN_COUNT, "max_len": 50},
                             "model": {"item_embedding": "id", "sizes": [8, 16, 32, 64]},
                             "train": {"loss": "sampled", "num_negatives": 1000, "negative_sampler": "popularity",
                                       "batch_size": 256}}, source="data_scale.py")


def _rss_mib() -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def measure_train(path: Path, max_steps: int, model_out: Path | None) -> dict:
    """Load the log as `prepare` does, then one epoch (or its first `max_steps` steps) through the trainer's
    own pieces, as `train` runs them in one CPU process: shard (Windows), steps_per_epoch, make_objective,
    make_optimizer, epoch_batches, shard_batch, train_step."""
    sys.path.insert(0, str(ROOT))
    import torch

    from fmrl_sdk.train import distributed
    from fmrl_sdk.train.trainer import epoch_batches, initial_model, make_objective, make_optimizer, prepare, \
        train_step

    recipe = train_recipe(path)
    t = recipe.train
    dist = distributed.Dist()
    torch.set_num_threads(t.threads or max(1, (os.cpu_count() or 1) // dist.local_world))
    t0, cpu0 = time.perf_counter(), _cpu()
    prep = prepare(recipe)                                   # load_dataset + the model config
    load_s = time.perf_counter() - t0
    out: dict = {"load_s": round(load_s, 2), "rss_after_load_mib": _rss_mib(), "hwm_after_load_mib": _vm_hwm_mib(),
                 "stats": prep.dataset.stats(), "threads": torch.get_num_threads()}
    t1 = time.perf_counter()
    rng = np.random.default_rng(t.seed)
    model, _ = initial_model(prep, dist.device)
    dataset, windows = distributed.shard(prep.dataset, recipe.data.max_len, recipe.data.stride, dist)
    steps = distributed.steps_per_epoch(windows.rows, t.batch_size, dist)
    objective = make_objective(model, t, windows).to(dist.device)
    optimizer, scheduler = make_optimizer(model, t, steps)
    step_fn = distributed.wrap(objective, dist)
    objective.train()
    out.update(setup_s=round(time.perf_counter() - t1, 2), rows=windows.rows, steps_per_epoch=steps,
               windows_mib=round(windows.nbytes / 2**20, 1), parameters=model.num_params()["total"])
    t2, cpu2 = time.perf_counter(), _cpu()
    batches = epoch_batches(rng, windows.lengths, t.batch_size, steps, t.length_buckets)
    run = batches if not max_steps else batches[:max_steps]
    running, report_every = 0.0, max(1, len(run) // 20)
    for step, rows in enumerate(run):
        x, y, scale = distributed.shard_batch(windows, rows, dist)
        running += train_step(step_fn, optimizer, scheduler, x, y, scale, t.grad_clip)
        if (step + 1) % report_every == 0:
            el = time.perf_counter() - t2
            print(f"  step {step + 1}/{len(run)} ({steps} in the epoch): {el:.0f} s, {(step + 1) / el:.2f} steps/s, "
                  f"loss {running / (step + 1):.4f}, RSS {_rss_mib()} MiB, peak {_vm_hwm_mib()} MiB",
                  file=sys.stderr, flush=True)
    train_s = time.perf_counter() - t2
    out.update(steps_run=len(run), full_epoch=len(run) == steps, train_s=round(train_s, 2),
               train_cpu_s=round(_cpu() - cpu2, 2),
               steps_per_s=round(len(run) / train_s, 3), loss=round(running / max(1, len(run)), 4),
               cpu_s=round(_cpu() - cpu0, 2))
    # one epoch's seconds: measured, or (a fixed number of steps) extrapolated from the measured steps/s
    out["epoch_s"] = round(train_s, 2) if len(run) == steps else None
    out["epoch_s_extrapolated"] = None if len(run) == steps else round(steps * train_s / len(run), 1)
    if model_out:
        torch.save(model.state_dict(), model_out)
    out["vm_hwm_mib"] = _vm_hwm_mib()
    return out


def measure_eval(path: Path, model_in: Path | None, which: str, val_users: int) -> dict:
    """Load the log and the model (the trained weights where given), then validation: first a sample of
    `val_users` users drawn as `[train] val_users` draws it (trainer.validation_sample, scored as the trainer
    scores it: distributed.evaluate_on), then (which = 'all') `evaluate(model, dataset, 'val', ...)` over
    every user. Peak RSS is read after each."""
    sys.path.insert(0, str(ROOT))
    import torch

    from fmrl_sdk.train import distributed
    from fmrl_sdk.train.evaluate import evaluate
    from fmrl_sdk.train.trainer import initial_model, prepare, validation_sample

    recipe = train_recipe(path)
    t = recipe.train
    dist = distributed.Dist()
    torch.set_num_threads(t.threads or max(1, (os.cpu_count() or 1) // dist.local_world))
    t0 = time.perf_counter()
    prep = prepare(recipe)
    out: dict = {"load_s": round(time.perf_counter() - t0, 2), "hwm_after_load_mib": _vm_hwm_mib()}
    model, _ = initial_model(prep, dist.device)
    if model_in and model_in.exists():
        model.load_state_dict(torch.load(model_in))
        out["weights"] = "after the measured training steps"
    else:
        out["weights"] = "initial (seeded)"
    dataset, max_len, bs = prep.dataset, recipe.data.max_len, t.eval_batch_size
    if val_users:
        t1, cpu1 = time.perf_counter(), _cpu()
        sample = validation_sample(dataset, val_users, t.seed)
        val = distributed.evaluate_on(model, dataset, "val", max_len, bs, dist, users=sample)
        out["sample"] = {"users": dataset.num_users if sample is None else len(sample),
                         "seconds": round(time.perf_counter() - t1, 2), "cpu_s": round(_cpu() - cpu1, 2),
                         "vm_hwm_mib": _vm_hwm_mib(),
                         "NDCG@10": {str(k): round(v["NDCG@10"], 5) for k, v in val.items()}}
        print(f"  sample of {out['sample']['users']:,} users: {out['sample']['seconds']} s", file=sys.stderr,
              flush=True)
    if which == "all":
        t1, cpu1 = time.perf_counter(), _cpu()
        val = evaluate(model, dataset, "val", max_len, bs)
        out["all"] = {"users": dataset.num_users, "seconds": round(time.perf_counter() - t1, 2),
                      "cpu_s": round(_cpu() - cpu1, 2),
                      "vm_hwm_mib": _vm_hwm_mib(),
                      "NDCG@10": {str(k): round(v["NDCG@10"], 5) for k, v in val.items()}}
        print(f"  all {dataset.num_users:,} users: {out['all']['seconds']} s", file=sys.stderr, flush=True)
    out["vm_hwm_mib"] = _vm_hwm_mib()
    return out


def measure_paired(path: Path, rounds: int, steps: int, users: int) -> dict:
    """The epoch-to-validation ratio measured so that load from elsewhere hits both alike: in one process,
    `rounds` rounds of `steps` training steps (the trainer's pieces, as measure_train) then one validation
    pass over `users` users (a fresh validation_sample per round, distributed.evaluate_on); each round's
    projected epoch (steps_per_epoch x seconds per step) and projected full pass (users with a validation
    target / users x seconds), and their ratio. Wall and CPU seconds."""
    sys.path.insert(0, str(ROOT))
    import torch

    from fmrl_sdk.train import distributed
    from fmrl_sdk.train.trainer import epoch_batches, initial_model, make_objective, make_optimizer, prepare, \
        train_step, validation_sample

    recipe = train_recipe(path)
    t = recipe.train
    dist = distributed.Dist()
    torch.set_num_threads(t.threads or max(1, (os.cpu_count() or 1) // dist.local_world))
    prep = prepare(recipe)
    rng = np.random.default_rng(t.seed)
    model, _ = initial_model(prep, dist.device)
    dataset, windows = distributed.shard(prep.dataset, recipe.data.max_len, recipe.data.stride, dist)
    per_epoch = distributed.steps_per_epoch(windows.rows, t.batch_size, dist)
    objective = make_objective(model, t, windows).to(dist.device)
    optimizer, scheduler = make_optimizer(model, t, per_epoch)
    def endless():   # epochs of batches, one after another
        while True:
            yield from epoch_batches(rng, windows.lengths, t.batch_size, per_epoch, t.length_buckets)

    batches = endless()
    eligible = sum(len(p) > 0 for p in dataset.target_positions("val"))
    out: dict = {"steps_per_epoch": per_epoch, "val_users_all": int(eligible), "rounds": []}
    for r in range(rounds):
        objective.train()
        w0, c0 = time.perf_counter(), _cpu()
        for _ in range(steps):
            x, y, scale = distributed.shard_batch(windows, next(batches), dist)
            train_step(objective, optimizer, scheduler, x, y, scale, t.grad_clip)
        w1, c1 = time.perf_counter(), _cpu()
        sample = validation_sample(dataset, users, t.seed + 1 + r)
        distributed.evaluate_on(model, dataset, "val", recipe.data.max_len, t.eval_batch_size, dist, users=sample)
        w2, c2 = time.perf_counter(), _cpu()
        scored = eligible if sample is None else len(sample)
        epoch_w, epoch_c = per_epoch * (w1 - w0) / steps, per_epoch * (c1 - c0) / steps
        val_w, val_c = eligible * (w2 - w1) / scored, eligible * (c2 - c1) / scored
        rec = {"load": _load(), "train_wall_s": round(w1 - w0, 2), "train_cpu_s": round(c1 - c0, 2),
               "val_wall_s": round(w2 - w1, 2), "val_cpu_s": round(c2 - c1, 2),
               "epoch_wall_s_projected": round(epoch_w, 1), "val_all_wall_s_projected": round(val_w, 1),
               "val_all_x_epoch_wall": round(val_w / epoch_w, 3), "val_all_x_epoch_cpu": round(val_c / epoch_c, 3),
               "val_20k_x_epoch_wall": round(min(VAL_USERS, eligible) / scored * (w2 - w1) / epoch_w, 4)}
        out["rounds"].append(rec)
        print(f"  round {r + 1}: {rec}", file=sys.stderr, flush=True)
    for key in ("val_all_x_epoch_wall", "val_all_x_epoch_cpu", "val_20k_x_epoch_wall"):
        out[f"{key}_median"] = round(float(np.median([rec[key] for rec in out["rounds"]])), 3)
    out["vm_hwm_mib"] = _vm_hwm_mib()
    return out


def train_scale(rows: int, directory: Path, max_steps: int, evaluate_which: str, val_users: int) -> dict:
    """The training epoch, then the validation passes, each in a fresh subprocess, on rows-{rows}.parquet."""
    subprocess.run([sys.executable, __file__, "--generate", str(rows), str(directory)], check=True, cwd=ROOT)
    pq_path = directory / f"rows-{rows}.parquet"
    model_path = directory / f"model-{rows}.pt"
    entry: dict = {"rows": rows, "parquet_mib": round(pq_path.stat().st_size / 2**20, 1),
                   "recipe": train_recipe(pq_path).to_dict(), "load_before": _load()}
    entry["recipe"]["data"]["path"] = pq_path.name
    print(f"training epoch on {pq_path} ({entry['parquet_mib']} MiB), load {_load()}", flush=True)
    entry["train"] = run_once("train", pq_path, ["--train-steps", str(max_steps), "--model", str(model_path)])
    entry["load_after_train"] = _load()
    print(json.dumps(entry["train"]), flush=True)
    if evaluate_which != "none":
        print(f"validation passes, load {_load()}", flush=True)
        entry["eval"] = run_once("eval", pq_path, ["--model", str(model_path), "--eval", evaluate_which,
                                                   "--val-users", str(val_users)])
        entry["load_after_eval"] = _load()
        print(json.dumps(entry["eval"]), flush=True)
    model_path.unlink(missing_ok=True)
    tr, ev = entry["train"], entry.get("eval", {})
    epoch = tr.get("epoch_s") or tr.get("epoch_s_extrapolated")
    targets: dict = {"epoch_s": epoch, "epoch_extrapolated": tr.get("epoch_s") is None}
    for name in ("all", "sample"):
        if epoch and name in ev:
            targets[f"val_{name}_s"] = ev[name]["seconds"]
            targets[f"val_{name}_within_one_epoch"] = ev[name]["seconds"] <= epoch
            targets[f"val_{name}_x_epoch"] = round(ev[name]["seconds"] / epoch, 3)
    targets["train_completed_without_oom"] = "error" not in tr
    targets["train_peak_rss_mib"] = tr.get("peak_rss_mib")
    entry["targets"] = targets
    print(f"targets: {targets}", flush=True)
    return entry


def _merge(old: dict, new: dict) -> dict:
    """`old` with `new`'s entries (sizes, training) replacing those of the same row count; each run's machine
    record is kept under runs_machine."""
    out = dict(old)
    for key in ("sizes", "training"):
        measured = {e["rows"] for e in new.get(key, [])}
        out[key] = sorted([e for e in old.get(key, []) if e["rows"] not in measured] + new.get(key, []),
                          key=lambda e: e["rows"])
    out.setdefault("runs_machine", [old.get("machine")])
    out["runs_machine"].append(new["machine"])
    out["versions"] = {**old.get("versions", {}), **new.get("versions", {})}
    return out


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


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
    parser.add_argument("--train-rows", default="",
                        help="comma-separated sizes for one sampled training epoch and validation passes on the "
                             "Parquet log (e.g. 5e6); none by default")
    parser.add_argument("--train-steps", type=int, default=0,
                        help="stop the training epoch after this many steps and extrapolate the epoch from the "
                             "measured steps/s (0: the whole epoch)")
    parser.add_argument("--eval", default="all", choices=("all", "sample", "none"),
                        help="validation passes after the training epoch: the --val-users sample and every user "
                             "(all), the sample only, or none")
    parser.add_argument("--val-users", type=int, default=VAL_USERS,
                        help="users in the sampled validation pass ([train] val_users)")
    parser.add_argument("--update", action="store_true",
                        help="merge into an existing --json: entries for sizes not measured now are kept")
    parser.add_argument("--model", default="", help=argparse.SUPPRESS)
    parser.add_argument("--measure", nargs=2, metavar=("WHAT", "PATH"), help=argparse.SUPPRESS)
    parser.add_argument("--generate", nargs=2, metavar=("ROWS", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        generate(int(args.generate[0]), Path(args.generate[1]))
        return
    if args.measure:
        what, path = args.measure[0], Path(args.measure[1])
        model = Path(args.model) if args.model else None
        if what == "train":
            print(json.dumps(measure_train(path, args.train_steps, model)))
        elif what == "paired":   # PATH ROUNDS,STEPS,USERS via --model (internal)
            rounds, steps, users = (int(v) for v in args.model.split(","))
            print(json.dumps(measure_paired(path, rounds, steps, users)))
        elif what == "eval":
            print(json.dumps(measure_eval(path, model, args.eval, args.val_users)))
        else:
            print(json.dumps(measure(what, path)))
        return
    skip = {s for s in args.skip.split(",") if s}
    sizes = [int(float(s)) for s in args.rows.split(",") if s]
    train_sizes = [int(float(s)) for s in args.train_rows.split(",") if s]
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
    if train_sizes:
        results["training"] = []
        results["versions"]["torch"] = __import__("torch").__version__
    for rows in train_sizes:
        results["training"].append(train_scale(rows, Path(args.dir), args.train_steps, args.eval, args.val_users))
    results["machine"]["load_after"] = [round(x, 2) for x in os.getloadavg()]
    print(f"load after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        if args.update and Path(args.json).exists():
            results = _merge(json.loads(Path(args.json).read_text()), results)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
