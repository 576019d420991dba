"""Trying an ExecuTorch program in a helper process before the app loads it.

A program whose hashes are valid but whose contents are not (a bad export, a flipped bit on the way, a
crafted file) can make ExecuTorch abort the whole process: an internal check fails (`ET_CHECK`, e.g. an
instruction argument that is not a tensor) or a C++ exception escapes through pybind11 (e.g. a corrupt
operator name that is not UTF-8). No Python code can catch that. So `check_program` first loads the
program and runs one call with zero inputs in a helper process; if that process dies, the program is
refused with an FmrlError and the app lives on. Only programs that passed are loaded in-process.

The helper starts on the first check (importing torch there: about 1.4 s more for the first open here)
and exits after IDLE_SECONDS without a request, so the memory of a second torch process (about 240 MB)
is held only while programs are being opened; `shutdown()` stops it at once. Checks in a row (opening
several bundles, the fuzz tests) reuse it: a few ms each. Programs that passed are remembered by sha256
for the life of the process. FMRL_PROGRAM_CHECK=off skips the helper (for apps that only ever load
programs they built or verified themselves).
"""

from __future__ import annotations

import atexit
import hashlib
import os
import signal
import struct
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from ..errors import FmrlError

CHECK_ENV = "FMRL_PROGRAM_CHECK"
IDLE_SECONDS = 20
_FRAME = struct.Struct("<IQ")      # method name length, program length; then the name, then the program

# The helper: reads frames from stdin, loads each program with the app's own loader (checks off, so it
# does not recurse), runs one call with zero inputs of the method's declared shapes, answers one line.
_HELPER = r"""
import os, select, struct, sys
os.environ["FMRL_PROGRAM_CHECK"] = "off"
IDLE = float(sys.argv[1])
from fmrl_sdk.errors import FmrlError
from fmrl_sdk.runtime.program import load_program
frame = struct.Struct("<IQ")
DTYPES = {0: "uint8", 1: "int8", 2: "int16", 3: "int32", 4: "int64", 5: "float16", 6: "float32", 7: "float64",
          11: "bool", 15: "bfloat16"}


def zero_inputs(loaded):
    meta = getattr(loaded.execute, "method_meta", None)  # the fast loader's method; None: load only
    if meta is None:
        return None
    import torch
    meta = meta()
    inputs = []
    for i in range(meta.num_inputs()):
        info = meta.input_tensor_meta(i)
        inputs.append(torch.zeros(tuple(info.sizes()), dtype=getattr(torch, DTYPES[int(info.dtype())])))
    return inputs

reply = sys.stdout.buffer
source = sys.stdin.fileno()


def read_exact(n):
    parts = []
    while n:
        part = os.read(source, min(n, 1 << 20))
        if not part:
            return None
        parts.append(part)
        n -= len(part)
    return b"".join(parts)


while select.select([source], [], [], IDLE)[0]:  # nothing for IDLE seconds: exit (code 0)
    head = read_exact(frame.size)
    if head is None:
        break
    name_len, size = frame.unpack(head)
    method = read_exact(name_len).decode()
    program = read_exact(size)
    try:
        loaded = load_program(program, method)
        inputs = zero_inputs(loaded)
        if inputs is not None:
            loaded.execute(inputs)
        line = "ok"
    except FmrlError as e:
        line = "refused " + str(e).replace("\n", " ")
    except Exception as e:
        line = "refused ExecuTorch cannot run the program (" + type(e).__name__ + ": " + str(e).replace("\n", " ")[:300] + ")"
    reply.write(line.encode("utf-8", "replace") + b"\n")
    reply.flush()
"""


class _Helper:
    def __init__(self):
        self._proc: subprocess.Popen | None = None
        self._log = None
        self._lock = threading.Lock()
        self._passed: set[bytes] = set()

    def _start(self) -> subprocess.Popen:
        package_root = str(Path(__file__).resolve().parent.parent.parent)
        env = {**os.environ, CHECK_ENV: "off",
               "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        self._log = tempfile.TemporaryFile()   # ExecuTorch's own log lines: kept for the error message
        self._proc = subprocess.Popen([sys.executable, "-c", _HELPER, str(IDLE_SECONDS)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=self._log, env=env)
        return self._proc

    def _last_log_line(self) -> str:
        self._log.seek(0)
        lines = [line for line in self._log.read().decode("utf-8", "replace").splitlines()
                 if line.strip() and "cpuinfo" not in line]
        return lines[-1].strip()[:200] if lines else ""

    def check(self, program: bytes, method: str) -> None:
        digest = hashlib.sha256(program).digest() + method.encode()
        with self._lock:
            if digest in self._passed:
                return
            for _ in range(2):
                line, code = self._ask(program, method)
                if line or code != 0:
                    break  # an answer, or the helper died on this program (code 0: it had exited idle)
            if not line:
                last = self._last_log_line()
                if code >= 0:
                    raise FmrlError(f"the helper process that checks programs ended (exit code {code}"
                                    f"{': ' + last if last else ''}); see fmrl_sdk/runtime/program_check.py")
                try:
                    how = f"signal {signal.Signals(-code).name}"
                except ValueError:
                    how = f"signal {-code}"
                raise FmrlError(f"the program makes ExecuTorch abort ({how}{': ' + last if last else ''}); "
                                "the file is corrupt or not a program this ExecuTorch can run: re-export it")
            status, _, message = line.decode("utf-8", "replace").rstrip("\n").partition(" ")
            if status != "ok":
                raise FmrlError(message)
            self._passed.add(digest)

    def _ask(self, program: bytes, method: str) -> tuple[bytes, int | None]:
        """(the helper's answer line, None), or (b"", its exit code) when it ended without answering."""
        proc = self._proc if self._proc is not None and self._proc.poll() is None else self._start()
        name = method.encode()
        try:
            proc.stdin.write(_FRAME.pack(len(name), len(program)) + name + program)
            proc.stdin.flush()
            line = proc.stdout.readline()
        except OSError:  # BrokenPipeError: it exited (idle, or died) before reading
            line = b""
        if line:
            return line, None
        self._proc = None
        return b"", proc.wait()

    def shutdown(self) -> None:
        with self._lock:
            if self._proc is not None:
                self._proc.stdin.close()
                self._proc.wait()
                self._proc = None


_helper = _Helper()
atexit.register(_helper.shutdown)


def check_program(program: bytes, method: str) -> None:
    """FmrlError unless `method` of `program` loads and runs one call (zero inputs) in the helper process
    without ExecuTorch refusing it or aborting. No-op with FMRL_PROGRAM_CHECK=off."""
    if os.environ.get(CHECK_ENV, "on") == "off":
        return
    _helper.check(program, method)


def shutdown() -> None:
    """Stop the helper process (a later check starts a new one)."""
    _helper.shutdown()
