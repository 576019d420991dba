"""The C/C++ runtime (fmrl_sdk/runtime/cpp) against the Python one, on the shared exported test bundle:
fmrl_replay vs `simulate` (events, bad lines, online metrics, every recommendation), session bytes both
ways, the same refusals for tampered bundles and states, the C ABI through ctypes (in a subprocess
without torch, as an app would load it), and the C++ header (fmrl_runtime.hpp) through a program compiled
against it. Built once per session in a temporary folder; skipped, with the reason, only when cmake or a C++
compiler is missing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fmrl_sdk.errors import FmrlError
from fmrl_sdk.runtime import Recommender
from fmrl_sdk.runtime.cpp import cpp_dir
from fmrl_sdk.simulate.commands import simulate
from tests.helpers import rewrite_manifest, copy_bundle, foreign_bundle, KEY, replay, error_line, make_stream


BAD_LINES = [
    "{not json", "[1, 2]", json.dumps({"item": "x"}), json.dumps({"user": "u1", "item": 3.5}),
    json.dumps({"user": "u1", "item": "no-such-item"}), "", "   \t", "\x0c",
    '{"user": "u9", "item": ITEM, "ts": NaN}', '{"user": "u9", "item": ITEM, "ts": Infinity}',
    '{"user": "u9", "item": ITEM, "ts": -NaN}', '{"user": 12345678901234567890123, "item": ITEM}',
    '{"user": "u9", "item": ITEM, "ts": 1e400}', '\ufeff{"user": "u9", "item": ITEM}',
    '{"user": "u9", "item": ITEM, "extra": {"user": null, "ts": "x"}, "ts": 5}',
    '{"user": "u9", "item": ITEM, "ts": 4.5}', '{"user": "u9", "item": ITEM, "ts": 4}',
    '{"user": "u9", "user": null, "item": ITEM}', '{"user": true, "item": ITEM}',
    '{"user": "u9", "item": ITEM, "event": 5}', '{"user": "u9", "item": ITEM, "event": "view"} x',
    '{"user": 7, "item": ITEM}', '{"user": "7", "item": ITEM, "ts": -0}', '{"user": "u9", "item": ""}',
]


def write_bad_lines(stream: Path, item: str) -> None:
    with open(stream, "ab") as f:
        for line in BAD_LINES:
            f.write(line.replace("ITEM", json.dumps(item)).encode() + b"\n")
        f.write(b"\xff\xfe\x00garbage\n")


@pytest.mark.parametrize("exclude_seen", [False, True])
def test_replay_matches_simulate_with_bad_lines(art, rec, dataset, cpp_build, tmp_path, exclude_seen):
    stream = tmp_path / "events.jsonl"
    make_stream(stream, dataset, users=80 if exclude_seen else 300)
    write_bad_lines(stream, dataset.item_ids[0])
    head = [json.loads(line) for line in stream.read_text(errors="replace").splitlines()[:20]]
    with open(stream, "a") as f:  # after the bad lines: valid events (no ts) of users seen before, and ts_backwards
        f.writelines(json.dumps({"user": e["user"], "item": e["item"]}) + "\n" for e in head[:10])
        f.writelines(json.dumps(e) + "\n" for e in head[10:])
    py = simulate(stream, rec=rec, k=10, out=tmp_path / "py.jsonl", exclude_seen=exclude_seen)
    replay(cpp_build, "--bundle", art.bundle, "--stream", stream, "--report", tmp_path / "c.json",
           "--out", tmp_path / "c.jsonl", *(["--exclude-seen"] if exclude_seen else []))
    c = json.loads((tmp_path / "c.json").read_text())
    assert py["bad_lines"] and py["events"] > 300 and c["exclude_seen"] == exclude_seen
    for key in ("lines", "events", "users", "bad_lines", "state_bytes_per_user", "k", "granularity"):
        assert c[key] == py[key], key
    assert [(s["line"], s["kind"]) for s in c["bad_line_samples"]] == \
        [(s["line"], s["kind"]) for s in py["bad_line_samples"]]
    for group in ("online", "online_last_event"):
        assert c[group].keys() == py[group].keys()
        for name in py[group]:
            assert abs(c[group][name] - py[group][name]) <= 1e-6, (group, name)
    assert set(c) >= {"latency_us", "events_per_s", "peak_rss_bytes", "seconds"}
    py_recs = [json.loads(line) for line in open(tmp_path / "py.jsonl")]
    c_recs = [json.loads(line) for line in open(tmp_path / "c.jsonl")]
    assert len(py_recs) == len(c_recs) == py["events"]
    for a, b in zip(py_recs, c_recs):
        assert (a["line"], a["user"], a["item"], a["recs"], a["hit"]) == (b["line"], b["user"], b["item"], b["recs"],
                                                                          b["hit"])
        np.testing.assert_allclose(b["scores"], a["scores"], rtol=0, atol=2e-6)


def user_events(stream: Path, user: str) -> list[str]:
    return [json.loads(line)["item"] for line in open(stream) if json.loads(line)["user"] == user]


def test_state_saved_by_c_restores_in_python(art, rec, dataset, cpp_build, tmp_path):
    stream = tmp_path / "events.jsonl"
    make_stream(stream, dataset, users=40)
    user = dataset.user_ids[3]
    replay(cpp_build, "--bundle", art.bundle, "--stream", stream, "--report", tmp_path / "r.json",
           "--save-state", f"{user}=" + str(tmp_path / "user.state"))
    blob = (tmp_path / "user.state").read_bytes()
    assert len(blob) == rec.state_bytes
    restored = rec.restore(blob)
    session = rec.new_session()
    for item in user_events(stream, user):
        session.observe(item)
    assert restored.observed == session.observed > 0
    for exclude in (False, True):
        got, want = restored.recommend(10, exclude_seen=exclude), session.recommend(10, exclude_seen=exclude)
        assert [i for i, _ in got] == [i for i, _ in want]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=0, atol=1e-5)
    ours = session.to_bytes()
    bloom = rec.bloom_bits // 8
    assert blob[:52] == ours[:52] and blob[-4 - bloom:-4] == ours[-4 - bloom:-4]  # header, seen filter


def test_state_saved_by_python_restores_in_c(art, rec, dataset, cpp_build, tmp_path):
    user = dataset.user_ids[5]
    items = [dataset.item_ids[i - 1] for i in dataset.sequences[5].tolist()]
    half = len(items) // 2
    session = rec.new_session()
    for item in items[:half]:
        session.observe(item)
    (tmp_path / "user.state").write_bytes(session.to_bytes())
    rest = tmp_path / "rest.jsonl"
    rest.write_text("".join(json.dumps({"user": user, "item": item}) + "\n" for item in items[half:]))
    replay(cpp_build, "--bundle", art.bundle, "--stream", rest, "--report", tmp_path / "r.json",
           "--out", tmp_path / "c.jsonl", "--load-state", f"{user}=" + str(tmp_path / "user.state"),
           "--save-state", f"{user}=" + str(tmp_path / "after.state"))
    c_recs = [json.loads(line) for line in open(tmp_path / "c.jsonl")]
    assert len(c_recs) == len(items) - half
    for item, line in zip(items[half:], c_recs):
        want = session.recommend(10, exclude_seen=False)
        assert line["recs"] == [i for i, _ in want]
        np.testing.assert_allclose(line["scores"], [s for _, s in want], rtol=0, atol=1e-5)
        session.observe(item)
    assert rec.restore((tmp_path / "after.state").read_bytes()).observed == session.observed


def test_tampered_bundles_are_refused_with_python_reasons(art, cpp_build, tmp_path):
    def tampered(name, edit):
        bundle = copy_bundle(art.bundle, tmp_path / name)
        edit(bundle)
        return bundle

    def flip(bundle):
        data = bytearray((bundle / "model.pte").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (bundle / "model.pte").write_bytes(bytes(data))

    def escape(bundle):
        manifest = json.loads((bundle / "manifest.json").read_text())
        manifest["files"]["../x"] = "0" * 64
        (bundle / "manifest.json").write_text(json.dumps(manifest))

    cases = [
        tampered("flipped", flip),
        tampered("partial", lambda b: (b / "items.json").unlink()),
        tampered("nomanifest", lambda b: (b / "manifest.json").unlink()),
        tampered("future", lambda b: rewrite_manifest(b, format_version=99)),
        tampered("v1", lambda b: rewrite_manifest(b, format_version=1)),
        tampered("newer", lambda b: rewrite_manifest(b, executorch_version="99.0.0")),
        tampered("blocks", lambda b: rewrite_manifest(b, num_blocks=3)),
        tampered("kmax", lambda b: rewrite_manifest(b, k_max=True)),
        tampered("numitems", lambda b: rewrite_manifest(b, num_items=5)),
        tampered("escape", escape),
        tmp_path / "absent",
    ]
    stream = tmp_path / "one.jsonl"
    stream.write_text("")
    for bundle in cases:
        with pytest.raises(FmrlError) as python_error:
            Recommender.open(bundle)
        result = replay(cpp_build, "--bundle", bundle, "--stream", stream, "--report", tmp_path / "r.json", check=False)
        assert error_line(result) == str(python_error.value), bundle.name


def test_tampered_states_are_refused_with_python_reasons(art, rec, dataset, cpp_build, tmp_path):
    session = rec.new_session()
    for i in dataset.sequences[1].tolist()[:4]:
        session.observe_index(i)
    blob = session.to_bytes()
    other = foreign_bundle(art.bundle, tmp_path / "other")
    foreign = Recommender.open(other)
    nan_state = bytearray(blob)
    nan_state[52:56] = np.float32(np.nan).tobytes()
    import zlib

    nan_state[-4:] = zlib.crc32(bytes(nan_state[:-4])).to_bytes(4, "little")
    flipped = bytearray(blob)
    flipped[100] ^= 1
    future = bytearray(blob)
    future[4] = 9
    states = {"flipped": bytes(flipped), "truncated": blob[:-10], "magic": b"JUNK" + blob[4:], "future": bytes(future),
              "foreign": foreign.new_session().to_bytes(), "nan": bytes(nan_state), "signed": session.to_bytes(key=KEY)}
    stream = tmp_path / "one.jsonl"
    stream.write_text(json.dumps({"user": "u", "item": dataset.item_ids[0]}) + "\n")
    for name, data in states.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(FmrlError) as python_error:
            rec.restore(data)
        result = replay(cpp_build, "--bundle", art.bundle, "--stream", stream, "--report", tmp_path / "r.json",
                        "--load-state", f"u={tmp_path / name}", check=False)
        assert error_line(result) == f"{tmp_path / name}: {python_error.value}", name
    foreign.close()


CTYPES_APP = r"""
import ctypes, json, sys, threading
lib = ctypes.CDLL(sys.argv[1])
bundle, ids, vectors, probe, key = sys.argv[2].encode(), json.loads(sys.argv[3]), json.loads(sys.argv[4]), \
    json.loads(sys.argv[5]), sys.argv[6].encode()
