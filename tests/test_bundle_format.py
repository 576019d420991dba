"""Bundle format 3 (docs/bundle-format.md) in both runtimes, against the golden files in tests/golden/
(tests/golden/make_golden.py made them with the real export): the fingerprint over the manifest's bytes,
a Python-saved session state restored and saved again byte for byte, the limits of the session header
(edge_manifests.json: the same acceptances and refusals, the same messages), and the one-file bundle
(.fmrlb) opened by path, by fd + offset + length inside a larger file and from a buffer, with the same
recommendations as the directory, and the same clean refusals of damaged files. The C runtime runs through
ctypes in a subprocess without torch (tests/test_c_abi.py's run_app), built by test_cpp_runtime's fixture.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
from pathlib import Path

import pytest

from fmrl_sdk.errors import FmrlError
from fmrl_sdk.runtime import Recommender, load_bundle, load_bundle_bytes
from fmrl_sdk.runtime.bundle import FINGERPRINT_PREFIX, FORMAT_VERSION, pack_bundle_file, read_container
from tests.helpers import run_app

GOLDEN = Path(__file__).resolve().parent / "golden"
TINY, TINY_FILE = GOLDEN / "tiny", GOLDEN / "tiny.fmrlb"
EXPECTED = json.loads((GOLDEN / "golden.json").read_text())
EDGES = json.loads((GOLDEN / "edge_manifests.json").read_text())["cases"]
# a longer stream than the golden events: every item a few times, some unknown ids
STREAM = EXPECTED["events"] + [f"i{(7 * k) % 40}" for k in range(60)] + ["nope", "i1"]

# The C side of every comparison: open each case ({"kind": "path" | "fd" | "buffer", "path", "offset",
# "length", "shift"}), report the status and message, and for an opened bundle its fingerprint, the top-10
# after `events`, the state saved after them and the golden state restored and saved again.
C_APP = r"""
import os
for name, res, argt in [
    ("fmrl_open_fd", ctypes.c_int, [ctypes.c_int, ctypes.c_uint64, ctypes.c_uint64, P, ctypes.POINTER(P)]),
    ("fmrl_open_buffer", ctypes.c_int, [P, SZ, P, ctypes.POINTER(P)]),
    ("fmrl_session_restore", ctypes.c_int, [P, C, SZ, C, SZ, ctypes.POINTER(P)]),
    ("fmrl_recommend", ctypes.c_int, [P, P, ctypes.c_int, ctypes.c_int, ctypes.POINTER(C), P, P, ctypes.POINTER(SZ)])]:
    getattr(lib, name).restype, getattr(lib, name).argtypes = res, argt
KEEP = []

def open_case(case):
    rec = P()
    if case["kind"] == "path":
        return lib.fmrl_open(case["path"].encode(), None, ctypes.byref(rec)), rec
    if case["kind"] == "fd":
        fd = os.open(case["path"], os.O_RDONLY)
        try:
            return lib.fmrl_open_fd(fd, case["offset"], case["length"], None, ctypes.byref(rec)), rec
        finally:
            os.close(fd)
    data = open(case["path"], "rb").read()
    raw = ctypes.create_string_buffer(len(data) + 128)
    KEEP.append(raw)  # alive until fmrl_close (the buffer contract)
    base = (ctypes.addressof(raw) + 63) // 64 * 64 + case.get("shift", 0)
    ctypes.memmove(base, data, len(data))
    return lib.fmrl_open_buffer(ctypes.c_void_p(base), len(data), None, ctypes.byref(rec)), rec

def saved(rec, session):
    size = SZ()
    lib.fmrl_session_to_bytes(rec, session, None, 0, None, 0, ctypes.byref(size))
    buf = ctypes.create_string_buffer(size.value)
    assert lib.fmrl_session_to_bytes(rec, session, None, 0, buf, size.value, ctypes.byref(size)) == 0, err()
    return buf.raw[:size.value]

