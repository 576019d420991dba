"""Timing of a step program, used by the latency probe (`fmrl-sdk profiles`' measurements) and by
benchmarks/step_latency.py (whose benchmark-only timings live in benchmarks/latency_tools.py).

Every timing is per event, in microseconds, measured with time.perf_counter around one call, after
warm-up; the p50/p99 of many calls is reported (the machine is shared, so medians, not means).
"""

from __future__ import annotations

import time

import numpy as np
import torch


def percentiles(samples: list[float]) -> dict:
    a = np.asarray(samples) * 1e6
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "n": len(a)}


def event_stream(sequences, events: int) -> list[int]:
    """A stream of real item indices (the sequences concatenated, repeated), `events` long."""
    flat = [int(i) for s in sequences for i in s] or [1]
    return [flat[i % len(flat)] for i in range(events)]


def time_step_program(method, inputs: list[torch.Tensor], num_state: tuple, warmup: int = 50,
                      reset_every: int = 50) -> dict:
    """Per-event latency of a step .pte (forward(x, state)) over item vectors `inputs` ([1, s] each),
    state carried between events."""
    state = torch.zeros(*num_state)
    for x in inputs[:warmup]:
        state = method.execute((x, state))[2]
    samples = []
    for n, x in enumerate(inputs):
        if n % reset_every == 0:
            state = torch.zeros(*num_state)
        t = time.perf_counter()
        out = method.execute((x, state))
        samples.append(time.perf_counter() - t)
        state = out[2]
    return percentiles(samples)