P, I64, SZ = ctypes.c_void_p, ctypes.c_int64, ctypes.c_size_t
lib.fmrl_last_error.restype = ctypes.c_char_p
lib.fmrl_item_id.restype = ctypes.c_char_p
lib.fmrl_item_count.restype = I64
lib.fmrl_state_bytes.restype = SZ
for name in ("fmrl_open", "fmrl_session_new", "fmrl_observe", "fmrl_recommend", "fmrl_add_items", "fmrl_item_vector",
             "fmrl_session_to_bytes", "fmrl_session_restore"):
    getattr(lib, name).restype = ctypes.c_int
lib.fmrl_session_to_bytes.argtypes = [P, P, ctypes.c_char_p, SZ, ctypes.c_char_p, SZ, ctypes.POINTER(SZ)]
lib.fmrl_session_restore.argtypes = [P, ctypes.c_char_p, SZ, ctypes.c_char_p, SZ, ctypes.POINTER(P)]
lib.fmrl_recommend.argtypes = [P, P, ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_char_p),
                               ctypes.POINTER(ctypes.c_float), ctypes.POINTER(I64), ctypes.POINTER(SZ)]
def ok(status):
    if status:
        raise SystemExit(f"status {status}: {lib.fmrl_last_error().decode()}")
rec = P()
ok(lib.fmrl_open(bundle, None, ctypes.byref(rec)))
s = lib.fmrl_state_bytes(rec)
arr = (ctypes.c_char_p * len(ids))(*[i.encode() for i in ids])
flat = (ctypes.c_float * sum(len(v) for v in vectors))(*[x for v in vectors for x in v])
new = SZ()
ok(lib.fmrl_add_items(rec, arr, SZ(len(ids)), flat, SZ(len(vectors[0])), ctypes.byref(new)))
def top(session, k=10, exclude=0):
    out_ids, out_scores, n = (ctypes.c_char_p * k)(), (ctypes.c_float * k)(), SZ(k)
    ok(lib.fmrl_recommend(rec, session, k, exclude, out_ids, out_scores, None, ctypes.byref(n)))
    return [[out_ids[i].decode(), out_scores[i]] for i in range(n.value)]
