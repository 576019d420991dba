"""The C ABI's evolution contract (fmrl_sdk/runtime/cpp/include/fmrl_runtime.h): options structs sized by
struct_size (callers from before and after a field both work), one version from the Python package, status
strings, the log hook, getters that say why they failed, and the process-wide thread pool rule. Through
ctypes in subprocesses without torch, as an app loads the library, plus one C program compiled against the
header. Uses test_cpp_runtime's build.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

import fmrl_sdk
from fmrl_sdk.ids import MAX_ID_BYTES
from fmrl_sdk.jsonio import MAX_JSONL_LINE_BYTES
from fmrl_sdk.runtime.cpp import cpp_dir
from tests.helpers import rewrite_manifest, copy_bundle, run_app

STATUSES = ["FMRL_OK", "FMRL_ERR_ARGUMENT", "FMRL_ERR_BUNDLE", "FMRL_ERR_STATE", "FMRL_ERR_UNKNOWN_ITEM",
            "FMRL_ERR_PROGRAM", "FMRL_ERR_BUFFER", "FMRL_ERR_INTERNAL"]


def ctypes_layout(*values: int) -> bytes:
    """fmrl_open_options' bytes on a little-endian 64-bit host: struct_size, then six 32-bit fields."""
    return values[0].to_bytes(8, "little") + b"".join(v.to_bytes(4, "little") for v in values[1:])


@pytest.fixture(scope="module")
def newer_bundle(art, tmp_path_factory):
    """The test bundle claiming a newer ExecuTorch: refused only while check_executorch_version is on."""
    bundle = copy_bundle(art.bundle, tmp_path_factory.mktemp("abi") / "newer")
    rewrite_manifest(bundle, executorch_version="99.0.0")
    return bundle


OPTIONS_APP = r"""
ARG, BUNDLE = 1, 2
# layouts: this header's; one from before its last field; one from before its last two (no tail padding:
# sizeof is its struct_size); one from after, with a field this library does not know
class Before1(ctypes.Structure):
    _fields_ = Options._fields_[:-1]
class Before2(ctypes.Structure):
    _fields_ = Options._fields_[:-2]
class After(ctypes.Structure):
    _fields_ = Options._fields_ + [("future", ctypes.c_uint64)]


def make(cls, size, **fields):
    # the struct in a 64-byte buffer whose bytes past struct_size are 0: a field read from there would
    # be threads 0 and check_executorch_version off
    buf = ctypes.create_string_buffer(64)
    o = cls.from_buffer(buf)
    assert lib.fmrl_open_options_init_size(ctypes.byref(o), ctypes.sizeof(cls)) == 0, err()
    for name, value in dict(fields, struct_size=size).items():
        setattr(o, name, value)
    if size < 64:
        ctypes.memset(ctypes.addressof(buf) + size, 0, 64 - size)
    return buf


def attempt(bundle, buf):
    status, rec = open_(bundle, buf)
    result = [status, err(), lib.fmrl_state_bytes(rec) if status == 0 else 0]
    lib.fmrl_close(rec)
    return result

defaults = Options()
lib.fmrl_open_options_init_size(ctypes.byref(defaults), ctypes.sizeof(Options))
out["defaults"] = {name: getattr(defaults, name) for name, _ in Options._fields_}
out["state_bytes_default"] = attempt(args["bundle"], None)[2]
cases = {"current": (Options, ctypes.sizeof(Options)), "before1": (Before1, Before1.threads.offset + 4),
         "before2": (Before2, ctypes.sizeof(Before2)), "after": (After, ctypes.sizeof(After))}
for name, (cls, size) in cases.items():
    for bundle in ("bundle", "newer"):
        out[f"{name}/{bundle}"] = attempt(args[bundle], make(cls, size, bloom_bits=1024, check_executorch_version=0)
                                          if hasattr(cls, "check_executorch_version") else make(cls, size, bloom_bits=1024))
for size in (0, 4, 1 << 32):  # 1 << 32: an options struct from before struct_size ({0, 1, ...} read as size_t)
    out[f"size/{size}"] = attempt(args["bundle"], make(Options, size))[:2]
# init writes the caller's struct_size bytes, no more (fields it does not know: 0)
for size in (16, 40):
    buf = ctypes.create_string_buffer(b"\xab" * 64, 64)
    out[f"init{size}"] = [lib.fmrl_open_options_init_size(buf, size), buf.raw[:48].hex()]
out["init_null"] = [lib.fmrl_open_options_init_size(None, 32), err()]
out["init_small"] = [lib.fmrl_open_options_init_size(buf, 4), err()]
"""