results = []
for case in args["cases"]:
    status, rec = open_case(case)
    got = {"status": status, "error": err()}
    if status == 0:
        fp = ctypes.create_string_buffer(16)
        lib.fmrl_fingerprint(rec, fp)
        got["fingerprint"] = fp.raw.hex()
        s = P()
        lib.fmrl_session_new(rec, ctypes.byref(s))
        for item in args["events"]:
            assert lib.fmrl_observe(rec, s, item.encode(), None) == 0, err()
        ids, n = (C * 10)(), SZ(10)
        assert lib.fmrl_recommend(rec, s, 10, 0, ids, None, None, ctypes.byref(n)) == 0, err()
        got["top10"] = [ids[i].decode() for i in range(n.value)]
        got["state"] = saved(rec, s).hex()
        lib.fmrl_session_free(s)
        golden = bytes.fromhex(args["golden_state"])
        r = P()
        got["restore"] = [lib.fmrl_session_restore(rec, golden, len(golden), None, 0, ctypes.byref(r)), err()]
        if r:
            got["restored"] = saved(rec, r).hex()
            lib.fmrl_session_free(r)
        lib.fmrl_close(rec)
    results.append(got)
out["results"] = results
"""


def run_c(build: Path, cases: list[dict], events: list[str] = STREAM) -> list[dict]:
    return run_app(build, C_APP, cases=cases, events=events,
                   golden_state=(GOLDEN / "session_state.bin").read_bytes().hex())["results"]


def py_open(case: dict) -> Recommender:
    if case["kind"] == "path":
        return Recommender.open(case["path"])
    if case["kind"] == "fd":
        fd = os.open(case["path"], os.O_RDONLY)
        try:
            return Recommender.open_fd(fd, case["offset"], case["length"])
        finally:
            os.close(fd)
    shift = case.get("shift", 0)
    return Recommender.open_bytes(memoryview(b"\0" * shift + Path(case["path"]).read_bytes())[shift:])


def py_refusal(case: dict) -> str:
    """The Python runtime's message for a bundle it must refuse (the checks before the program loads)."""
    with pytest.raises(FmrlError) as caught:
        if case["kind"] == "path":
            load_bundle(case["path"])
        elif case["kind"] == "fd":
            fd = os.open(case["path"], os.O_RDONLY)
            try:
                Recommender.open_fd(fd, case["offset"], case["length"])
            finally:
                os.close(fd)
        else:
            load_bundle_bytes(Path(case["path"]).read_bytes())
    return str(caught.value)


def py_run(rec: Recommender, events=STREAM) -> dict:
    session = rec.new_session()
    for item in events:
        session.observe(item)
    restored = rec.restore((GOLDEN / "session_state.bin").read_bytes())
    return {"fingerprint": rec.fingerprint, "top10": [item for item, _ in session.recommend(10)],
            "state": session.to_bytes().hex(), "restored": restored.to_bytes().hex()}


def same_fd(message: str) -> str:
    return re.sub(r"fd \d+", "fd N", message)


# ----------------------------------------------------------------------------------------------
# Golden files: fingerprint and session layout


def test_golden_fingerprint_is_the_manifest_bytes_hash():
    manifest = (TINY / "manifest.json").read_bytes()
    want = hashlib.sha256(FINGERPRINT_PREFIX + manifest).digest()[:16].hex()
    assert FINGERPRINT_PREFIX == b"fmrl-bundle-v3\0"
    assert want == EXPECTED["fingerprint"]
    assert json.loads(manifest)["format_version"] == FORMAT_VERSION == 3
    assert load_bundle(TINY).fingerprint.hex() == want
    assert load_bundle(TINY_FILE).fingerprint.hex() == want
    parts = read_container(memoryview(TINY_FILE.read_bytes()), TINY_FILE)
    assert bytes(parts["manifest.json"]) == manifest      # the file's manifest part is the directory's
    assert {name: bytes(data) for name, data in parts.items()} == {p.name: p.read_bytes() for p in TINY.iterdir()}


