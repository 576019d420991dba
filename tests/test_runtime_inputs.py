"""Issue 29: values are checked where they enter, alike in both runtimes.

fmrl_replay refuses an output that is an input (or another output) before any work, with simulate's words,
and an output whose folder is missing before replaying; one id rule (fmrl_sdk/ids.py) in both runtimes: ids
holding NUL or longer than MAX_ID_BYTES UTF-8 bytes are bad lines (`wrong_type`) in both replays and refused
by add_items / observe (fmrl_add_items / fmrl_observe) with the same words; a valid JSON line followed by a
NUL byte is `invalid_json` in both; --k is read as Python reads an int. The Python runtime refuses bad ids,
huge vectors, bad arguments and bad options with FmrlError (still a ValueError where it was one), the C
runtime's fmrl_add_items the same.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from fmrl_sdk.errors import FmrlError
from fmrl_sdk.ids import MAX_ID_BYTES
from fmrl_sdk.runtime import Recommender
from fmrl_sdk.simulate.commands import simulate
from tests.helpers import alias_of, error_line, replay, run_app


def events(rec, n: int = 6) -> bytes:
    ids = rec.item_ids
    return b"".join(json.dumps({"user": f"u{i % 2}", "item": ids[i]}).encode() + b"\n" for i in range(n))


@pytest.fixture
def stream(tmp_path, rec) -> Path:
    path = tmp_path / "events.jsonl"
    path.write_bytes(events(rec))
    return path


# ---- 1. fmrl_replay never destroys an input ---------------------------------------------------------

@pytest.mark.parametrize("flag", ["--out", "--report"])
@pytest.mark.parametrize("how", ["same path", "symlink", "hard link"])
def test_replay_refuses_an_output_that_is_the_stream(cpp_build, art, stream, tmp_path, flag, how):
    before = stream.read_bytes()
    target = alias_of(stream, tmp_path, how)
    other = ["--report", tmp_path / "r.json"] if flag == "--out" else []
    r = replay(cpp_build, "--bundle", art.bundle, "--stream", stream, flag, target, *other, check=False)
    assert error_line(r) == (f"{target}: {flag} is the stream ({stream}); writing it would destroy the input: "
                             "choose another path")
    assert stream.read_bytes() == before
    assert not (tmp_path / "r.json").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_replay_words_match_simulate(cpp_build, art, rec, stream, tmp_path):
    """The same one line as simulate, for the stream, a bundle file and two outputs."""
    manifest = art.bundle / "manifest.json"
    for flags in (["--report", stream], ["--out", tmp_path / "x.json", "--report", tmp_path / "x.json"],
                  ["--report", manifest], ["--out", tmp_path / "ok.jsonl", "--report", art.bundle / "model.pte"]):
        flags = [str(f) for f in flags]
        kwargs = dict(zip([f.lstrip("-") for f in flags[::2]], flags[1::2]))
        with pytest.raises(FmrlError) as py:
            simulate(stream, rec=rec, **kwargs)
        c = replay(cpp_build, "--bundle", art.bundle, "--stream", stream, *flags, check=False)
        assert error_line(c) == str(py.value)
    assert not list(tmp_path.glob("*.json")) and not (tmp_path / "ok.jsonl").exists()


def test_replay_checks_output_folders_before_replaying(cpp_build, art, stream, tmp_path):
    r = replay(cpp_build, "--bundle", art.bundle, "--stream", stream, "--report", tmp_path / "r.json",
               "--out", tmp_path / "missing" / "o.jsonl", check=False)
    assert error_line(r) == f"{tmp_path / 'missing' / 'o.jsonl'}: cannot write (folder {tmp_path / 'missing'} not found)"
    r = replay(cpp_build, "--bundle", art.bundle, "--stream", stream, "--report", tmp_path, check=False)
    assert error_line(r) == f"{tmp_path}: cannot write (is a directory)"
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "ro"
        locked.mkdir(mode=0o555)
        r = replay(cpp_build, "--bundle", art.bundle, "--stream", stream, "--report", locked / "r.json", check=False)
        assert "is not writable" in error_line(r)


def test_replay_out_replaces_an_existing_file_only_when_done(cpp_build, art, stream, tmp_path):
    out = tmp_path / "o.jsonl"
    out.write_text("old\n")
    replay(cpp_build, "--bundle", art.bundle, "--stream", stream, "--report", tmp_path / "r.json", "--out", out)
    assert len(out.read_text().splitlines()) == 6
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial, no lock left


@pytest.mark.parametrize("k,shown", [("4294967306", "4294967306"), ("99999999999", "99999999999"),
                                     ("-4294967295", "-4294967295"), ("0", "0"), ("1_000", "1000")])
def test_replay_reads_k_as_python_does(cpp_build, art, rec, stream, tmp_path, k, shown):
    r = replay(cpp_build, "--bundle", art.bundle, "--stream", stream, "--report", tmp_path / "r.json", "--k", k,
               check=False)
    assert error_line(r) == f"--k {shown}: must be in [1, {rec.k_max}] (the bundle's k_max)"
    with pytest.raises(FmrlError) as py:
        simulate(stream, rec=rec, k=int(k))
    assert str(py.value) == error_line(r)


def test_replay_accepts_k_spelled_as_python_ints(cpp_build, art, stream, tmp_path):
    replay(cpp_build, "--bundle", art.bundle, "--stream", stream, "--report", tmp_path / "r.json", "--k", " +0_5 ")
    assert json.loads((tmp_path / "r.json").read_text())["k"] == 5


# ---- 3. NUL and the id limit: one rule for both runtimes -------------------------------------------------

def nul_lines(rec) -> list[bytes]:
    item = rec.item_ids[0]
    return [json.dumps({"user": "u\u00001", "item": item}).encode(),          # NUL in the user id
            json.dumps({"user": "u1", "item": item + "\u0000x"}).encode(),    # NUL in the item id (C: item)
            json.dumps({"user": "u1", "item": item}).encode() + b"\x00",      # valid JSON, then a NUL byte
            json.dumps({"user": "u1", "item": item}).encode() + b"\x00junk",
            b"\x00", b'{"user": "u1", "item": "a\x00b"}']                     # a raw NUL inside a string


def test_nul_lines_are_the_same_bad_lines_in_both_replays(cpp_build, art, rec, tmp_path):
    stream = tmp_path / "nul.jsonl"
    stream.write_bytes(events(rec, 2) + b"\n".join(nul_lines(rec)) + b"\n" + events(rec, 2))
    py = simulate(stream, rec=rec)
    replay(cpp_build, "--bundle", art.bundle, "--stream", stream, "--report", tmp_path / "c.json")
    c = json.loads((tmp_path / "c.json").read_text())
    assert py["bad_lines"] == {"wrong_type": 2, "invalid_json": 4}
    assert c["bad_lines"] == py["bad_lines"] and c["events"] == py["events"] == 4
    assert [(s["line"], s["kind"]) for s in c["bad_line_samples"]] == \
        [(s["line"], s["kind"]) for s in py["bad_line_samples"]]
    assert [s["what"] for s in c["bad_line_samples"][:2]] == [s["what"] for s in py["bad_line_samples"][:2]]


def test_unpaired_surrogate_escapes_are_the_same_bad_lines_in_both_replays(cpp_build, art, rec, tmp_path):
    """A lone "\\ud800" (in an id, another value or a key) is no character: invalid JSON in both replays;
    a pair ("\\ud83d\\ude00") is one character and an unknown item in both (simulate took lone ones as
    text before)."""
    item = rec.item_ids[0]
    lines = [b'{"user": "u\\ud800", "item": "%s"}' % item.encode(),
             b'{"user": "u1", "item": "%s", "event": "\\udc00"}' % item.encode(),
             b'{"user": "u1", "item": "%s", "x": [{"\\udbff": 1}]}' % item.encode(),
             b'{"user": "u1", "item": "i\\ud83d\\ude00"}',
             b'{"user": "u1", "item": "i\\\\ud800"}']                              # an escaped backslash: text
    stream = tmp_path / "surrogates.jsonl"
    stream.write_bytes(events(rec, 2) + b"\n".join(lines) + b"\n" + events(rec, 2))
    py = simulate(stream, rec=rec)
    replay(cpp_build, "--bundle", art.bundle, "--stream", stream, "--report", tmp_path / "c.json")
    c = json.loads((tmp_path / "c.json").read_text())
    assert py["bad_lines"] == {"invalid_json": 3, "unknown_item": 2}
    assert c["bad_lines"] == py["bad_lines"] and c["events"] == py["events"] == 4
    assert [(s["line"], s["kind"]) for s in c["bad_line_samples"]] == \
        [(s["line"], s["kind"]) for s in py["bad_line_samples"]]


def test_python_json_reads_a_trailing_nul_as_extra_data():
    with pytest.raises(json.JSONDecodeError, match="Extra data"):
        json.loads('{"user": "u"}\x00')


def test_python_runtime_refuses_nul_ids(rec, art):
    fresh = Recommender.open(art.bundle)
    with pytest.raises(FmrlError, match="NUL"):
        fresh.add_items(["i\x001"], np.ones((1, fresh.granularity)))
    with pytest.raises(FmrlError, match="NUL"):
        fresh.new_session().observe(rec.item_ids[0] + "\x00x")
    assert fresh.item_ids == rec.item_ids


def limit_ids() -> list[str]:
    """Ids around the limit: 1,023, 1,024 and 1,025 bytes of ASCII, and 2-, 3- and 4-byte characters that end
    on the limit or straddle it (the limit counts UTF-8 bytes, not characters)."""
    ids = ["a" * (MAX_ID_BYTES + d) for d in (-1, 0, 1)]
    for char in ("\u00e9", "\u20ac", "\U0001d11e"):
        width = len(char.encode())
        for pad in range(width):
            count = (MAX_ID_BYTES - pad) // width
            ids += ["a" * pad + char * count, "a" * pad + char * (count + 1)]
    return ids


def too_long(item_id) -> bool:
    return len(str(item_id).encode()) > MAX_ID_BYTES


def test_id_limit_is_the_same_in_both_replays(cpp_build, art, rec, tmp_path):
    """Up to MAX_ID_BYTES bytes an id is an id (an unknown item, a user's event); one byte more is a
    `wrong_type` bad line in both replays, with the same words; integers count their digits."""
    ids = limit_ids() + [10 ** (MAX_ID_BYTES - 1), 10 ** MAX_ID_BYTES]
    assert 0 < sum(map(too_long, ids)) < len(ids)
    lines = [json.dumps({"user": "u1", "item": i}, ensure_ascii=False).encode() for i in ids]
    lines += [json.dumps({"user": u, "item": rec.item_ids[0]}).encode() for u in ids]   # escapes: \u20ac
    stream = tmp_path / "long.jsonl"
    stream.write_bytes(b"\n".join(lines) + b"\n")
    py = simulate(stream, rec=rec)
    replay(cpp_build, "--bundle", art.bundle, "--stream", stream, "--report", tmp_path / "c.json")
    c = json.loads((tmp_path / "c.json").read_text())
    refused = sum(map(too_long, ids))
    assert py["bad_lines"] == {"unknown_item": len(ids) - refused, "wrong_type": 2 * refused}
    assert py["events"] == len(ids) - refused
    assert c["bad_lines"] == py["bad_lines"] and c["events"] == py["events"]
    wrong = [[(s["line"], s["what"]) for s in r["bad_line_samples"] if s["kind"] == "wrong_type"] for r in (py, c)]
    assert wrong[1] == wrong[0]
    assert {what for _, what in wrong[0]} == {f"'{name}' is longer than 1,024 bytes (the most an id may hold)"
                                              for name in ("user", "item")}


def python_answers(fresh, ids) -> dict:
    """add_items([id]) and then observe(id), one id at a time: "ok" or the FmrlError's message."""
    def answer(call):
        try:
            call()
            return "ok"
        except FmrlError as e:
            return str(e)
    session = fresh.new_session()
    return {str(n): [answer(lambda: fresh.add_items([i], np.ones((1, fresh.granularity)))),
                     answer(lambda: session.observe(i))] for n, i in enumerate(ids)}


def test_add_items_and_observe_apply_the_id_limit_in_both_runtimes(cpp_build, art):
    """Python's add_items / observe and C's fmrl_add_items / fmrl_observe accept the same ids and refuse the
    others (FMRL_ERR_ARGUMENT) with the same message; nothing is added by a refused call."""
    ids = limit_ids() + ["i\ud800", "\udc00" * 342, "\udc00" * 340 + "é", 10 ** MAX_ID_BYTES, ""]
    python = python_answers(Recommender.open(art.bundle), ids)
    c = run_app(cpp_build, r"""
lib.fmrl_add_items.restype = ctypes.c_int
lib.fmrl_add_items.argtypes = [P, ctypes.POINTER(C), SZ, ctypes.POINTER(ctypes.c_float), SZ, ctypes.POINTER(SZ)]
status, rec = open_(args["bundle"])
s = lib.fmrl_granularity(rec)
session = P()
lib.fmrl_session_new(rec, ctypes.byref(session))
def answer(code):
    return "ok" if code == 0 else [code, err()]
for n, item in enumerate(args["ids"]):
    before = lib.fmrl_item_count(rec)
    raw = item.encode("utf-8", "surrogatepass")   # a lone surrogate as the 3 bytes Java's or Python's encoders write
    code = lib.fmrl_add_items(rec, (C * 1)(raw), 1, (ctypes.c_float * s)(*[1.0] * s), s, None)
    out[str(n)] = [answer(code), answer(lib.fmrl_observe(rec, session, raw, None)), lib.fmrl_item_count(rec) - before]
for name, raw in (("bad byte", b"i\xff"), ("cut", b"i\xc3"), ("overlong", b"\xc0\xaf"), ("beyond", b"\xf4\x90\x80\x80")):
    out[name] = [lib.fmrl_add_items(rec, (C * 1)(raw), 1, (ctypes.c_float * s)(*[1.0] * s), s, None), err(),
                 lib.fmrl_observe(rec, session, raw, None), err()]
""", bundle=str(art.bundle), ids=[str(i) for i in ids])
    for n, item in enumerate(ids):
        add, observe, added = c[str(n)]
        assert added == (python[str(n)][0] == "ok"), (n, c[str(n)])
        for c_answer, py_answer in zip((add, observe), python[str(n)]):
            assert c_answer == (py_answer if py_answer == "ok" else [1, py_answer]), (n, c_answer, py_answer)
    assert python[str(len(ids) - 2)] == ["add_items: ids[0] is longer than 1,024 bytes (the most an id may hold)",
                                         "observe: item id is longer than 1,024 bytes (the most an id may hold)"]
    assert python[str(len(ids) - 1)] == ["add_items: ids[0] must not be empty", "observe: item id must not be empty"]
    surrogate = "holds an unpaired surrogate (\\ud800-\\udfff): not Unicode text"
    assert python[str(len(ids) - 5)] == [f"add_items: ids[0] {surrogate}", f"observe: item id {surrogate}"]
    assert python[str(len(ids) - 4)][0].endswith("longer than 1,024 bytes (the most an id may hold)")   # 1,026 bytes
    assert python[str(len(ids) - 3)][0].endswith(surrogate)   # 1,022 bytes: within the limit, not text
    for name in ("bad byte", "cut", "overlong", "beyond"):   # bytes no Python str encodes: refused by C alone
        assert c[name] == [1, "add_items: ids[0] is not UTF-8 text", 1, "observe: item id is not UTF-8 text"], name


@pytest.mark.parametrize("bad", [None, b"abc", True, 1.5, "", ["x"], "a" * (MAX_ID_BYTES + 1)])
def test_observe_refuses_what_is_not_an_id(rec, bad):
    session = rec.new_session()
    with pytest.raises(FmrlError, match="observe: item id"):
        session.observe(bad)
    assert session.unknown == session.observed == 0


# ---- 4. add_items and Session arguments ------------------------------------------------------------

@pytest.mark.parametrize("bad", [None, b"abc", True, False, 1.5, "", ["x"]])
def test_add_items_refuses_ids_that_are_not_str_or_int(art, bad):
    fresh = Recommender.open(art.bundle)
    before = fresh.item_ids
    with pytest.raises(FmrlError, match="add_items"):
        fresh.add_items([bad], np.ones((1, fresh.granularity)))
    assert fresh.item_ids == before


def test_add_items_keys_ints_as_digits(art):
    fresh = Recommender.open(art.bundle)
    assert fresh.add_items([np.int64(12345678), 7, np.str_("s")], np.ones((3, fresh.granularity))) == 3
    assert fresh.item_ids[-3:] == ["12345678", "7", "s"]
    session = fresh.new_session()
    assert session.observe(np.str_("s")) and session.observe(np.int64(7)) and session.added == 2


@pytest.mark.parametrize("value", [1e30, -1e5, 1e39, float("nan")])
def test_add_items_refuses_vectors_outside_the_range_of_real_ones(art, value):
    from fmrl_sdk.runtime.recommender import MAX_ABS_VECTOR

    fresh = Recommender.open(art.bundle)
    vectors = np.ones((2, fresh.granularity))
    vectors[1, 3] = value
    with pytest.raises(FmrlError, match="add_items"):
        fresh.add_items(["a", "b"], vectors)
    assert fresh.num_items == len(fresh.item_ids)
    # the bound itself is accepted, and states and scores stay finite and restorable
    assert fresh.add_items(["edge"], np.full((1, fresh.granularity), MAX_ABS_VECTOR)) == 1
    session = fresh.new_session()
    for _ in range(20):
        session.observe("edge")
    assert np.isfinite([s for _, s in session.recommend(10)]).all()
    fresh.restore(session.to_bytes())


@pytest.mark.parametrize("call,word", [(lambda s: s.recommend(k=2.5), "k"), (lambda s: s.recommend(k=True), "k"),
                                       (lambda s: s.recommend(k="3"), "k"), (lambda s: s.recommend(k=0), "k"),
                                       (lambda s: s.recommend(k=10**6), "k"),
                                       (lambda s: s.recommend(exclude_seen="yes"), "exclude_seen"),
                                       (lambda s: s.observe_index(1.5), "index"),
                                       (lambda s: s.observe_index(True), "index"),
                                       (lambda s: s.observe_index(10**9), "index")])
def test_session_arguments_are_fmrl_errors_naming_them(rec, call, word):
    session = rec.new_session()
    with pytest.raises(FmrlError, match=word):
        call(session)
    assert session.observed == 0


@pytest.mark.parametrize("options,words", [
    ({"on_unknown": "maybe"}, "on_unknown"), ({"bloom_bits": 12}, "bloom bits"), ({"bloom_bits": "2048"}, "bloom_bits"),
    ({"bloom_hashes": 0}, "bloom hashes"), ({"bloom_hashes": 2.0}, "bloom_hashes"),
    ({"exclude_seen": "yes"}, "exclude_seen"), ({"threads": "2"}, "threads")])
def test_bad_options_are_fmrl_errors_naming_them(art, options, words):
    with pytest.raises(FmrlError, match=words):
        Recommender.open(art.bundle, **options)


@pytest.mark.parametrize("k", [0, 10 ** 6, 2.5, True])
def test_top_refuses_k_with_an_fmrl_error(rec, k):
    with pytest.raises(FmrlError, match="top: k"):
        rec.new_session().top(k)


def test_k_out_of_range_and_bad_options_are_still_value_errors(rec, art):
    for call in (lambda s: s.recommend(k=0), lambda s: s.top(0)):
        with pytest.raises(ValueError):
            call(rec.new_session())
    with pytest.raises(ValueError):
        Recommender.open(art.bundle, bloom_hashes=0)
    assert rec.new_session().recommend(k=np.int64(3))  # numpy integers are integers


def test_c_add_items_refuses_what_python_refuses(cpp_build, art):
    """fmrl_add_items: an empty id and a vector beyond MAX_ABS_VECTOR are FMRL_ERR_ARGUMENT, nothing added."""
    out = run_app(cpp_build, r"""
lib.fmrl_add_items.restype = ctypes.c_int
lib.fmrl_add_items.argtypes = [P, ctypes.POINTER(C), SZ, ctypes.POINTER(ctypes.c_float), SZ, ctypes.POINTER(SZ)]
status, rec = open_(args["bundle"])
s = lib.fmrl_granularity(rec)
before = lib.fmrl_item_count(rec)
def add(ids, value):
    names = (C * len(ids))(*[i.encode() for i in ids])
    vectors = (ctypes.c_float * (len(ids) * s))(*([1.0] * (len(ids) * s - 1) + [value]))
    new = SZ()
    code = lib.fmrl_add_items(rec, names, len(ids), vectors, s, ctypes.byref(new))
    return [code, err(), lib.fmrl_item_count(rec) - before]
out["empty"] = add(["ok", ""], 1.0)
out["huge"] = add(["a", "b"], 1e30)
out["big"] = add(["a", "b"], -1e5)
out["edge"] = add(["a", "b"], 1e4)
out["argument"] = 2
""", bundle=str(art.bundle))
    for name, words in (("empty", "must not be empty"), ("huge", "above 10000"), ("big", "above 10000")):
        code, message, added = out[name]
        assert code != 0 and words in message and added == 0, (name, out[name])
    assert out["edge"][0] == 0 and out["edge"][2] == 2


def test_c_null_buffer_with_room_claimed_is_an_argument_error(cpp_build, art):
    """Output buffers: NULL with a non-zero capacity is FMRL_ERR_ARGUMENT naming `out`, not "too small";
    NULL with capacity 0 stays fmrl_session_to_bytes's size query (FMRL_ERR_BUFFER, *size set)."""
    out = run_app(cpp_build, r"""
F = ctypes.POINTER(ctypes.c_float)
lib.fmrl_item_vector.restype, lib.fmrl_item_vector.argtypes = ctypes.c_int, [P, C, F, SZ]
lib.fmrl_session_hidden.restype, lib.fmrl_session_hidden.argtypes = ctypes.c_int, [P, P, F, SZ]
status, rec = open_(args["bundle"])
session = P()
lib.fmrl_session_new(rec, ctypes.byref(session))
first = lib.fmrl_item_id(rec, 1)
size = SZ()
out["to_bytes/null"] = [lib.fmrl_session_to_bytes(rec, session, None, 0, None, 4096, ctypes.byref(size)), err(),
                        size.value]
size = SZ()
out["to_bytes/query"] = [lib.fmrl_session_to_bytes(rec, session, None, 0, None, 0, ctypes.byref(size)), err(),
                         size.value, lib.fmrl_state_bytes(rec)]
out["item_vector"] = [lib.fmrl_item_vector(rec, first, None, 4096), err()]
out["hidden"] = [lib.fmrl_session_hidden(rec, session, None, 4096), err()]
lib.fmrl_session_free(session)
lib.fmrl_close(rec)
""", bundle=str(art.bundle))
    assert out["to_bytes/null"][:2] == [1, "fmrl_session_to_bytes: out is NULL"]
    code, message, size, state_bytes = out["to_bytes/query"]
    assert code == 6 and size == state_bytes and "needs a buffer of" in message
    assert out["item_vector"] == [1, "fmrl_item_vector: out is NULL"]
    assert out["hidden"] == [1, "fmrl_session_hidden: out is NULL"]
