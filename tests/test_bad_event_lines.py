"""Any unparseable simulate stream line is a counted bad line of one kind, never an exception: deep
nesting, duplicate keys, bad UTF-8, a byte order mark; descriptions (and a 10 MB id) stay bounded in the
report and in the --strict error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fmrl_sdk.simulate.events import MAX_WHAT_CHARS, BadLine, parse_line
from tests.helpers import DEEP

ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------------------------
# Event lines: any unparseable line is a counted bad line


@pytest.mark.parametrize("raw, kind", [
    (DEEP.encode(), "invalid_json"),
    (b'{"user": "u", "item": ' + DEEP.encode() + b"}", "invalid_json"),
    (b"{" * 100_000, "invalid_json"),
    (b'{"user": "u", "item": ' + b"9" * 5000 + b"}", "invalid_json"),
    (b"\xff\xfe", "invalid_json"),
    (b'{"user": "u", "item": "a", "item": "b"}', "duplicate_key"),
    (b'{"user": "u", "item": "a", "meta": {"k": 1, "k": 2}}', "duplicate_key"),
    (b'{"user": "u", "item": "a", "ts": 1e999}', "wrong_type"),
])
def test_unparseable_event_lines_are_bad_lines_never_exceptions(raw, kind):
    with pytest.raises(BadLine) as e:
        parse_line(raw + b"\n")
    assert e.value.kind == kind


def test_a_byte_order_mark_is_stripped():
    assert parse_line(b'\xef\xbb\xbf{"user": 7, "item": "a", "ts": 1}\n') == ("7", "a", 1, {"user": 7, "item": "a", "ts": 1})
    assert parse_line(b"\xef\xbb\xbf\n") is None and parse_line(b"  \n") is None


def test_bad_line_descriptions_are_bounded():
    item = "x" * 10_000_000
    with pytest.raises(BadLine) as e:  # a 10 MB key, twice
        parse_line(b'{"user": "u", "item": "a", "' + item.encode() + b'": 1, "' + item.encode() + b'": 2}')
    assert e.value.kind == "duplicate_key"
    assert len(BadLine("unknown_item", f"unknown item {item!r}").what) < MAX_WHAT_CHARS + 40
    assert "(10,000,015 characters)" in BadLine("unknown_item", f"unknown item {item!r}").what
    assert len(e.value.what) < MAX_WHAT_CHARS + 40


def test_a_10mb_id_stays_out_of_the_report_and_the_strict_error(tmp_path, rec, art):
    """Over fmrl_sdk.ids.MAX_ID_BYTES an id is `wrong_type` (it was an unknown item, named in full)."""
    from fmrl_sdk.simulate.commands import simulate

    stream = tmp_path / "events.jsonl"
    stream.write_text(json.dumps({"user": "u", "item": "x" * 10_000_000}) + "\n"
                      + json.dumps({"user": "u", "item": rec.item_ids[0]}) + "\n")
    report = simulate(stream, rec=rec, k=5)
    assert report["bad_lines"] == {"wrong_type": 1} and report["events"] == 1
    assert len(json.dumps(report["bad_line_samples"])) < 1000
    r = subprocess.run([sys.executable, "-m", "fmrl_sdk.cli", "simulate", "--stream", str(stream), "--bundle",
                        str(art.bundle), "--strict", "--quiet"], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]  # ExecuTorch logs too
    assert r.returncode == 2 and len(errors) == 1 and len(errors[0]) < 1000 and len(r.stderr) < 5000
    assert errors[0] == f"error: {stream}:1: 'item' is longer than 1,024 bytes (the most an id may hold)"