def test_golden_state_round_trips_in_python():
    golden = (GOLDEN / "session_state.bin").read_bytes()
    with Recommender.open(TINY) as rec:
        assert rec.restore(golden).to_bytes() == golden
        assert rec.state_bytes == len(golden)


def test_golden_files_in_both_runtimes(cpp_build):  # noqa: F811
    """The same fingerprint, the golden state restored and saved byte for byte, the same top-10 and the same
    saved state after the events, for the directory and the one-file bundle, in Python and in C."""
    cases = [{"kind": "path", "path": str(TINY)}, {"kind": "path", "path": str(TINY_FILE)}]
    c = run_c(cpp_build, cases)
    golden = (GOLDEN / "session_state.bin").read_bytes().hex()
    py = [py_run(py_open(case)) for case in cases]
    for got, want in zip(c, py):
        assert got["status"] == 0, got["error"]
        assert got["fingerprint"] == want["fingerprint"] == EXPECTED["fingerprint"]
        assert got["restore"] == [0, ""] and got["restored"] == want["restored"] == golden
        assert got["top10"] == want["top10"]
        assert got["state"] == want["state"]        # Python-saved and C-saved: byte-identical
    with Recommender.open(TINY) as rec:             # the golden state: these events, these recommendations
        assert py_run(rec, EXPECTED["events"])["top10"] == EXPECTED["top10"]


# ----------------------------------------------------------------------------------------------
# Limits: one set, the same messages


def edge_variants(tmp_path: Path) -> list[tuple[dict, dict, str]]:
    """(edge case, C/Python case as a directory, expected message) and the same as a buffer."""
    manifest = json.loads((TINY / "manifest.json").read_text())
    files = {name: (TINY / name).read_bytes() for name in manifest["files"]}
    out = []
    for i, edge in enumerate(EDGES):
        changed = {**manifest, **edge["changes"]}
        folder = tmp_path / f"edge{i}"
        shutil.copytree(TINY, folder)
        text = json.dumps(changed, indent=2).encode()
        (folder / "manifest.json").write_bytes(text)
        blob = tmp_path / f"edge{i}.fmrlb"
        blob.write_bytes(pack_bundle_file(text, files))
        out.append((edge, {"kind": "path", "path": str(folder)}, f"{folder}/{edge['error']}"))
        out.append((edge, {"kind": "buffer", "path": str(blob)}, f"<buffer>/{edge['error']}"))
    return out


def test_edge_manifests_python(tmp_path):
    for edge, case, expected in edge_variants(tmp_path):
        assert py_refusal(case) == expected, edge["name"]


def test_edge_manifests_same_in_c(tmp_path, cpp_build):  # noqa: F811
    variants = edge_variants(tmp_path)
    c = run_c(cpp_build, [case for _, case, _ in variants], events=[])
    for (edge, case, expected), got in zip(variants, c):
        assert got["status"] == 2 and got["error"] == expected, edge["name"]
    names = {edge["name"] for edge in EDGES}
    assert {"granularity 65535 accepted", "granularity 65536 refused", "k_max 65535 accepted",
            "k_max 65536 refused"} <= names


def test_python_saves_every_state_the_limits_allow():
    """The session header stores rows, granularity and k_max as uint16: the largest values the limits
    accept fit (Python used to accept 65536 and then fail in to_bytes)."""
    from fmrl_sdk.runtime import bundle
    from fmrl_sdk.runtime.recommender import _HEADER

    _HEADER.pack(b"FMRS", 2, 2 * bundle.MAX_BLOCKS, bundle.MAX_GRANULARITY, bundle.MAX_K_MAX, 4, 0, 256,
                 bytes(16), 0, 0, 0)
    with pytest.raises(struct.error):
        _HEADER.pack(b"FMRS", 2, 2, bundle.MAX_GRANULARITY + 1, 1, 4, 0, 256, bytes(16), 0, 0, 0)


