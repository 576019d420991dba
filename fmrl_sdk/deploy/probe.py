"""Measure one step .pte in a fresh process: memory the runtime takes to load and run it, and per-event
latency. A fresh process keeps the exporting process's heap and threads out of both numbers.

    python -m fmrl_sdk.deploy.probe MODEL.pte ROWS COLS ITEMS_CSV [EVENTS]

prints one JSON line {"rss_growth_bytes", "step_p50_us", "step_p99_us", "events"}.
"""

from __future__ import annotations

import json
import sys

# XNNPACK threads for reference measurements: one thread beats two at these sizes on the 2-core
# reference machine (the second thread's wake-up costs more than it saves, more so when the machine is shared)
REFERENCE_THREADS = 1


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def main(argv: list[str]) -> None:
    import torch
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    from .measure import time_step_program

    path, rows, cols, items_csv = argv[:4]
    events = int(argv[4]) if len(argv) > 4 else 400
    items = [int(i) for i in items_csv.split(",")]
    # before any program exists (resetting the pool under live XNNPACK runtimes can deadlock)
    portable_lib._unsafe_reset_threadpool(REFERENCE_THREADS)
    runtime = Runtime.get()
    state = torch.zeros(int(rows), int(cols))
    with open(path, "rb") as f:
        data = f.read()                       # the bundle's own bytes are counted apart (bundle_bytes)
    before = _status_kb("VmRSS")
    program = runtime.load_program(data)
    method = program.load_method("forward")
    for item in items[:20]:
        state = method.execute([torch.tensor([item]), state])[2]
    grown = max(_status_kb("VmRSS"), _status_kb("VmHWM")) - before
    timing = time_step_program(method, [items[i % len(items)] for i in range(events)], (int(rows), int(cols)))
    print(json.dumps({"rss_growth_bytes": 1024 * max(0, grown), "step_p50_us": timing["p50"],
                      "step_p99_us": timing["p99"], "events": timing["n"]}))


if __name__ == "__main__":
    main(sys.argv[1:])
