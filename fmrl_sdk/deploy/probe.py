"""Measure step .pte programs, each in a fresh process: the memory the runtime takes to load and run it,
and per-event latency. A fresh process keeps the exporting process's heap and threads out of both numbers.

    python -m fmrl_sdk.deploy.probe --serve

reads one JSON request per line on stdin, {"program", "rows", "cols", "inputs", "events"} (inputs: an .npy
of float32 [n, cols] item vectors, fed in turn as the program's x), and answers one JSON line per request,
{"rss_growth_bytes", "step_p50_us", "step_p99_us", "events"} or {"error"}. The server imports torch and the
ExecuTorch bindings once and measures each program in a child forked for it (it runs no program and starts
no thread pool itself), so every program still starts from the same fresh process state without paying
the ~3 s interpreter start per candidate. `Prober` (candidates.py) drives it.
"""

from __future__ import annotations

import json
import sys

from ..jsonio import parse_json_text

# XNNPACK threads for reference measurements: one thread beats two at these sizes on the 2-core
# reference machine (the second thread's wake-up costs more than it saves, more so when the machine is shared)
REFERENCE_THREADS = 1
# bump when what the probe measures changes (part of deploy_cache.json's key). 2: loads through
# runtime.program, the loader apps run; 3: each program in a child forked from one probe server
PROBE_VERSION = 3


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def measure(program_path: str, rows: int, cols: int, inputs_path: str, events: int) -> dict:
    """Load and time one program in this process (a fresh one: the forked child of `serve`)."""
    import numpy as np
    import torch

    from ..runtime.program import load_program, set_threads
    from .measure import time_step_program

    inputs = [torch.from_numpy(v)[None] for v in np.load(inputs_path).astype(np.float32)]
    set_threads(REFERENCE_THREADS)         # before any program exists
    state = torch.zeros(rows, cols)
    with open(program_path, "rb") as f:
        data = f.read()                       # the bundle's own bytes are counted apart (bundle_bytes)
    before = _status_kb("VmRSS")
    method = load_program(data, trusted=True)
    for x in inputs[:20]:
        state = method.execute((x, state))[2]
    grown = max(_status_kb("VmRSS"), _status_kb("VmHWM")) - before
    timing = time_step_program(method, [inputs[i % len(inputs)] for i in range(events)], (rows, cols))
    return {"rss_growth_bytes": 1024 * max(0, grown), "step_p50_us": timing["p50"],
            "step_p99_us": timing["p99"], "events": timing["n"]}


def serve() -> None:
    """Answer measurement requests from stdin, each in a forked child (see the module docstring)."""
    import os

    import numpy  # noqa: F401  (imported once here, inherited by every child)
    import torch  # noqa: F401

    from ..runtime import program

    program.fast_path_available()          # imports the ExecuTorch bindings once, runs nothing
    for line in sys.stdin:
        if not line.strip():
            continue
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                r = parse_json_text(line, "the probe request")
                result = measure(r["program"], int(r["rows"]), int(r["cols"]), r["inputs"], int(r["events"]))
            except Exception as e:  # reported to the caller as one line, like any other answer
                result, code = {"error": f"{type(e).__name__}: {e}"}, 1
            sys.stdout.write(json.dumps(result) + "\n")
            sys.stdout.flush()
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            print(json.dumps({"error": f"the probe process died (signal {os.WTERMSIG(status)})"}), flush=True)


if __name__ == "__main__":
    if sys.argv[1:] != ["--serve"]:
        sys.exit("usage: python -m fmrl_sdk.deploy.probe --serve   (requests on stdin, see the module docstring)")
    serve()