# ----------------------------------------------------------------------------------------------
# The one-file bundle


def test_export_writes_the_directory_and_the_file(art):
    """`export` (format "both", the default) writes NAME.fmrlb beside the directory from the same bytes."""
    file = art.bundle.with_name(art.bundle.name + ".fmrlb")
    parts = read_container(memoryview(file.read_bytes()), file)
    assert list(parts)[0] == "manifest.json"
    assert {name: bytes(data) for name, data in parts.items()} == \
        {p.name: p.read_bytes() for p in art.bundle.iterdir()}
    assert load_bundle(file).fingerprint == load_bundle(art.bundle).fingerprint


def one_file_cases(tmp_path: Path) -> list[dict]:
    data = TINY_FILE.read_bytes()
    inside = tmp_path / "assets.bin"   # junk before and after, as in an APK
    inside.write_bytes(os.urandom(1000) + data + os.urandom(333) + b"\0" * 4096 + data + os.urandom(50))
    return [{"kind": "path", "path": str(TINY)},
            {"kind": "path", "path": str(TINY_FILE)},
            {"kind": "fd", "path": str(inside), "offset": 1000, "length": len(data)},           # not aligned: copied
            {"kind": "fd", "path": str(inside), "offset": 1000 + len(data) + 333 + 4096, "length": len(data)},
            {"kind": "buffer", "path": str(TINY_FILE)},                                          # aligned: in place
            {"kind": "buffer", "path": str(TINY_FILE), "shift": 1}]                               # copied once


def test_one_file_forms_recommend_as_the_directory(tmp_path, cpp_build):  # noqa: F811
    cases = one_file_cases(tmp_path)
    c = run_c(cpp_build, cases)
    py = [py_run(py_open(case)) for case in cases]
    for case, got, want in zip(cases, c, py):
        assert got["status"] == 0, (case, got["error"])
        for key in ("fingerprint", "top10", "state", "restored"):
            assert got[key] == want[key] == py[0][key], (case, key)


def test_open_bytes_uses_the_buffer_in_place():
    data = bytearray(TINY_FILE.read_bytes())
    bundle = load_bundle_bytes(data)
    rows = bundle.item_table.rows
    assert not rows.flags.owndata and rows.base is not None
    with pytest.raises(BufferError):   # the buffer is held: it cannot be resized under the bundle
        data.extend(b"x")


