"""Issue 29: one line-size limit for event streams in both replays (fmrl_sdk/simulate/replay.py read_line,
fmrl_replay's LineReader). A line longer than MAX_JSONL_LINE_BYTES (fmrl_sdk/jsonio.py; FMRL_MAX_JSONL_LINE_BYTES
in fmrl_runtime.h), its "\\n" or "\\r\\n" not counted, is an `invalid_json` bad line, read in blocks and
dropped without being held whole; the lines after it keep their numbers and a resumed simulate continues
after it.

The files are real: two lines of 64 MiB written to tmp, and a 512 MiB line that is a hole in a sparse file.
"""

from __future__ import annotations

import json
import subprocess
import tracemalloc
from pathlib import Path

from fmrl_sdk.jsonio import MAX_JSONL_LINE_BYTES as LIMIT
from fmrl_sdk.simulate.commands import simulate
from tests.helpers import replay

TOO_LONG = "line longer than 67,108,864 bytes"


def event(rec, user: str, i: int) -> bytes:
    return json.dumps({"user": user, "item": rec.item_ids[i]}).encode()


def write_padded(f, line: bytes, size: int, ending: bytes) -> None:
    """The JSON object `line` padded with spaces before its closing brace to `size` bytes, then `ending`."""
    f.write(line[:-1])
    f.write(b" " * (size - len(line)))
    f.write(b"}" + ending)


def out_lines(path: Path) -> list[tuple]:
    return [(r["line"], r["user"], r["item"], r["recs"]) for r in map(json.loads, path.read_text().splitlines())]


def samples(report: dict) -> list[tuple]:
    return [(s["line"], s["kind"], s["what"]) for s in report["bad_line_samples"]]


def c_replay(build: Path, bundle: Path, stream: Path, tmp_path: Path, *flags) -> dict:
    report = tmp_path / "c.json"
    replay(build, "--bundle", bundle, "--stream", stream, "--report", report, *flags)
    return json.loads(report.read_text())


def test_a_line_over_the_limit_is_invalid_json_in_both_replays(cpp_build, art, rec, tmp_path):
    """Line 2 holds exactly LIMIT bytes before its "\\r\\n" (an event), line 3 one byte more (a bad line), line 4
    2 * LIMIT NUL bytes (a bad line, dropped in blocks); the events after them are lines 5-7 in both replays'
    --out, and a simulate stopped after line 5 resumes to the same report and --out."""
    stream = tmp_path / "long.jsonl"
    with open(stream, "wb") as f:
        f.write(event(rec, "u0", 0) + b"\n")
        write_padded(f, event(rec, "u1", 1), LIMIT, b"\r\n")
        write_padded(f, event(rec, "u1", 2), LIMIT + 1, b"\n")
        f.seek(2 * LIMIT, 1)   # a hole: NUL bytes
        f.write(b"\n" + b"\n".join([event(rec, "u0", 3), event(rec, "u1", 4), event(rec, "u0", 5)]))  # no final \n
    py = simulate(stream, rec=rec, out=tmp_path / "py.jsonl")
    assert (py["lines"], py["events"], py["bad_lines"]) == (7, 5, {"invalid_json": 2})
    assert samples(py) == [(3, "invalid_json", TOO_LONG), (4, "invalid_json", TOO_LONG)]
    c = c_replay(cpp_build, art.bundle, stream, tmp_path, "--out", tmp_path / "c.jsonl")
    assert (c["lines"], c["events"], c["bad_lines"], samples(c)) == (7, 5, py["bad_lines"], samples(py))
    assert [line[0] for line in out_lines(tmp_path / "py.jsonl")] == [1, 2, 5, 6, 7]
    assert out_lines(tmp_path / "c.jsonl") == out_lines(tmp_path / "py.jsonl")
    # the snapshot's byte offset and prefix hash count the dropped lines' bytes
    state, out = tmp_path / "state", tmp_path / "resumed.jsonl"
    simulate(stream, rec=rec, out=out, state_dir=state, limit=3, snapshot_every=1)
    resumed = simulate(stream, rec=rec, out=out, state_dir=state, resume=True)
    assert {k: resumed[k] for k in ("lines", "events", "bad_lines", "bad_line_samples", "online")} == \
        {k: py[k] for k in ("lines", "events", "bad_lines", "bad_line_samples", "online")}
    assert out.read_bytes() == (tmp_path / "py.jsonl").read_bytes()
    stream.unlink()   # 128 MiB written: not left in pytest's kept temporary folders


def test_a_long_line_is_dropped_without_holding_it(cpp_build, art, rec, tmp_path):
    """A 512 MiB line (a hole of NUL bytes in a sparse file) costs what reading up to the limit costs, not the
    line's size: simulate allocates under 3 * LIMIT bytes (tracemalloc), and fmrl_replay runs with its data
    segment capped at 3 * LIMIT bytes (ulimit -d; a child's ru_maxrss would start at this test process's)."""
    stream = tmp_path / "sparse.jsonl"
    with open(stream, "wb") as f:
        f.write(event(rec, "u0", 0) + b"\n")
        f.seek(8 * LIMIT, 1)
        f.write(b"\n" + event(rec, "u0", 1) + b"\n")
    tracemalloc.start()
    try:
        py = simulate(stream, rec=rec)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * LIMIT, f"simulate allocated {peak:,} bytes"
    report = tmp_path / "c.json"
    capped = subprocess.run(["sh", "-c", 'ulimit -d "$0" && exec "$@"', str(3 * LIMIT // 1024),
                             str(cpp_build / "fmrl_replay"), "--bundle", str(art.bundle), "--stream", str(stream),
                             "--report", str(report), "--threads", "1"], capture_output=True, text=True)
    assert capped.returncode == 0, capped.stderr
    c = json.loads(report.read_text())
    for got in (py, c):
        assert (got["lines"], got["events"], samples(got)) == (3, 2, [(2, "invalid_json", TOO_LONG)])
