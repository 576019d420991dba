"""Issue 29: every command that writes checks its outputs before any work (replaying, training, featurizing,
lowering, measuring): an output in a read-only folder, or under a regular file, one that is an input (same
path, symbolic or hard link), a folder that export or featurize would replace while it holds an input or is
not an earlier output of theirs, is one `error:` line and exit 2, with nothing written and no work done."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fmrl_sdk.errors import FmrlError
from fmrl_sdk.fileio import check_writable
from tests.conftest import write_small_interactions
from tests.helpers import alias_of

ROOT = Path(__file__).resolve().parents[1]


def fmrl(*args) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-c", "from fmrl_sdk.cli import main; main()", *map(str, args)],
                            cwd=ROOT, capture_output=True, text=True)
    return result, time.monotonic() - start


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(params=["read-only folder", "under a file"])
def blocked(request, tmp_path):
    """(folder the output would go into, path of the output): never writable."""
    if request.param == "read-only folder":
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o500)
        if os.access(folder, os.W_OK):  # root bypasses permissions
            folder.chmod(0o700)
            pytest.skip("running as root: a read-only folder is writable anyway")
        yield folder, folder / "out.json"
        folder.chmod(0o700)
    else:
        plain = tmp_path / "some_file"
        plain.write_text("not a folder\n")
        yield plain, plain / "out.json"


def test_simulate_report_in_an_unwritable_place(art, rec, blocked, tmp_path):
    folder, target = blocked
    stream = tmp_path / "events.jsonl"
    stream.write_text("".join(json.dumps({"user": "u", "item": i}) + "\n" for i in rec.item_ids[:5]))
    result, took = fmrl("simulate", "--bundle", art.bundle, "--stream", stream, "--report", target, "--quiet",
                        "--state-dir", tmp_path / "state")
    line = one_error_line(result)
    assert line.startswith(f"error: {target}: --report cannot be written") and str(folder) in line, line
    assert not target.exists() and not (tmp_path / "state").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial file
    assert took < 60


def test_make_stream_out_in_an_unwritable_place(blocked, tmp_path):
    folder, target = blocked
    result, took = fmrl("make-stream", "--data", "demo", "--out", target)
    line = one_error_line(result)
    assert line.startswith(f"error: {target}: --out cannot be written") and str(folder) in line, line
    assert not target.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert took < 60


def test_check_writable_in_python(tmp_path):
    plain = tmp_path / "f"
    plain.write_text("x")
    check_writable({"--out": tmp_path / "new" / "deeper" / "out.jsonl", "--report": None, "--curve": plain},
                   folders={"--state-dir": tmp_path / "state"})
    with pytest.raises(FmrlError, match=r"--report cannot be written \(it is a folder\)"):
        check_writable({"--report": tmp_path})
    with pytest.raises(FmrlError, match=r"--state-dir cannot be written \(it is not a folder\)"):
        check_writable({}, folders={"--state-dir": plain})
    with pytest.raises(FmrlError, match=r"--out cannot be written \(.*f is not a folder\)"):
        check_writable({"--out": plain / "deeper" / "out.jsonl"})


# ----------------------------------------------------------------------------------------------
# export, train, featurize, item-vectors, eval, quickstart


def files_of(folder: Path) -> dict:
    """{relative path: sha256} of every file under `folder` (what must survive a refused command)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def no_hidden_files(folder: Path) -> bool:
    """No partial, temporary or lock file left in `folder`."""
    return not [p for p in folder.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("how", ["same path", "symlink", "parent folder"])
def test_export_out_that_is_the_run_or_holds_it_is_refused_before_measuring(art, tmp_path, how):
    run = shutil.copytree(art.run_dir, tmp_path / "parent" / "run")
    out = {"same path": run, "parent folder": tmp_path / "parent"}.get(how) or alias_of(run, tmp_path, "symlink")
    before = files_of(tmp_path)
    result, took = fmrl("export", "--profile", "phone-lowmem", "--run", run, "--out", out)   # no --size: measures
    line = one_error_line(result)
    what = "holds the run" if how == "parent folder" else "is the run"
    assert line.startswith(f"error: {out}: --out {what} (") and "would destroy the input" in line, line
    assert files_of(tmp_path) == before   # the run untouched, no measurement cache, no bundle
    assert no_hidden_files(tmp_path) and no_hidden_files(tmp_path / "parent") and took < 60


def test_export_never_replaces_a_folder_that_is_not_a_bundle(art, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me\n")
    result, took = fmrl("export", "--profile", "phone-lowmem", "--run", art.run_dir, "--size", "16", "--out", out)
    line = one_error_line(result)
    assert line.startswith(f"error: {out}: --out is a folder that is not empty and holds no manifest.json"), line
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and not (tmp_path / "mine.fmrlb").exists()
    assert no_hidden_files(tmp_path) and took < 60


@pytest.mark.parametrize("bundle_format", ["dir", "both"])
def test_export_out_in_an_unwritable_place(art, blocked, tmp_path, bundle_format):
    folder, target = blocked
    out = target.with_name("bundle")
    result, took = fmrl("export", "--profile", "phone-lowmem", "--run", art.run_dir, "--size", "16", "--out", out,
                        "--format", bundle_format)
    line = one_error_line(result)
    named = out if bundle_format == "dir" else out.with_name("bundle.fmrlb")
    assert line.startswith(f"error: {named}: --out") and "cannot be written" in line and str(folder) in line, line
    assert not out.exists() and no_hidden_files(tmp_path) and took < 60


def test_export_one_file_bundle_that_is_a_folder(art, tmp_path):
    (tmp_path / "b.fmrlb").mkdir()
    result, took = fmrl("export", "--profile", "phone-lowmem", "--run", art.run_dir, "--size", "16",
                        "--out", tmp_path / "b", "--format", "file")
    assert one_error_line(result) == f"error: {tmp_path / 'b.fmrlb'}: --out (one-file bundle) cannot be written " \
                                     "(it is a folder)"
    assert list((tmp_path / "b.fmrlb").iterdir()) == [] and no_hidden_files(tmp_path) and took < 60


def test_train_out_is_checked_before_the_data_is_read(blocked, tmp_path):
    folder, target = blocked
    result, took = fmrl("train", "--data", tmp_path / "not-there.csv", "--out", target)
    line = one_error_line(result)
    assert line.startswith(f"error: {target}: --out cannot be written") and str(folder) in line, line
    assert not target.exists() and no_hidden_files(tmp_path) and took < 60


@pytest.mark.parametrize("how", ["same path", "symlink", "hard link"])
def test_train_out_that_is_the_data_is_refused_by_name(tmp_path, how):
    data = write_small_interactions(tmp_path / "small.csv")
    before = data.read_bytes()
    out = alias_of(data, tmp_path, how)
    result, took = fmrl("train", "--data", data, "--out", out)
    assert one_error_line(result) == f"error: {out}: --out is the data ({data}); writing it would destroy the " \
                                     "input: choose another path"
    assert data.read_bytes() == before and took < 60


@pytest.fixture
def matrix(tmp_path) -> Path:
    """A features matrix for the demo data's items (featurize --from-npy)."""
    import numpy as np

    from fmrl_sdk.data.dataset import load_dataset

    path = tmp_path / "m.npy"
    np.save(path, np.random.default_rng(0).normal(size=(load_dataset("demo").num_items, 8)).astype(np.float32))
    return path


@pytest.mark.parametrize("how", ["same path", "symlink", "hard link"])
def test_featurize_out_that_is_an_input_is_refused_by_name(matrix, tmp_path, how):
    out = alias_of(matrix, tmp_path, how)
    result, took = fmrl("featurize", "--data", "demo", "--from-npy", matrix, "--out", out)
    assert one_error_line(result) == f"error: {out}: --out is --from-npy ({matrix}); writing it would destroy " \
                                     "the input: choose another path"
    assert out.is_file() and no_hidden_files(tmp_path) and took < 60


def test_featurize_never_replaces_a_features_folder_holding_its_input(matrix, tmp_path):
    out = tmp_path / "features"
    assert fmrl("featurize", "--data", "demo", "--from-npy", matrix, "--out", out)[0].returncode == 0
    inside = Path(shutil.copy(matrix, out / "m.npy"))
    before = files_of(out)
    result, took = fmrl("featurize", "--data", "demo", "--from-npy", inside, "--out", out, "--force")
    assert one_error_line(result) == f"error: {out}: --out holds --from-npy ({inside}); replacing it would " \
                                     "destroy the input: choose another path"
    assert files_of(out) == before and no_hidden_files(tmp_path) and took < 60


def test_featurize_out_in_an_unwritable_place(matrix, blocked, tmp_path):
    folder, target = blocked
    result, took = fmrl("featurize", "--data", "demo", "--from-npy", matrix, "--out", target)
    line = one_error_line(result)
    assert line.startswith(f"error: {target}: --out cannot be written") and str(folder) in line, line
    assert not target.exists() and no_hidden_files(tmp_path) and took < 60


@pytest.mark.parametrize("which", ["the run's model.safetensors", "--items"])
def test_item_vectors_out_that_is_an_input_is_refused_first(art, tmp_path, which):
    run = Path(shutil.copytree(art.run_dir, tmp_path / "run"))
    items = tmp_path / "new.json"
    items.write_text(json.dumps({"item": "new-1", "title": "a new item"}) + "\n")
    before = files_of(tmp_path)
    out = run / "model.safetensors" if which.startswith("the run") else items
    result, took = fmrl("item-vectors", "--run", run, "--items", items, "--size", "8", "--out", out)
    assert one_error_line(result) == f"error: {out}: --out is {which} ({out}); writing it would destroy the " \
                                     "input: choose another path"
    assert files_of(tmp_path) == before and took < 60


def test_eval_checks_what_it_writes_into_the_run_before_evaluating(art, tmp_path):
    run = Path(shutil.copytree(art.run_dir, tmp_path / "run"))
    (run / "metrics_test.png").mkdir()
    result, took = fmrl("eval", "--run", run)
    assert one_error_line(result) == f"error: {run / 'metrics_test.png'}: the plot cannot be written (it is a folder)"
    assert not (run / "metrics.json").exists() and took < 60   # nothing evaluated, nothing recorded


def test_quickstart_workdir_is_checked_before_training(blocked, tmp_path):
    folder, target = blocked
    result, took = fmrl("quickstart", "--workdir", target)
    line = one_error_line(result)
    assert line.startswith(f"error: {target}: --workdir cannot be written") and str(folder) in line, line
    assert not target.exists() and no_hidden_files(tmp_path) and took < 60