results = {}
def user(name, items):
    session = P()
    ok(lib.fmrl_session_new(rec, ctypes.byref(session)))
    for item in items:
        ok(lib.fmrl_observe(rec, session, item.encode(), None))
    results[name] = [top(session), top(session, 10, 1)]
    buf = ctypes.create_string_buffer(s + 32)
    size = SZ()
    ok(lib.fmrl_session_to_bytes(rec, session, key, SZ(len(key)), buf, SZ(s + 32), ctypes.byref(size)))
    back = P()
    ok(lib.fmrl_session_restore(rec, buf.raw[:size.value], size, key, SZ(len(key)), ctypes.byref(back)))
    results[name + "/restored"] = top(back)
threads = [threading.Thread(target=user, args=(str(n), items)) for n, items in enumerate(probe)]
[t.start() for t in threads]
[t.join() for t in threads]
vec = (ctypes.c_float * 4096)()
ok(lib.fmrl_item_vector(rec, ids[0].encode(), vec, SZ(4096)))
results["vector"] = [vec[i] for i in range(len(vectors[0]))]
results["count"] = lib.fmrl_item_count(rec)
print(json.dumps(results))
"""


def test_c_abi_through_ctypes_matches_python(art, rec, dataset, cpp_build, tmp_path):
    """add_items, item vectors, observe (added items too), recommend with and without seen items,
    signed bytes round trip, four threads sharing one recommender."""
    size = rec.granularity
    rng = np.random.default_rng(0)
    hidden = rec.new_session().hidden
    ids = ["new-a", "new-b"]
    vectors = (rng.normal(size=(2, size)) + 3 * hidden / np.linalg.norm(hidden)).astype(np.float32)
    probe = [[dataset.item_ids[i - 1] for i in dataset.sequences[u].tolist()[:6]] + ["new-a", "no-such"]
             for u in range(4)]
    fresh = Recommender.open(art.bundle)
    fresh.add_items(ids, vectors)
    lib = next(p for p in cpp_build.iterdir() if p.name.startswith("libfmrl_runtime"))
    out = subprocess.run([sys.executable, "-c", CTYPES_APP, str(lib), str(art.bundle), json.dumps(ids),
                          json.dumps(vectors.tolist()), json.dumps(probe), KEY.decode()],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["count"] == rec.num_items + 2
    np.testing.assert_array_equal(np.float32(got["vector"]), vectors[0])
    for n, items in enumerate(probe):
        session = fresh.new_session()
        for item in items:
            session.observe(item)
        for exclude, c_top in zip((False, True), got[str(n)]):
            want = session.recommend(10, exclude_seen=exclude)
            assert [i for i, _ in c_top] == [i for i, _ in want]
            np.testing.assert_allclose([s for _, s in c_top], [s for _, s in want], rtol=0, atol=1e-5)
        assert got[f"{n}/restored"] == got[str(n)][0]
    fresh.close()


HPP_CALLER = r"""
#include <cstdio>
#include <string>
#include <vector>