def test_options_struct_size_before_and_after(art, newer_bundle, cpp_build, rec):
    got = run_app(cpp_build, OPTIONS_APP, bundle=str(art.bundle), newer=str(newer_bundle))
    assert got["defaults"] == {"struct_size": 32, "on_unknown": 0, "exclude_seen": 0, "bloom_bits": 2048,
                               "bloom_hashes": 4, "threads": 0, "check_executorch_version": 1}
    smaller = got["state_bytes_default"] - (2048 - 1024) // 8  # bloom_bits 1024 was read
    assert got["state_bytes_default"] == rec.state_bytes
    for name in ("current", "after"):  # every field read: the newer bundle opens (check off)
        assert got[f"{name}/bundle"] == [0, "", smaller], name
        assert got[f"{name}/newer"] == [0, "", smaller], name
    for name in ("before1", "before2"):  # fields past struct_size take defaults: the check stays on
        assert got[f"{name}/bundle"] == [0, "", smaller], name
        status, message, _ = got[f"{name}/newer"]
        assert status == 2 and "99.0.0" in message, (name, message)
    for size in (0, 4, 1 << 32):
        status, message = got[f"size/{size}"]
        assert status == 1 and f"options->struct_size is {size}" in message
    defaults = ctypes_layout(32, 0, 0, 2048, 4, 0, 1).hex()
    assert got["init16"] == [0, (16).to_bytes(8, "little").hex() + defaults[16:32] + "ab" * 32]
    assert got["init40"] == [0, (40).to_bytes(8, "little").hex() + defaults[16:] + "00" * 8 + "ab" * 8]
    assert got["init_null"] == [1, "fmrl_open_options_init: options is NULL"]
    assert got["init_small"] == [1, "fmrl_open_options_init: struct_size 4 out of range [sizeof(size_t), 4096]"]