def damaged(tmp_path: Path) -> list[tuple[str, dict, str]]:
    """(name, case, a fragment of the message) for damaged one-file bundles."""
    data = TINY_FILE.read_bytes()
    count = struct.unpack_from("<I", data, 12)[0]
    entries = [struct.unpack_from("<QQ48s", data, 16 + 64 * i) for i in range(count)]
    manifest = (TINY / "manifest.json").read_bytes()
    files = {name: (TINY / name).read_bytes() for name in json.loads(manifest)["files"]}

    def with_entry(i, offset=None, size=None, name=None) -> bytes:
        out = bytearray(data)
        o, s, n = entries[i]
        struct.pack_into("<QQ48s", out, 16 + 64 * i, o if offset is None else offset, s if size is None else size,
                         n if name is None else name)
        return bytes(out)

    def swap01() -> bytes:
        out = bytearray(data)
        out[16:80], out[80:144] = data[80:144], data[16:80]
        return bytes(out)

    program = entries[[n.rstrip(b"\0") for _, _, n in entries].index(b"model.pte")]
    flipped = bytearray(data)
    flipped[program[0] + program[1] // 2] ^= 0xFF
    variants = {
        "empty": (b"", "bad magic or too short: 0 bytes"),
        "bad magic": (b"NOTABNDL" + data[8:], "bad magic"),
        "truncated in the index": (data[:100], "truncated bundle file (100 bytes; its index needs"),
        "truncated in a part": (data[:-50], "lie outside the file"),
        "container version 2": (data[:8] + struct.pack("<I", 2) + data[12:], "container version 2"),
        "no entries": (data[:12] + struct.pack("<I", 0) + data[16:], "lists 0 entries"),
        "65 entries": (data[:12] + struct.pack("<I", 65) + data[16:], "lists 65 entries"),
        "misaligned": (with_entry(1, offset=entries[1][0] + 8), "is not a multiple of 64"),
        "inside the index": (with_entry(1, offset=64), "is not a multiple of 64 after the index"),
        "overlap": (with_entry(2, offset=entries[1][0]), "overlap"),
        "size beyond the file": (with_entry(3, size=1 << 63), "lie outside the file"),
        "offset beyond the file": (with_entry(3, offset=1 << 40), "lie outside the file"),
        "manifest not first": (swap01(), "the first entry is"),
        "slash in a name": (with_entry(1, name=b"a/b"), "bad name"),
        "dots in a name": (with_entry(1, name=b"..x"), "bad name"),
        "empty name": (with_entry(1, name=b""), "bad name"),
        "NUL inside a name": (with_entry(1, name=b"ab\0cd"), "bad name"),
        "not UTF-8": (with_entry(1, name=b"\xff\xfe"), "bad name"),
        "a name twice": (with_entry(2, name=entries[1][2]), "appears twice"),
        "wrong sha256": (bytes(flipped), "model.pte: sha256 mismatch"),
        "a part not listed": (pack_bundle_file(manifest, {**files, "extra.bin": b"x"}), "holds extra.bin, not listed"),
        "a listed part missing": (pack_bundle_file(manifest, {k: v for k, v in files.items() if k != "cold_start.json"}),
                                  "cold_start.json is listed in the manifest but not in the bundle file"),
        # JSON parsers disagree on which of two equal keys wins: both runtimes refuse (the inner object that
        # closes first is named, as Python's object_pairs_hook sees it)
        "a key twice": (pack_bundle_file(manifest.replace(b"{", b'{"profile": "a", "profile": "b", ', 1), files),
                        "invalid JSON in the manifest (duplicate key 'profile')"),
        "a key twice inside": (pack_bundle_file(manifest.replace(b"{", b'{"x": 1, "x": {"y": 1, "y": 2}, ', 1), files),
                               "invalid JSON in the manifest (duplicate key 'y')"),
    }
    out = []
    for i, (name, (blob, fragment)) in enumerate(variants.items()):
        path = tmp_path / f"bad{i}.fmrlb"
        path.write_bytes(blob)
        out.append((name, {"kind": "buffer", "path": str(path)}, fragment))
        if name in ("empty", "truncated in the index", "truncated in a part", "wrong sha256"):
            out.append((name + " (path)", {"kind": "path", "path": str(path)}, fragment))
    size = len(data)
    out += [("fd range past the end", {"kind": "fd", "path": str(TINY_FILE), "offset": 64, "length": size},
             f"lies outside the file ({size} bytes)"),
            ("fd offset past the end", {"kind": "fd", "path": str(TINY_FILE), "offset": size + 1, "length": 0},
             "lies outside the file"),
            ("fd too short", {"kind": "fd", "path": str(TINY_FILE), "offset": 0, "length": 10}, "too short: 10 bytes"),
            ("no such file", {"kind": "path", "path": str(tmp_path / "missing.fmrlb")}, "bundle directory not found")]
    return out


def test_damaged_files_are_refused_alike(tmp_path, cpp_build):  # noqa: F811
    cases = damaged(tmp_path)
    c = run_c(cpp_build, [case for _, case, _ in cases], events=[])
    for (name, case, fragment), got in zip(cases, c):
        message = py_refusal(case)
        assert fragment in message, (name, message)
        assert got["status"] == 2, (name, got)
        assert same_fd(got["error"]) == same_fd(message), name
