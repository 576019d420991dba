"""Issue 29: differential fuzzing of the two runtimes. Hypothesis writes random streams (valid events over
the shared test bundle's items, unknown items, bad JSON, duplicate keys, wrong types, NUL bytes and NUL
ids, user and item ids around the id limit (1,023 to 1,028 UTF-8 bytes, multi-byte characters straddling
it, escaped or raw; 1,024- and 1,025-digit integers), BOMs, blank lines, ts going backwards, huge numbers);
`simulate` (Python) and `fmrl_replay` (C) must give the same report, timing keys aside and bad-line samples
compared by (line, kind) as the parity test in test_cpp_runtime.py does. Derandomized with a fixed number of
examples, so CI sees the same cases.

Also: random byte mutations of a saved session are refused by Python's restore with FmrlError (never
another exception), and restored states round-trip byte for byte.
"""

from __future__ import annotations

import json
import math
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fmrl_sdk.errors import FmrlError
from fmrl_sdk.simulate.commands import simulate
from fmrl_sdk.simulate.replay import TIMING_KEYS
from tests.test_runtime_inputs import limit_ids

STREAM_EXAMPLES = 60   # about 0.3 s each (a simulate and an fmrl_replay run)
STATE_EXAMPLES = 300
FUZZ = settings(max_examples=STREAM_EXAMPLES, derandomize=True, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))
ITEMS = 25             # events name the bundle's first ITEMS items (so that users hit and repeat them)
IGNORED = set(TIMING_KEYS) | {"runtime", "stream", "bundle", "bad_line_samples"}


LONG_IDS = limit_ids() + [10 ** 1023, 10 ** 1024]   # 1,024 and 1,025 digits


def _line(item_ids):
    users = st.one_of(st.sampled_from(["u0", "u1", "u2", "7"]), st.integers(0, 8), st.just(10 ** 30),
                      st.sampled_from(LONG_IDS))
    items = st.one_of(st.sampled_from(item_ids), st.sampled_from(item_ids).map(int_or_same),
                      st.just("no-such-item"), st.sampled_from(LONG_IDS))
    ts = st.one_of(st.none(), st.integers(-3, 40), st.floats(-3, 40, allow_nan=False), st.just(10 ** 25),
                   st.just(1.5e300))
    event = st.builds(lambda u, i, t, e: {"user": u, "item": i, **({} if t is None else {"ts": t}),
                                          **({} if e is None else {"event": e})},
                      users, items, ts, st.one_of(st.none(), st.just("view")))
    valid = st.builds(lambda e, ascii: json.dumps(e, ensure_ascii=ascii).encode(), event, st.booleans())
    raw = st.sampled_from([
        b"", b"   ", b"\t", b"{not json", b"[1, 2]", b'"text"', b"null", b'{"user": "u1"}', b'{"item": "x"}',
        b'{"user": "u1", "item": 3.5}', b'{"user": true, "item": "x"}', b'{"user": "u1", "item": ["a"]}',
        b'{"user": "u1", "item": "x", "ts": "late"}', b'{"user": "u1", "item": "x", "ts": NaN}',
        b'{"user": "u1", "item": "x", "ts": Infinity}', b'{"user": "u1", "item": "x", "ts": 1e400}',
        b'{"user": "u1", "user": "u2", "item": "x"}', b'{"user": "u1", "item": "x", "e": {"a": 1, "a": 2}}',
        b'{"user": "u1", "item": "x", "event": 5}', b"\xff\xfe garbage", b"\x00", b'{"user": "u\\u0000", "item": "x"}',
        b'{"user": 123456789012345678901234567890, "item": "x"}', b'{"user": "u1", "item": ""}',
        b'{"user": "u1", "item": "x"} trailing', b"[" * 50 + b"]" * 50,
    ]).map(lambda b: b.replace(b'"x"', json.dumps(item_ids[0]).encode()))
    nul_id = st.builds(lambda u, i: json.dumps({"user": u, "item": i}).encode(),
                       st.sampled_from(["u1", "u\u00001"]), st.sampled_from(item_ids).map(lambda i: i + "\u0000z"))
    line = st.one_of(valid, valid, valid, valid, raw, nul_id)
    decorated = st.tuples(line, st.sampled_from([b"", b"", b"", b"\xef\xbb\xbf"]),
                          st.sampled_from([b"", b"", b"", b"\x00", b" ", b"\r"]))
    return decorated.map(lambda t: t[1] + t[0] + t[2])