def test_version_is_the_python_package_version(cpp_build, tmp_path):
    """fmrl_version() and the header's macros are fmrl_sdk.__version__; a C caller compiled against the
    header sees FMRL_CHECK_VERSION() true, and fmrl_open_options_init fills its own sizeof."""
    major, minor, patch = map(int, fmrl_sdk.__version__.split("."))
    number = major * 10000 + minor * 100 + patch
    got = run_app(cpp_build, 'out["version"] = [lib.fmrl_version().decode(), lib.fmrl_version_number()]')
    assert got["version"] == [fmrl_sdk.__version__, number]
    pyproject = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    assert 'version = { attr = "fmrl_sdk.__version__" }' in pyproject   # the one source

    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        pytest.skip("needs a C compiler")
    source = tmp_path / "caller.c"
    source.write_text(r"""
#include <stdio.h>
#include "fmrl_runtime.h"
int main(void) {
  fmrl_open_options o;
  fmrl_status status = fmrl_open_options_init(&o);
  printf("%s %d %d %d %d %s\n", FMRL_VERSION_STRING, FMRL_VERSION_NUMBER, FMRL_CHECK_VERSION() ? 1 : 0,
         (int)status, o.struct_size == sizeof o && o.bloom_bits == 2048, fmrl_status_string(FMRL_ERR_STATE));
  return 0;
}
""")
    exe = tmp_path / "caller"
    for extra in ([], ["-DFMRL_STATIC"]):  # the static-build spelling of FMRL_API compiles too
        built = subprocess.run([cc, "-std=c99", "-Wall", "-Wextra", "-pedantic", "-Werror", *extra, str(source),
                                f"-I{cpp_dir() / 'include'}", f"-I{cpp_build / 'include'}", f"-L{cpp_build}",
                                "-lfmrl_runtime", f"-Wl,-rpath,{cpp_build}", "-o", str(exe)],
                               capture_output=True, text=True)
        assert built.returncode == 0, built.stderr
    ran = subprocess.run([str(exe)], capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split(" ", 5) == [fmrl_sdk.__version__, str(number), "1", "0", "1",
                                        "FMRL_ERR_STATE: the session state was refused\n"]


@pytest.mark.parametrize("macro,value", [("FMRL_MAX_ID_BYTES", MAX_ID_BYTES),
                                         ("FMRL_MAX_JSONL_LINE_BYTES", MAX_JSONL_LINE_BYTES)])
def test_c_limits_are_python_s(cpp_build, tmp_path, macro, value):
    """Each limit both runtimes apply is spelled once in C (fmrl_runtime.h) and once in Python (fmrl_sdk.ids,
    fmrl_sdk.jsonio): the two spellings are equal."""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        pytest.skip("needs a C compiler")
    source, exe = tmp_path / "limit.c", tmp_path / "limit"
    source.write_text('#include <stdio.h>\n#include "fmrl_runtime.h"\n'
                      f'int main(void) {{ printf("%ld\\n", (long){macro}); return 0; }}\n')
    built = subprocess.run([cc, "-std=c99", "-Wall", "-Werror", str(source), f"-I{cpp_dir() / 'include'}",
                            f"-I{cpp_build / 'include'}", "-o", str(exe)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    assert subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout == f"{value}\n"


def test_status_strings(cpp_build):
    got = run_app(cpp_build, 'out["s"] = [lib.fmrl_status_string(v).decode() for v in range(-2, 12)]')
    names = got["s"][2:2 + len(STATUSES)]
    assert [s.split(":")[0] for s in names] == STATUSES and len(set(names)) == len(STATUSES)
    assert all(len(s) > len(n) + 4 for s, n in zip(names, STATUSES))
    assert got["s"][:2] + got["s"][2 + len(STATUSES):] == ["unknown fmrl_status"] * 6


GETTERS_APP = r"""
status, rec = open_(args["bundle"])
assert status == 0, err()
null = {}
for name in ("fmrl_granularity", "fmrl_k_max", "fmrl_num_items", "fmrl_item_count", "fmrl_state_bytes",
             "fmrl_profile"):
    null[name] = [getattr(lib, name)(None), err()]
    getattr(lib, name)(rec)
    null[name].append(err())  # cleared by the next successful call
fp = ctypes.create_string_buffer(16)
null["fmrl_fingerprint"] = [lib.fmrl_fingerprint(None, fp), err()]
null["fmrl_fingerprint/out"] = [lib.fmrl_fingerprint(rec, None), err()]
null["fmrl_item_index"] = [lib.fmrl_item_index(None, b"x"), err()]
null["fmrl_item_index/item_id"] = [lib.fmrl_item_index(rec, None), err()]
null["fmrl_item_index/unknown"] = [lib.fmrl_item_index(rec, b"no-such"), err()]
first = lib.fmrl_item_id(rec, 1)
null["fmrl_item_index/known"] = [lib.fmrl_item_index(rec, first), err()]
null["fmrl_item_id"] = [lib.fmrl_item_id(None, 1), err()]
null["fmrl_item_id/range"] = [lib.fmrl_item_id(rec, 0), err()]
null["fmrl_session_counters"] = [lib.fmrl_session_counters(None, None, None, None), err()]
null["fmrl_observe"] = [lib.fmrl_observe(rec, None, first, None), err()]
out["null"] = null
out["count"] = lib.fmrl_num_items(rec)
out["log"] = LOG
# the last error is per thread: a failure on another thread leaves this thread's "" alone
lib.fmrl_granularity(rec)
t = threading.Thread(target=lambda: out.__setitem__("other", [lib.fmrl_k_max(None), err()]))
t.start(); t.join()
out["this"] = err()
lib.fmrl_close(rec)
"""


def test_getters_report_why(art, cpp_build):
    got = run_app(cpp_build, GETTERS_APP, bundle=str(art.bundle))
    null = got["null"]
    for name in ("fmrl_granularity", "fmrl_k_max", "fmrl_num_items", "fmrl_item_count", "fmrl_state_bytes"):
        assert null[name] == [0, f"{name}: rec is NULL", ""], name
    assert null["fmrl_profile"] == [None, "fmrl_profile: rec is NULL", ""]
    assert null["fmrl_fingerprint"] == [1, "fmrl_fingerprint: rec is NULL"]
    assert null["fmrl_fingerprint/out"] == [1, "fmrl_fingerprint: out is NULL"]
    assert null["fmrl_item_index"] == [0, "fmrl_item_index: rec is NULL"]
    assert null["fmrl_item_index/item_id"] == [0, "fmrl_item_index: item_id is NULL"]
    assert null["fmrl_item_index/unknown"] == [0, "unknown item 'no-such': not in the bundle nor added with add_items"]
    assert null["fmrl_item_index/known"] == [1, ""]
    assert null["fmrl_item_id"] == [None, "fmrl_item_id: rec is NULL"]
    assert null["fmrl_item_id/range"] == [None, f"fmrl_item_id: internal item index 0 out of range [1, {got['count']}]"]
    assert null["fmrl_session_counters"] == [1, "fmrl_session_counters: session is NULL"]
    assert null["fmrl_observe"] == [1, "fmrl_observe: session is NULL"]
    errors = [message for level, message in got["log"] if level == 3]
    assert "fmrl_granularity: rec is NULL" in errors and "fmrl_observe: session is NULL" in errors
    assert not any(m.startswith("unknown item") for m in errors)  # a lookup miss is not logged
    assert got["other"] == [0, "fmrl_k_max: rec is NULL"] and got["this"] == ""


LOG_APP = r"""
events = {}
status, rec = open_(args["bundle"])
events["open"] = [status] + LOG[:]
del LOG[:]
status, bad = open_(args["newer"])
events["refused"] = [status, err()] + LOG[:]
del LOG[:]
session = P()
lib.fmrl_session_new(rec, ctypes.byref(session))
size = SZ()
events["buffer"] = [lib.fmrl_session_to_bytes(rec, session, None, 0, None, 0, ctypes.byref(size))] + LOG[:]
lib.fmrl_set_log_callback(type(LOG_CB)(), None)  # NULL: silence again
status, bad = open_(args["newer"])
events["silenced"] = [status] + LOG[:]
lib.fmrl_session_free(session)
lib.fmrl_close(rec)
out.update(events)
"""


def test_log_callback(art, newer_bundle, cpp_build):
    got = run_app(cpp_build, LOG_APP, bundle=str(art.bundle), newer=str(newer_bundle))
    status, *log = got["open"]
    assert status == 0
    assert [level for level, _ in log] == [1, 1]  # info: program load, then the bundle
    assert log[0][1].startswith("loaded the ExecuTorch program (") and "method 'forward'" in log[0][1]
    assert log[1][1].startswith(f"opened {art.bundle}: profile 'test', ") and "fingerprint " in log[1][1]
    status, message, *log = got["refused"]
    assert status == 2 and log == [[3, message]]  # error: the refusal, as fmrl_last_error says it
    assert got["buffer"] == [6]  # FMRL_ERR_BUFFER answers a size: not logged
    assert got["silenced"] == [2]


THREADS_APP = r"""
start = lib.fmrl_thread_count()
first = 1 if start != 1 else 2
def opened(threads):
    o = Options()
    lib.fmrl_open_options_init_size(ctypes.byref(o), ctypes.sizeof(o))
    o.threads = threads
    status, rec = open_(args["bundle"], ctypes.pointer(o))
    assert status == 0, err()
    return rec
def works(rec):
    s = P()
    ok = lib.fmrl_session_new(rec, ctypes.byref(s)) == 0 and lib.fmrl_observe(rec, s, lib.fmrl_item_id(rec, 1), None) == 0
    lib.fmrl_session_free(s)
    return ok
a = opened(first)
out["a"] = [lib.fmrl_thread_count(), works(a)] + LOG[:]
del LOG[:]
same = opened(first)  # the pool's size already: nothing to say
b = opened(first + 1)
out["b"] = [lib.fmrl_thread_count(), works(a), works(b)] + LOG[:]
for rec in (a, same, b):
    lib.fmrl_close(rec)
del LOG[:]
c = opened(first + 1)
out["c"] = [lib.fmrl_thread_count(), works(c)] + [m for m in LOG if m[0] != 1 or "resized" in m[1]]
o = Options()
lib.fmrl_open_options_init_size(ctypes.byref(o), ctypes.sizeof(o))
o.threads = -1
out["negative"] = [open_(args["bundle"], ctypes.pointer(o))[0], err()]
out["first"] = [start, first]
lib.fmrl_close(c)
"""


def test_threads_resize_only_while_no_other_recommender_is_open(art, cpp_build):
    """The pool is process-wide: a recommender's `threads` resizes it when it is alone, is ignored with a
    warning while others are open (their programs keep the pool they were loaded with), and the others
    keep working."""
    got = run_app(cpp_build, THREADS_APP, bundle=str(art.bundle))
    start, first = got["first"]
    count, ok, *log = got["a"]
    assert count == first and ok
    assert [1, f"ExecuTorch thread pool resized from {start} to {first} threads"] in log
    count, ok_a, ok_b, *log = got["b"]
    assert count == first and ok_a and ok_b
    warnings = [m for level, m in log if level == 2]
    assert warnings == [f"threads = {first + 1} ignored: 2 other recommender(s) open share ExecuTorch's "
                        f"process-wide pool, which keeps {first} threads"]
    assert got["c"] == [first + 1, True, [1, f"ExecuTorch thread pool resized from {first} to {first + 1} threads"]]
    assert got["negative"] == [1, "fmrl_open: options->threads must be >= 0, got -1"]
