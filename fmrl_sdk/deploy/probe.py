"""Measure one step .pte in a fresh process: memory the runtime takes to load and run it, and per-event
latency. A fresh process keeps the exporting process's heap and threads out of both numbers.

    python -m fmrl_sdk.deploy.probe MODEL.pte ROWS COLS INPUTS.npy [EVENTS]

INPUTS.npy: float32 [n, COLS] item vectors, fed in turn (the program's x).

prints one JSON line {"rss_growth_bytes", "step_p50_us", "step_p99_us", "events"}.
"""

from __future__ import annotations

import json
import sys

# XNNPACK threads for reference measurements: one thread beats two at these sizes on the 2-core
# reference machine (the second thread's wake-up costs more than it saves, more so when the machine is shared)
REFERENCE_THREADS = 1
# bump when what the probe measures changes (part of deploy_cache.json's key). 2: loads through
# runtime.program, the loader apps run
PROBE_VERSION = 2


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def main(argv: list[str]) -> None:
    import numpy as np
    import torch

    from ..runtime.program import load_program, set_threads
    from .measure import time_step_program

    path, rows, cols, inputs_path = argv[:4]
    events = int(argv[4]) if len(argv) > 4 else 400
    inputs = [torch.from_numpy(v)[None] for v in np.load(inputs_path).astype(np.float32)]
    set_threads(REFERENCE_THREADS)         # before any program exists
    state = torch.zeros(int(rows), int(cols))
    with open(path, "rb") as f:
        data = f.read()                       # the bundle's own bytes are counted apart (bundle_bytes)
    before = _status_kb("VmRSS")
    method = load_program(data, trusted=True)
    for x in inputs[:20]:
        state = method.execute((x, state))[2]
    grown = max(_status_kb("VmRSS"), _status_kb("VmHWM")) - before
    timing = time_step_program(method, [inputs[i % len(inputs)] for i in range(events)], (int(rows), int(cols)))
    print(json.dumps({"rss_growth_bytes": 1024 * max(0, grown), "step_p50_us": timing["p50"],
                      "step_p99_us": timing["p99"], "events": timing["n"]}))


if __name__ == "__main__":
    main(sys.argv[1:])
