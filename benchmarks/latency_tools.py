"""Benchmark-only measurement code for step_latency.py / simulate_speed.py (not part of the SDK):
the scoring-floor program, eager and plain-torch timings, and the recompute-from-scratch baseline.
Per-event timings in microseconds: p50/p99 of many calls after warm-up (fmrl_sdk.deploy.measure)."""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn as nn

from fmrl_sdk.deploy.export import lower
from fmrl_sdk.deploy.measure import percentiles
from fmrl_sdk.deploy.step import ItemScorer, block_topk, topk_groups


class ScoreOnly(nn.Module):
    """The scoring product alone (benchmark floor): hidden [1, s] -> scores [1, N]."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.scorer = ItemScorer(table.detach().clone().contiguous())
        self.requires_grad_(False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.scorer(hidden)


class InProgramTopK(nn.Module):
    """The step with ExecuTorch's top-k inside the program, as bundle programs were before issue 28 part 4:
    forward(x, state) -> (top-k_max scores, indices 1..N, new_state, hidden [s]) (the exact two-pass
    `block_topk`). Benchmark only: format-3 programs return all N scores and the runtime selects."""

    def __init__(self, step):
        super().__init__()
        self.step, self.k = step, step.k_max
        self.group = topk_groups(step.num_items, step.k_max)

    def forward(self, x: torch.Tensor, state: torch.Tensor):
        hidden, new_state = self.step.hidden_step(x, state)
        values, indices = block_topk(self.step.scorer(hidden), self.k, self.group)
        return values, indices + 1, new_state, hidden[0]


def lower_as_step(module: nn.Module, args: tuple, precision: str) -> bytes:
    """A step-shaped module lowered as export lowers a bundle's program (int8: quantised first)."""
    from fmrl_sdk.deploy.export import quantize_step

    return lower(module if precision == "fp32" else quantize_step(module, args), args)


def build_floor_program(table: torch.Tensor, precision: str = "fp32") -> bytes:
    """The scoring product alone (hidden [1, s] @ table^T), lowered the same way as a step program."""
    module = ScoreOnly(table)
    args = (torch.zeros(1, table.shape[1]),)
    if precision == "int8":
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True,
                                                                                     is_dynamic=True))
        prepared = prepare_pt2e(torch.export.export(module, args, strict=False).module(), quantizer)
        prepared(*args)
        module = convert_pt2e(prepared)
    return lower(module, args)


@torch.no_grad()
def time_eager_step(step, inputs: list[torch.Tensor], num_state: tuple, warmup: int = 50) -> dict:
    """Per-event latency of an eager step module (StepModel or its quantised graph) over item vectors
    `inputs` ([1, s] each)."""
    state = torch.zeros(*num_state)
    for x in inputs[:warmup]:
        state = step(x, state)[2]
    samples = []
    for x in inputs:
        t = time.perf_counter()
        out = step(x, state)
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
