"""Issue 29: simulate and make-stream check that their outputs can be written before any work: an output in
a read-only folder, or under a regular file, is one `error:` line and exit 2, with nothing replayed or
written, in well under the time a replay takes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fmrl_sdk.errors import FmrlError
from fmrl_sdk.fileio import check_writable

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
