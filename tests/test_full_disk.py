"""A full disk (ENOSPC) is one `error: PATH: cannot write (No space left on device)` line and exit 2 for every
command that writes, never a traceback, and leaves no partial or temporary file behind (docs/runtime.md,
"Guarantees"); `train` removes the run directory it created, so a retry with the same --out works. The disk
is a 1 MiB tmpfs (needs root to mount; skipped otherwise). Temporaries of killed writers are removed by the
next writer of the same target, those of live processes never.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write_small_interactions

ROOT = Path(__file__).resolve().parent.parent
FULL = "No space left on device"


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fmrl_sdk.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)


def one_error_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]  # ExecuTorch logs aside
    assert len(lines) == 1, r.stderr
    return lines[0]


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs mounted at tmp_path/disk (root only), unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True,
                           text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"cannot mount a tmpfs: {e}")
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip() or r.returncode}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True, timeout=30)


def fill(disk: Path, leave: int) -> Path:
    """Fill `disk` with one file so that about `leave` bytes stay free; returns the file (delete it to free)."""
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    filler = disk / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - leave))
    return filler


def assert_full_disk_error(r: subprocess.CompletedProcess, path: Path) -> None:
    line = one_error_line(r)
    assert str(path) in line and FULL in line, line


def assert_no_leftovers(disk: Path, allowed=("filler",)) -> None:
    assert sorted(p.name for p in disk.iterdir()) == sorted(allowed)


def test_make_stream_on_a_full_disk(small_disk):
    fill(small_disk, 100_000)   # the demo stream is about 1 MB
    out = small_disk / "s.jsonl"
    assert_full_disk_error(run_cli("make-stream", "--data", "demo", "--out", out), out)
    assert_no_leftovers(small_disk)


def test_simulate_report_and_out_on_a_full_disk(small_disk, art, tmp_path):
    stream = tmp_path / "stream.jsonl"
    assert run_cli("make-stream", "--data", "demo", "--out", stream).returncode == 0
    filler = fill(small_disk, 20_000)   # the --out recommendations of the whole stream are far more
    report, out = small_disk / "r.json", small_disk / "o.jsonl"
    r = run_cli("simulate", "--stream", stream, "--bundle", art.bundle, "--report", report, "--out", out)
    assert_full_disk_error(r, out)
    assert_no_leftovers(small_disk)
    # --report alone: fill the disk to the last byte
    filler.unlink()
    fill(small_disk, 0)
    r = run_cli("simulate", "--stream", stream, "--bundle", art.bundle, "--report", report, "--limit", "200")
    assert_full_disk_error(r, report)
    assert_no_leftovers(small_disk)


def test_export_on_a_full_disk(small_disk, art):
    fill(small_disk, 20_000)   # the bundle's weights alone are larger
    out = small_disk / "b"
    r = run_cli("export", "--profile", "phone-lowmem", "--run", art.run_dir, "--size", "16", "--out", out)
    assert_full_disk_error(r, out)
    assert_no_leftovers(small_disk)


def small_recipe_toml(folder: Path) -> Path:
    data = write_small_interactions(folder / "small.csv")
    path = folder / "small.toml"
    path.write_text(f'[data]\npath = "{data}"\nmax_len = 20\nmin_count = 1\n\n'
                    '[model]\nsizes = [8, 16]\nitem_embedding = "id"\n\n'
                    '[train]\nepochs = 1\nbatch_size = 64\nlr = 1e-2\nwarmup_steps = 2\npatience = 5\n'
                    'eval_batch_size = 1000\nthreads = 1\n')
    return path


def test_train_on_a_full_disk_leaves_no_run_directory_and_a_retry_works(small_disk, tmp_path):
    recipe = small_recipe_toml(tmp_path)
    filler = fill(small_disk, 16_000)   # config and items fit; the first epoch's training state does not
    run = small_disk / "run"
    r = run_cli("train", "--recipe", recipe, "--epochs", "1", "--out", run)
    assert FULL in one_error_line(r) and str(run) in one_error_line(r)
    assert_no_leftovers(small_disk)   # the run directory is gone, nothing blocks the same --out
    filler.unlink()
    r = run_cli("train", "--recipe", recipe, "--epochs", "1", "--out", run)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (run / "model.safetensors").exists()


def test_featurize_on_a_full_disk(small_disk, tmp_path):
    from fmrl_sdk.data.dataset import load_dataset

    matrix = tmp_path / "features.npy"
    np.save(matrix, np.random.default_rng(0).normal(size=(load_dataset("demo").num_items, 64)).astype(np.float32))
    fill(small_disk, 0)
    out = small_disk / "f"
    assert_full_disk_error(run_cli("featurize", "--data", "demo", "--from-npy", matrix, "--out", out), out)
    assert_no_leftovers(small_disk)


# ----------------------------------------------------------------------------------------------
# Temporaries of killed writers (no mount needed)


def dead_pid() -> int:
    pid = 2 ** 22 + 4321   # above Linux's largest pid_max: no such process
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except OSError:
            pass
        pid += 1


def test_stale_temporaries_of_dead_writers_are_removed_and_live_ones_kept(tmp_path, art):
    from fmrl_sdk.fileio import atomic_write_json

    dead, live = dead_pid(), os.getpid()
    for name in (f".x.json.{dead}.tmp", f".x.json.{live}.tmp", f".x.json.{dead}-3.tmp", ".x.json.other.tmp",
                 f".x.json.1.{dead}.tmp"):   # not ours / another target's (x.json.1): kept
        (tmp_path / name).write_text("partial")
    atomic_write_json(tmp_path / "x.json", {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".x.json.")) == \
        sorted([f".x.json.{live}.tmp", ".x.json.other.tmp", f".x.json.1.{dead}.tmp"])

    (tmp_path / f".b.{dead}.partial").mkdir()
    (tmp_path / f".b.{dead}.partial" / "weights.bin").write_bytes(b"x" * 100)
    (tmp_path / f".b.{live}.partial").mkdir()
    r = run_cli("export", "--profile", "phone-lowmem", "--run", art.run_dir, "--size", "16",
                "--out", tmp_path / "b")
    assert r.returncode == 0, r.stdout + r.stderr
    assert not (tmp_path / f".b.{dead}.partial").exists()
    assert (tmp_path / f".b.{live}.partial").is_dir()   # a live process's: never touched
    assert (tmp_path / "b" / "manifest.json").exists()