#include "fmrl_runtime.hpp"

template <typename Call>
void report(const char* name, Call call) {
  try {
    call();
    std::printf("%s\tnone\n", name);
  } catch (const fmrl::RuntimeError& e) {
    std::printf("%s\t%d\t%s\n", name, static_cast<int>(e.status), e.what());
  }
}

int main(int, char** argv) {
  const std::string bundle = argv[1], item = argv[2], nul("\0x", 2);
  report("path", [&] { fmrl::Recommender cut(bundle + nul); });
  fmrl::Recommender rec(bundle);
  const size_t s = static_cast<size_t>(rec.granularity());
  report("add_items", [&] { rec.add_items({"fine", "i" + nul}, std::vector<float>(2 * s, 0.5f), s); });
  report("add_items-short", [&] { rec.add_items({"fine", "too"}, std::vector<float>(s, 0.5f), s); });
  fmrl::Session session = rec.new_session();
  report("observe", [&] { session.observe(item + nul); });
  report("observe-known", [&] { session.observe(item); });
  std::printf("added\t%lld\n", static_cast<long long>(fmrl_item_count(rec.get()) - fmrl_num_items(rec.get())));
  return 0;
}
"""


def test_cpp_header_refuses_strings_holding_nul(art, rec, cpp_build, tmp_path):
    """fmrl_runtime.hpp takes std::string, which may hold NUL; the C ABI would read it cut there ("i\0001" as
    "i", a path as its prefix). The header refuses it with RuntimeError(FMRL_ERR_ARGUMENT), nothing added; and
    add_items' vectors must hold ids x dims floats (the library would read past a shorter vector)."""
    cxx = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    source, exe = tmp_path / "caller.cpp", tmp_path / "caller"
    source.write_text(HPP_CALLER)
    built = subprocess.run([cxx, "-std=c++17", "-Wall", "-Wextra", "-Werror", str(source), f"-I{cpp_dir() / 'include'}",
                            f"-I{cpp_build / 'include'}", f"-L{cpp_build}", "-lfmrl_runtime",
                            f"-Wl,-rpath,{cpp_build}", "-o", str(exe)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    ran = subprocess.run([str(exe), str(art.bundle), rec.item_ids[0]], capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    got = {line.split("\t")[0]: line.split("\t")[1:] for line in ran.stdout.splitlines()}
    assert got["path"] == ["1", "fmrl::Recommender: bundle_path must not contain NUL characters"]
    assert got["add_items"] == ["1", "add_items: ids[1] must not contain NUL characters"]
    assert got["observe"] == ["1", "observe: item id must not contain NUL characters"]
    assert got["add_items-short"] == ["1", f"add_items: expected 2 x {rec.granularity} floats, got {rec.granularity}"]
    assert got["observe-known"] == ["none"] and got["added"] == ["0"]
