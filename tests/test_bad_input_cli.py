"""The CLI on tricky input: simulate counts deep, duplicate-key and BOM lines as the library does, --strict
stops with one error line, --resume passes the line; an output that is the stream (same path, symlink, hard
link) or the bundle is refused before anything is written, and a failed run leaves an existing output as
it was.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fmrl_sdk.errors import FmrlError
from tests.helpers import DEEP, alias_of

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fmrl_sdk.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def error_lines(r: subprocess.CompletedProcess) -> list[str]:
    return [line for line in r.stderr.splitlines() if line.startswith("error:")]  # ExecuTorch logs too


@pytest.fixture
def tricky_stream(tmp_path, rec) -> Path:
    """Line 1: a BOM then a valid event; 2: nested 100000 deep; 3: a duplicate key; 4: valid."""
    a, b = rec.item_ids[:2]
    stream = tmp_path / "events.jsonl"
    stream.write_bytes(b"\xef\xbb\xbf" + json.dumps({"user": "u", "item": a, "ts": 1}).encode() + b"\n"
                       + DEEP.encode() + b"\n"
                       + b'{"user": "u", "item": "zz", "item": "' + b.encode() + b'"}\n'
                       + json.dumps({"user": "u", "item": b, "ts": 2}).encode() + b"\n")
    return stream


def test_simulate_counts_deep_duplicate_and_bom_lines_correctly(tricky_stream, rec):
    from fmrl_sdk.simulate.commands import simulate

    report = simulate(tricky_stream, rec=rec, k=5)
    assert report["events"] == 2 and report["lines"] == 4
    assert report["bad_lines"] == {"invalid_json": 1, "duplicate_key": 1}
    assert [(s["line"], s["kind"]) for s in report["bad_line_samples"]] == [(2, "invalid_json"), (3, "duplicate_key")]


def test_simulate_strict_stops_at_a_deep_line_with_one_error_line(tricky_stream, art):
    r = run_cli("simulate", "--stream", tricky_stream, "--bundle", art.bundle, "--strict", "--quiet")
    assert r.returncode == 2 and error_lines(r) == [f"error: {tricky_stream}:2: invalid JSON (nested too deeply)"]


def test_simulate_resume_passes_a_deep_line(tricky_stream, art, tmp_path):
    state = tmp_path / "state"
    first = run_cli("simulate", "--stream", tricky_stream, "--bundle", art.bundle, "--state-dir", state,
                    "--snapshot-every", "1", "--quiet", "--report", tmp_path / "a.json")
    again = run_cli("simulate", "--stream", tricky_stream, "--bundle", art.bundle, "--state-dir", state,
                    "--resume", "--quiet", "--report", tmp_path / "b.json")
    assert first.returncode == 0 and again.returncode == 0, (first.stderr[-500:], again.stderr[-500:])
    assert json.loads((tmp_path / "b.json").read_text())["bad_lines"] == {"invalid_json": 1, "duplicate_key": 1}


@pytest.mark.parametrize("flag", ["--out", "--report"])
@pytest.mark.parametrize("how", ["same path", "symlink", "hard link"])
def test_an_output_equal_to_the_stream_is_refused_and_the_stream_kept(tmp_path, art, rec, flag, how):
    stream = tmp_path / "events.jsonl"
    stream.write_text(json.dumps({"user": "u", "item": rec.item_ids[0]}) + "\n")
    before = stream.read_bytes()
    target = alias_of(stream, tmp_path, how)
    r = run_cli("simulate", "--stream", stream, "--bundle", art.bundle, flag, target, "--quiet")
    assert r.returncode == 2 and len(error_lines(r)) == 1 and f"{flag} is the stream" in error_lines(r)[0]
    assert stream.read_bytes() == before and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_out_and_report_cannot_be_one_file_or_a_bundle_file(tmp_path, art, rec):
    stream = tmp_path / "events.jsonl"
    stream.write_text(json.dumps({"user": "u", "item": rec.item_ids[0]}) + "\n")
    r = run_cli("simulate", "--stream", stream, "--bundle", art.bundle, "--out", tmp_path / "x", "--report",
                tmp_path / "x", "--quiet")
    assert r.returncode == 2 and "--out is --report" in error_lines(r)[0]
    from fmrl_sdk.simulate.commands import simulate

    with pytest.raises(FmrlError, match="--report is the bundle's model.pte"):
        simulate(stream, rec=rec, report=art.bundle / "model.pte")


def test_a_failed_simulate_leaves_an_existing_out_file_untouched(tmp_path, rec):
    from fmrl_sdk.simulate.commands import simulate

    stream, out = tmp_path / "events.jsonl", tmp_path / "recs.jsonl"
    stream.write_text(json.dumps({"user": "u", "item": rec.item_ids[0]}) + "\nnot json\n")
    out.write_text("the previous run's recommendations\n")
    with pytest.raises(FmrlError, match=":2: invalid JSON"):
        simulate(stream, rec=rec, out=out, strict=True)
    assert out.read_text() == "the previous run's recommendations\n"
    report = simulate(stream, rec=rec, out=out)
    assert report["events"] == 1 and len(out.read_text().splitlines()) == 1
    assert not (tmp_path / ".recs.jsonl.partial").exists()
