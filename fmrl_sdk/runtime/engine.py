"""The step engine: runs the bundle's ExecuTorch program, one event per call.

An engine is any object with
    step(x: np.ndarray[float32, (s,)], state: np.ndarray[float32, (rows, s)]) ->
        (scores f32 [k_max], indices i64 [k_max], new_state f32 [rows, s], hidden f32 [s])
(x: the observed item's vector, bundle formats 2 and 3) and a `close()`. `PteEngine` is the real one; tests
may pass any object with that signature.
Programs are loaded by `program.load_program` (the one loader; see program.py for the fast start-up).
"""

from __future__ import annotations

import threading

import numpy as np

from ..errors import FmrlError
from .program import load_program, set_threads


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
        self._cast_indices = False
        # one call to check the program's signature against the manifest
        try:
            out = self.step(np.zeros(self.state_shape[1], dtype=np.float32),
                            np.zeros(self.state_shape, dtype=np.float32))
        except RuntimeError as e:  # ExecuTorch refuses inputs of other shapes than the program's
            raise FmrlError(f"the program does not accept the manifest's state {list(state_shape)} "
                            f"(num_blocks, granularity): {e}") from None
        if out[1].dtype != np.int64:
            # the contract says int64; some lowered programs (seen: int8 exports) return the top-k
            # indices as float32. Exact below 2^24 items, so accept them and cast.
            if not np.issubdtype(out[1].dtype, np.number) or k_max and out[1].max() >= 2 ** 24:
                raise FmrlError(f"the program returns indices as {out[1].dtype}, expected int64")
            self._cast_indices = True
        if out[0].shape != (self.k_max,) or out[2].shape != self.state_shape or out[3].shape != (state_shape[1],):
            raise FmrlError(f"the program's outputs {[tuple(o.shape) for o in out]} do not match the manifest "
                            f"(k_max {k_max}, state {list(state_shape)})")

    def step(self, x: np.ndarray, state: np.ndarray):
        """One event: x float32 [s] (the item's vector), state float32 [rows, s] -> the program's outputs."""
        state_t = self._torch.from_numpy(state)
        if self._method is None:
            raise FmrlError("the Recommender was closed")
        with self._lock:
            self._x_view[:] = x
            scores, indices, new_state, hidden = self._method((self._x, state_t))
        # ExecuTorch copies outputs out on every call: these arrays are ours to keep
        indices = indices.numpy()
        if self._cast_indices:
            indices = indices.astype(np.int64)
        if not (indices.min() >= 1 and indices.max() <= self.num_items):   # NaN (float indices) fails too
            raise FmrlError(f"the program returned item indices outside [1, {self.num_items}]")
        return scores.numpy(), indices, new_state.numpy(), hidden.numpy()

    def close(self) -> None:
        self._method = None
        self._loaded.close()
