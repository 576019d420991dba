"""Issue 29: two writers of one output. A replay holds an exclusive lock on its --state-dir and beside its
--out from start to end (fmrl_replay takes the same --out lock): the second one gets one line
"error: DIR: in use by another simulate (pid N)", exit 2, and writes nothing. Two trainings creating one
run directory: exactly one creates it, the other gets one line naming it. export holds `.NAME.lock` beside
its bundle (both forms) and featurize beside its --out: a second one is refused the same way, and the first
completes unharmed.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from fmrl_sdk.errors import FmrlError
from fmrl_sdk.simulate.commands import simulate
from fmrl_sdk.fileio import exclusive_lock, release_lock
from fmrl_sdk.simulate.replay import LOCK
from tests.helpers import error_line, make_stream, replay

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fmrl_sdk.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_a_replay_on_a_state_dir_in_use_is_refused_and_writes_nothing(rec, dataset, tmp_path):
    stream = tmp_path / "events.jsonl"
    make_stream(stream, dataset, users=20)
    state = tmp_path / "state"
    state.mkdir()
    held = exclusive_lock(state / LOCK, state, "simulate")   # another simulate, as far as the replay can tell
    try:
        with pytest.raises(FmrlError) as e:
            simulate(stream, rec=rec, state_dir=state, resume=True, out=tmp_path / "o.jsonl",
                     report=tmp_path / "r.json", snapshot_every=5)
    finally:
        release_lock(state / LOCK, held)
    assert str(e.value) == f"{state}: in use by another simulate (pid {os.getpid()})"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.jsonl", "state"]
    assert list(state.iterdir()) == []
    # once released, the same command runs, and leaves no lock behind
    simulate(stream, rec=rec, state_dir=state, resume=True, out=tmp_path / "o.jsonl", snapshot_every=5)
    assert sorted(p.name for p in state.iterdir()) == ["snapshot.bin"]
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_replay_writing_an_out_in_use_is_refused(rec, dataset, tmp_path):
    stream = tmp_path / "events.jsonl"
    make_stream(stream, dataset, users=5)
    out = tmp_path / "o.jsonl"
    out.write_text("the other run's\n")
    lock = tmp_path / ".o.jsonl.lock"
    held = exclusive_lock(lock, out, "simulate")
    try:
        with pytest.raises(FmrlError, match=rf"^{out}: in use by another simulate \(pid {os.getpid()}\)$"):
            simulate(stream, rec=rec, out=out)
    finally:
        release_lock(lock, held)
    assert out.read_text() == "the other run's\n" and not (tmp_path / ".o.jsonl.partial").exists()


def test_fmrl_replay_takes_the_same_out_lock(cpp_build, art, rec, dataset, tmp_path):
    stream = tmp_path / "events.jsonl"
    make_stream(stream, dataset, users=5)
    out = tmp_path / "o.jsonl"
    lock = tmp_path / ".o.jsonl.lock"
    held = exclusive_lock(lock, out, "simulate")
    try:
        r = replay(cpp_build, "--bundle", art.bundle, "--stream", stream, "--report", tmp_path / "r.json", "--out", out,
                   check=False)
    finally:
        release_lock(lock, held)
    assert error_line(r) == f"{out}: in use by another simulate (pid {os.getpid()})"
    assert not out.exists() and not (tmp_path / "r.json").exists()
    replay(cpp_build, "--bundle", art.bundle, "--stream", stream, "--report", tmp_path / "r.json", "--out", out)
    assert out.exists() and not lock.exists()


def test_two_simulate_resume_at_once_never_mix(art, dataset, tmp_path):
    """Two CLI processes on one --state-dir and --out: each either completes or is refused with one line;
    the --out file is exactly an uninterrupted run's."""
    stream = tmp_path / "events.jsonl"
    make_stream(stream, dataset, users=300)
    common = ["simulate", "--stream", stream, "--bundle", art.bundle, "--state-dir", tmp_path / "state", "--resume",
              "--out", tmp_path / "o.jsonl", "--snapshot-every", "50", "--quiet"]
    procs = [run_cli(*common, "--report", tmp_path / f"r{i}.json") for i in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    for code, stderr in results:
        assert "Traceback" not in stderr, stderr[-2000:]
        if code != 0:
            assert code == 2 and len(error_lines(stderr)) == 1, stderr[-2000:]
            assert error_lines(stderr)[0].startswith(f"error: {tmp_path / 'state'}: in use by another simulate (pid ")
    assert 0 in [code for code, _ in results]
    lines = [json.loads(line) for line in open(tmp_path / "o.jsonl")]
    assert [line["line"] for line in lines] == sorted({line["line"] for line in lines})  # each event once, in order
    report = json.loads(next(tmp_path.glob("r*.json")).read_text())
    assert len(lines) == report["events"]


def _create(path: str, barrier, results) -> None:
    from fmrl_sdk.train import trainer

    trainer._write_run_files = lambda *args: None  # (in this forked child) the winner's files need a real run
    barrier.wait()
    try:
        trainer._create_run_dir(Path(path), SimpleNamespace(recipe=None, dataset=None), None, None, {})
        results.put("created")
    except FmrlError as e:
        results.put(f"FmrlError: {e}")
    except Exception as e:  # noqa: BLE001 (what the test is about)
        results.put(f"{type(e).__name__}: {e}")


def test_two_trainings_creating_one_run_dir(tmp_path):
    run_dir = tmp_path / "runs" / "same"
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_create, args=(str(run_dir), barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    outcomes = sorted(results.get(timeout=5) for _ in procs)
    assert outcomes == ["FmrlError: " + f"{run_dir}: already exists (choose another --out, or --resume it)",
                        "created"], outcomes


def test_an_existing_run_dir_is_a_one_line_error(tmp_path):
    from fmrl_sdk.train.trainer import _create_run_dir

    (tmp_path / "run").mkdir()
    with pytest.raises(FmrlError, match="already exists"):
        _create_run_dir(tmp_path / "run", SimpleNamespace(recipe=None, dataset=None), None, None, {})


def test_an_export_to_a_bundle_in_use_is_refused_and_writes_nothing(art, tmp_path):
    out = tmp_path / "b"
    lock = tmp_path / ".b.lock"
    held = exclusive_lock(lock, out, "export")   # another export, as far as this one can tell
    try:
        for named, bundle_format in ((out, "both"), (tmp_path / "b.fmrlb", "file")):   # one lock for both forms
            p = run_cli("export", "--profile", "phone-lowmem", "--run", art.run_dir, "--size", "16", "--out", named,
                        "--format", bundle_format)
            assert p.wait(timeout=120) == 2
            assert error_lines(p.stderr.read()) == [f"error: {out}: in use by another export (pid {os.getpid()})"]
    finally:
        release_lock(lock, held)
    assert list(tmp_path.iterdir()) == []
    from fmrl_sdk.deploy.export import export_bundle

    with pytest.raises(FmrlError, match="not a trained granularity"):   # fails under the lock: folders removed
        export_bundle(art.run_dir, tmp_path / "new" / "deeper" / "b", size=99)
    assert list(tmp_path.iterdir()) == []


def test_two_exports_to_one_bundle_the_second_is_refused_the_first_completes(art, tmp_path):
    from fmrl_sdk.deploy.export import export_bundle
    from fmrl_sdk.runtime import Recommender

    out, lock = tmp_path / "b", tmp_path / ".b.lock"
    args = ["export", "--profile", "phone-lowmem", "--run", art.run_dir, "--size", "16", "--out", out]
    first = run_cli(*args)
    while first.poll() is None and not lock.exists():
        time.sleep(0.05)
    assert lock.exists(), "the first export never locked its bundle"
    with pytest.raises(FmrlError) as e:   # the Python API takes the same lock
        export_bundle(art.run_dir, out, size=16)
    assert str(e.value) == f"{out}: in use by another export (pid {first.pid})"
    second = run_cli(*args)
    assert second.wait(timeout=120) == 2
    assert error_lines(second.stderr.read()) == [f"error: {out}: in use by another export (pid {first.pid})"]
    assert first.poll() is None, "the first export ended before the second was refused: the test proves nothing"
    assert first.wait(timeout=300) == 0, first.stderr.read()[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "b.fmrlb"]   # no lock, no partial left
    with Recommender.open(out) as rec, Recommender.open(tmp_path / "b.fmrlb") as one_file:
        assert len(rec.new_session().recommend(k=5)) == 5
        assert one_file.new_session().recommend(k=5) == rec.new_session().recommend(k=5)


def test_a_featurize_on_an_out_in_use_is_refused(tmp_path):
    import numpy as np

    from fmrl_sdk.data.dataset import load_dataset

    matrix = tmp_path / "m.npy"
    np.save(matrix, np.zeros((load_dataset("demo").num_items, 4), dtype=np.float32))
    out, lock = tmp_path / "f", tmp_path / ".f.lock"
    held = exclusive_lock(lock, out, "featurize")
    try:
        p = run_cli("featurize", "--data", "demo", "--from-npy", matrix, "--out", out)
        assert p.wait(timeout=120) == 2
        assert error_lines(p.stderr.read()) == [f"error: {out}: in use by another featurize (pid {os.getpid()})"]
        assert sorted(q.name for q in tmp_path.iterdir()) == [".f.lock", "m.npy"]
    finally:
        release_lock(lock, held)
    p = run_cli("featurize", "--data", "demo", "--from-npy", matrix, "--out", out)
    assert p.wait(timeout=120) == 0, p.stderr.read()[-2000:]
    assert sorted(q.name for q in tmp_path.iterdir()) == ["f", "m.npy"]   # the lock removed at the end
