"""Run a lowered step program as the runtime does and check it against eager (export.py's verification),
and measure what int8 costs against fp32 (the manifest's `quantization`).

Every event's item vector is read through the manifest's `item_table` exactly as the runtime reads it,
and the top k is selected as both runtimes select it.
"""

from __future__ import annotations

import numpy as np
import torch

from ..runtime.bundle import ItemTable
from ..runtime.engine import select_topk
from ..runtime.program import load_program
from .lowering import build_program, make_step

# .pte vs eager: fp32 absolute score difference; int8 (vs the quantised eager graph) relative difference
# and mean top-10 overlap (see verification_passed)
VERIFY_TOLERANCE = {"fp32": 1e-4, "int8_rel": 2e-2, "int8_overlap": 0.95}
VERIFY_SEQUENCES = 32
VERIFY_MAX_LEN = 50


class Stepper:
    """A step program fed by item index: each event's vector is read from `table` as the runtime reads
    it, then `run` (a loaded program, or an eager module) takes (x [1, s], state) and returns (scores [N],
    hidden, new_state); the top k of the scores is selected as both runtimes select it (`select_topk`).
    Returns (top-k scores [k], internal indices [k] (1..N), new state, hidden); k: the bundle's k_max
    (default 100, export's)."""

    def __init__(self, run, table: ItemTable, k: int = 100):
        self.run, self.table, self.k = run, table, k
        self._call = run.execute if hasattr(run, "execute") else (lambda inputs: run(*inputs))

    def __call__(self, item: int, state: torch.Tensor):
        x = torch.from_numpy(self.table.vector(int(item)))[None]
        scores, hidden, new_state = self._call((x, state))
        values, positions = select_topk(scores.detach().numpy().astype(np.float32, copy=False), self.k)
        return torch.from_numpy(values), torch.from_numpy(positions + 1), new_state, hidden


def sample_sequences(dataset, count: int = VERIFY_SEQUENCES, max_len: int = VERIFY_MAX_LEN,
                     split: str = "val", seed: int = 0) -> list[np.ndarray]:
    """Real user histories (the input of `split`'s prediction), the last max_len items, chosen evenly."""
    histories, _ = dataset.history_and_target(split)
    order = np.random.default_rng(seed).permutation(len(histories))[:count]
    return [np.asarray(histories[i][-max_len:], dtype=np.int64) for i in sorted(order)]


@torch.no_grad()
def verify_program(program: Stepper, reference: Stepper, sequences, num_state: tuple) -> dict:
    """Stream every sequence through the .pte and the eager reference (both fed the vectors the runtime
    reads); compare scores, hidden, state and ids per event."""
    max_diff = max_rel = state_diff = 0.0
    topk_equal, events, overlap = True, 0, 0.0
    for seq in sequences:
        state_pte = state_ref = torch.zeros(*num_state)
        for item in seq:
            values, indices, state_pte, hidden = program(item, state_pte)
            ref_values, ref_indices, state_ref, ref_hidden = reference(item, state_ref)
            indices = indices.to(torch.int64)
            diff = max((values - ref_values).abs().max().item(), (hidden - ref_hidden).abs().max().item())
            max_diff = max(max_diff, diff)
            max_rel = max(max_rel, diff / max(ref_values.abs().max().item(), 1e-12))
            state_diff = max(state_diff, (state_pte - state_ref).abs().max().item())
            if not torch.equal(indices, ref_indices):
                # scores equal to within float noise may come out in another order; ids must not differ
                same = set(indices.tolist()) == set(ref_indices.tolist())
                if not (same and diff <= VERIFY_TOLERANCE["fp32"]):
                    topk_equal = False
            overlap += len(set(indices[:10].tolist()) & set(ref_indices[:10].tolist())) / min(10, len(indices))
            events += 1
    return {"sequences": len(sequences), "events": events, "max_abs_diff": max_diff, "max_rel_diff": max_rel,
            "max_state_diff": state_diff, "topk_equal": topk_equal, "top10_overlap": overlap / max(1, events)}


def verification_passed(precision: str, v: dict) -> bool:
    """fp32: same top-k ids as eager, |diff| <= 1e-4. int8 (against the quantised eager graph, whose
    reference q/dq arithmetic rounds activations slightly differently from XNNPACK's integer kernels):
    |diff| <= 2% of the largest score and mean top-10 overlap >= 0.95."""
    if precision == "fp32":
        return v["topk_equal"] and v["max_abs_diff"] <= VERIFY_TOLERANCE["fp32"]
    return v["max_rel_diff"] <= VERIFY_TOLERANCE["int8_rel"] and v["top10_overlap"] >= VERIFY_TOLERANCE["int8_overlap"]


@torch.no_grad()
def topk_overlap(step_a: Stepper, step_b: Stepper, sequences, num_state: tuple, k: int = 10) -> float:
    """Mean |top-k(a) & top-k(b)| / k over every event of the sequences."""
    total, events = 0.0, 0
    for seq in sequences:
        sa = sb = torch.zeros(*num_state)
        for item in seq:
            _, ia, sa, _ = step_a(item, sa)
            _, ib, sb, _ = step_b(item, sb)
            total += len(set(ia[:k].tolist()) & set(ib[:k].tolist())) / k
            events += 1
    return total / max(1, events)


@torch.no_grad()
def ndcg_at_10(step: Stepper, dataset, num_state: tuple, max_len: int, users: list[int]) -> float:
    """Validation NDCG@10 of a step program over `users`, streaming each history (full ranking over the
    k_max >= 10 returned ids: a target outside the top 10 scores 0 whatever k_max is)."""
    histories, targets = dataset.history_and_target("val")
    total = 0.0
    for u in users:
        state = torch.zeros(*num_state)
        indices = None
        for item in histories[u][-max_len:]:
            _, indices, state, _ = step(item, state)
        top = [int(i) for i in indices[:10].tolist()]
        if int(targets[u]) in top:
            total += 1.0 / np.log2(top.index(int(targets[u])) + 2)
    return total / max(1, len(users))


def int8_quality(run, dataset, size: int, k_max: int, int8: Stepper, sequences, num_state: tuple,
                 users: list[int], int8_bytes: int) -> dict:
    """What int8 costs against fp32 (the manifest's `quantization`): bundle program bytes, mean top-10
    overlap on the verification sequences, validation NDCG@10 of both .pte files on `users`."""
    fp32 = build_program(make_step(run.model, size, k_max, "fp32"), "fp32")
    fp32_step = Stepper(load_program(fp32.pte, trusted=True), fp32.table, k_max)
    ndcg_fp32 = ndcg_at_10(fp32_step, dataset, num_state, run.info.max_len, users)
    ndcg_int8 = ndcg_at_10(int8, dataset, num_state, run.info.max_len, users)
    return {"fp32_bytes": len(fp32.pte), "int8_bytes": int8_bytes,
            "size_change": round(int8_bytes / len(fp32.pte) - 1, 4),
            "top10_overlap_with_fp32": round(topk_overlap(int8, fp32_step, sequences, num_state), 4),
            "val_users": len(users), "val_NDCG@10_fp32": round(float(ndcg_fp32), 5),
            "val_NDCG@10_int8": round(float(ndcg_int8), 5),
            "val_NDCG@10_change": round(float(ndcg_int8 - ndcg_fp32), 5)}
