"""Timing helpers shared by `fmrl-sdk profiles` (latency cache) and benchmarks/step_latency.py.

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


def time_step_program(method, items: list[int], num_state: tuple, warmup: int = 50,
                      reset_every: int = 50) -> dict:
    """Per-event latency of a step .pte (forward(item, state)), state carried between events."""
    state = torch.zeros(*num_state)
    item_tensors = [torch.tensor([i]) for i in items]
    for item in item_tensors[:warmup]:
        state = method.execute([item, state])[2]
    samples = []
    for n, item in enumerate(item_tensors):
        if n % reset_every == 0:
            state = torch.zeros(*num_state)
        t = time.perf_counter()
        out = method.execute([item, state])
        samples.append(time.perf_counter() - t)
        state = out[2]
    return percentiles(samples)


@torch.no_grad()
def time_eager_step(step, items: list[int], num_state: tuple, warmup: int = 50) -> dict:
    """Per-event latency of an eager step module (StepModel or its quantised graph)."""
    state = torch.zeros(*num_state)
    item_tensors = [torch.tensor([i]) for i in items]
    for item in item_tensors[:warmup]:
        state = step(item, state)[2]
    samples = []
    for item in item_tensors:
        t = time.perf_counter()
        out = step(item, state)
        samples.append(time.perf_counter() - t)
        state = out[2]
    return percentiles(samples)


def time_calls(fn, args_list: list, warmup: int = 50) -> dict:
    for args in args_list[:warmup]:
        fn(*args)
    samples = []
    for args in args_list:
        t = time.perf_counter()
        fn(*args)
        samples.append(time.perf_counter() - t)
    return percentiles(samples)


@torch.no_grad()
def cpu_floor(table: torch.Tensor, calls: int = 500) -> dict:
    """The fastest plain mat-vec over `table` [N, s] that torch does on this CPU (several formulations,
    float32 or int8 tables dequantised ahead; the best p50 wins)."""
    table = table.contiguous()
    s = table.shape[1]
    h = [torch.randn(1, s) for _ in range(calls)]
    candidates = {
        "F.linear": lambda x: torch.nn.functional.linear(x, table),
        "mv": lambda x: torch.mv(table, x[0]),
        "mm(t)": lambda x: torch.mm(x, table.T),
    }
    out = {}
    for name, fn in candidates.items():
        out[name] = time_calls(fn, [(x,) for x in h])
    best = min(out, key=lambda k: out[k]["p50"])
    return {**out[best], "how": best}


@torch.no_grad()
def time_window(model, size: int, sequences, calls: int, window: int = 50) -> dict:
    """Recompute-from-scratch baseline: the parallel size-s model over the last `window` items, then
    scores and top-k, once per event."""
    small = model.cut(size).eval()
    table = small.item_table()
    items_table = table[1:].contiguous()   # [N, s], as the step model scores
    seqs = [s for s in sequences if len(s)] or [[1]]
    batches = []
    for n in range(calls):
        s = seqs[n % len(seqs)]
        items = np.zeros(window, dtype=np.int64)
        tail = np.asarray(s[-window:])
        items[window - len(tail):] = tail
        batches.append((torch.from_numpy(items)[None],))

    def run(items):
        hidden = small(items, table)[:, -1]
        return torch.topk(torch.nn.functional.linear(hidden, items_table), 100)

    # The parallel scan raises lambda to powers up to L/2; with |lambda| ~ 0.1 those are denormal floats,
    # which x86 handles ~10x slower. Flush them to zero (as mobile CPUs usually do) so that the baseline
    # is not slowed down by an artefact.
    torch.set_flush_denormal(True)
    try:
        return time_calls(run, batches)
    finally:
        torch.set_flush_denormal(False)