def int_or_same(item: str):
    return int(item) if item.isdigit() else item


def close(a, b, where="report"):
    """a == b, floats within 1e-9."""
    if isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, (int, float)) and isinstance(b, (int, float)), (where, a, b)
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9), (where, a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (where, sorted(a), sorted(b))
        for key in a:
            close(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), (where, a, b)
        for i, (x, y) in enumerate(zip(a, b)):
            close(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


RAN = {"streams": 0, "states": 0, "too_long": 0}


@pytest.fixture(scope="module")
def item_ids(rec):
    return rec.item_ids[:ITEMS]


def test_simulate_and_fmrl_replay_agree_on_random_streams(art, rec, cpp_build, tmp_path_factory, item_ids):
    folder = tmp_path_factory.mktemp("fuzz")
    stream, report = folder / "events.jsonl", folder / "c.json"

    @FUZZ
    @given(lines=st.lists(_line(item_ids), min_size=1, max_size=40), k=st.sampled_from([1, 3, 10]),
           exclude_seen=st.booleans(), final_newline=st.booleans())
    def check(lines, k, exclude_seen, final_newline):
        stream.write_bytes(b"\n".join(lines) + (b"\n" if final_newline else b""))
        py = simulate(stream, rec=rec, k=k, exclude_seen=exclude_seen)
        c = subprocess.run([str(cpp_build / "fmrl_replay"), "--bundle", str(art.bundle), "--stream", str(stream),
                            "--report", str(report), "--k", str(k), "--quiet",
                            *(["--exclude-seen"] if exclude_seen else [])], capture_output=True, text=True)
        assert c.returncode == 0, c.stderr[-2000:]
        cr = json.loads(report.read_text())
        assert [(s["line"], s["kind"]) for s in cr["bad_line_samples"]] == \
            [(s["line"], s["kind"]) for s in py["bad_line_samples"]]
        close({key: v for key, v in py.items() if key not in IGNORED and key != "limit"},
              {key: v for key, v in cr.items() if key not in IGNORED})
        RAN["streams"] += 1
        RAN["too_long"] += sum("bytes (the most an id may hold)" in s["what"] for s in py["bad_line_samples"])

    check()
    print(f"\nfuzz: {RAN['streams']} random streams replayed by both runtimes, {RAN['too_long']} lines with "
          "an id over the limit")
    assert RAN["streams"] >= STREAM_EXAMPLES // 2 and RAN["too_long"] > 0


def test_mutated_session_bytes_are_refused_with_fmrl_error(rec, item_ids):
    session = rec.new_session()
    for item in item_ids[:7]:
        session.observe(item)
    saved = session.to_bytes()
    assert rec.restore(saved).to_bytes() == saved

    @settings(max_examples=STATE_EXAMPLES, derandomize=True, deadline=None, database=None)
    @given(edits=st.lists(st.tuples(st.integers(0, len(saved) - 1), st.integers(0, 255)), min_size=1, max_size=6),
           cut=st.one_of(st.none(), st.integers(0, len(saved) + 8)), tail=st.binary(max_size=8))
    def check(edits, cut, tail):
        data = bytearray(saved)
        for position, value in edits:
            data[position] = value
        data = bytes(data[:cut] if cut is not None else data) + tail
        try:
            restored = rec.restore(data)
        except FmrlError:
            RAN["states"] += 1
            return
        assert data == saved  # only an unchanged state is accepted
        assert restored.to_bytes() == saved
        RAN["states"] += 1

    check()
    print(f"\nfuzz: {RAN['states']} mutated session states")
    assert RAN["states"] >= STATE_EXAMPLES // 2
