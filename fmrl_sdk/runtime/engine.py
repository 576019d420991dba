"""The step engine: runs the bundle's ExecuTorch program, one event per call.

An engine is any object with
    step(x: np.ndarray[float32, (s,)], state: np.ndarray[float32, (rows, s)]) ->
        (scores f32 [k_max], indices i64 [k_max], new_state f32 [rows, s], hidden f32 [s])
(x: the observed item's vector, bundle formats 2 and 3) and a `close()`. `PteEngine` is the real one; tests
may pass any object with that signature. The program returns the scores of all N items; the engine selects
the top k_max (`select_topk`, the same order as the C runtime's `select_topk` in runtime/cpp/src/internal.hpp).
Programs are loaded by `program.load_program` (the one loader; see program.py for the fast start-up).
"""

from __future__ import annotations

import threading

import numpy as np

from ..errors import FmrlError
from .program import load_program, set_threads


def select_topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top k of scores [N] float32, best first: (values [k] float32, positions [k] int64 into scores).

    The order is total, so both runtimes return the same ids in the same order: higher score first, equal
    scores the lower position first, NaN below every number (-inf included; NaN and -inf by position).
    The C runtime's `select_topk` (runtime/cpp/src/internal.hpp) implements the same order.
    """
    n = scores.shape[0]
    if k >= n:
        if np.isnan(scores).any():
            return _select_with_nan(scores, k)
        candidates = np.arange(n)
    else:
        # np.partition sorts NaN last (as the largest): the top k positions hold any NaN of the array
        top = np.partition(scores, n - k)[n - k:]
        if np.isnan(top).any():
            return _select_with_nan(scores, k)
        candidates = np.flatnonzero(scores >= top[0])   # >= the k-th largest, in index order
    order = np.argsort(-scores[candidates], kind="stable")[:k]   # stable: equal scores keep index order
    chosen = candidates[order]
    return scores[chosen], chosen.astype(np.int64)


def _select_with_nan(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """select_topk when scores hold NaN (slow path): NaN ranks as -inf, ties by position."""
    key = np.where(np.isnan(scores), np.float32(-np.inf), scores)
    chosen = np.lexsort((np.arange(scores.shape[0]), -key))[:k]
    return scores[chosen], chosen.astype(np.int64)


class PteEngine:
    """The bundle's `.pte` through ExecuTorch's Python runtime.

    Thread safety: one ExecuTorch method owns one set of planned buffers, so `step` holds a lock for
    the call (inputs in, outputs copied out). Sessions of different threads may share the engine.
    """

    def __init__(self, program: bytes | memoryview, method: str, state_shape: tuple[int, int], k_max: int,
                 num_items: int, threads: int | None = None):
        import torch

        self._torch = torch
        if threads is not None:
            set_threads(threads)
        self._loaded = load_program(program, method)   # keeps the program and its bytes alive
        self._method = self._loaded.execute
        self._lock = threading.Lock()
        self.state_shape, self.k_max, self.num_items = tuple(state_shape), int(k_max), int(num_items)
        # the one input buffer for x (ExecuTorch copies inputs in): filled under the lock
        self._x = torch.zeros(1, self.state_shape[1])
        self._x_view = self._x.numpy()[0]
        # one call to check the program's signature against the manifest
        try:
            self.step(np.zeros(self.state_shape[1], dtype=np.float32), np.zeros(self.state_shape, dtype=np.float32))
        except RuntimeError as e:  # ExecuTorch refuses inputs of other shapes than the program's
            raise FmrlError(f"the program does not accept the manifest's state {list(state_shape)} "
                            f"(num_blocks, granularity): {e}") from None

    def step(self, x: np.ndarray, state: np.ndarray):
        """One event: x float32 [s] (the item's vector), state float32 [rows, s] -> (top-k_max scores,
        their internal indices 1..N, new state, hidden): the program's scores [N], hidden and new state,
        and the engine's top-k of the scores."""
        state_t = self._torch.from_numpy(state)
        if self._method is None:
            raise FmrlError("the Recommender was closed")
        with self._lock:
            self._x_view[:] = x
            out = self._method((self._x, state_t))
        # ExecuTorch copies outputs out on every call: these arrays are ours to keep
        if len(out) != 3 or out[0].shape != (self.num_items,) or out[1].shape != (self.state_shape[1],) \
                or out[2].shape != self.state_shape \
                or any(o.dtype != self._torch.float32 for o in out):
            raise FmrlError(f"the program's outputs {[tuple(o.shape) for o in out]} do not match the manifest "
                            f"(scores [{self.num_items}], hidden [{self.state_shape[1]}], state "
                            f"{list(self.state_shape)}): expected (scores, hidden, new_state), format 3")
        scores, indices = select_topk(out[0].numpy(), self.k_max)
        return scores, indices + 1, out[2].numpy(), out[1].numpy()

    def close(self) -> None:
        self._method = None
        self._loaded.close()
