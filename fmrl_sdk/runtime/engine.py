"""The step engine: runs the bundle's ExecuTorch program, one event per call.

An engine is any object with
    step(item: int, state: np.ndarray[float32, (rows, s)]) ->
        (scores f32 [k_max], indices i64 [k_max], new_state f32 [rows, s], hidden f32 [s])
and a `close()`. `PteEngine` is the real one; tests may pass any object with that signature.

Loading: the official `executorch.runtime` module imports `executorch.exir` (the whole export stack,
several seconds). The runtime only needs the compiled pybindings, which load after `import torch`,
so `PteEngine` loads `executorch.extension.pybindings._C` directly (about 1 s) and falls back to
`executorch.runtime` if that private module changes. Set FMRL_EXECUTORCH_LOADER=official to force
the official path.
"""

from __future__ import annotations

import os
import threading

import numpy as np

from ..errors import FmrlError


def set_threads(threads: int) -> None:
    """Size ExecuTorch's process-wide CPU threadpool (used by XNNPACK). Affects every program in the process."""
    import torch  # noqa: F401

    from executorch.extension.pybindings import _C

    if threads < 1:
        raise FmrlError(f"threads must be >= 1, got {threads}")
    if _C._threadpool_get_thread_count() != threads:
        _C._unsafe_reset_threadpool(int(threads))


def _load_method(program: bytes, method: str):
    """(callable(inputs) -> outputs, keep-alive object) for `method` of the program bytes."""
    import torch  # noqa: F401  (loads libtorch, which the pybindings link against)

    if os.environ.get("FMRL_EXECUTORCH_LOADER", "fast") != "official":
        try:
            from executorch.extension.pybindings import _C

            loaded = _C._load_program_from_buffer(
                program, enable_etdump=False, debug_buffer_size=0,
                program_verification=_C.Verification.InternalConsistency, data_path=None)
            return loaded.load_method(method), loaded
        except (ImportError, AttributeError, TypeError):
            pass  # private API moved: use the public one below
        except RuntimeError as e:
            raise FmrlError(f"ExecuTorch could not load the program: {e}") from None
    from executorch.runtime import Runtime

    try:
        loaded = Runtime.get().load_program(program)
        m = loaded.load_method(method)
    except RuntimeError as e:
        raise FmrlError(f"ExecuTorch could not load the program: {e}") from None
    if m is None:
        raise FmrlError(f"the program has no method {method!r}")
    return m.execute, loaded


class PteEngine:
    """The bundle's `.pte` through ExecuTorch's Python runtime.

    Thread safety: one ExecuTorch method owns one set of planned buffers, so `step` holds a lock for
    the call (inputs in, outputs copied out). Sessions of different threads may share the engine.
    """

    def __init__(self, program: bytes, method: str, state_shape: tuple[int, int], k_max: int,
                 threads: int | None = None):
        import torch

        self._torch = torch
        if threads is not None:
            set_threads(threads)
        self._program = program  # the loaded program may point into these bytes: keep them alive
        self._method, self._keep = _load_method(program, method)
        self._lock = threading.Lock()
        self._item = torch.zeros(1, dtype=torch.int64)
        self._item_view = self._item.numpy()
        self.state_shape, self.k_max = tuple(state_shape), int(k_max)
        self._cast_indices = False
        # one call to check the program's signature against the manifest
        out = self.step(1, np.zeros(self.state_shape, dtype=np.float32))
        if out[1].dtype != np.int64:
            # the contract says int64; some lowered programs (seen: int8 exports) return the top-k
            # indices as float32. Exact below 2^24 items, so accept them and cast.
            if not np.issubdtype(out[1].dtype, np.number) or k_max and out[1].max() >= 2 ** 24:
                raise FmrlError(f"the program returns indices as {out[1].dtype}, expected int64")
            self._cast_indices = True
        if out[0].shape != (self.k_max,) or out[2].shape != self.state_shape or out[3].shape != (state_shape[1],):
            raise FmrlError(f"the program's outputs {[tuple(o.shape) for o in out]} do not match the manifest "
                            f"(k_max {k_max}, state {list(state_shape)})")

    def step(self, item: int, state: np.ndarray):
        state_t = self._torch.from_numpy(state)
        if self._method is None:
            raise FmrlError("the Recommender was closed")
        with self._lock:
            self._item_view[0] = item
            scores, indices, new_state, hidden = self._method((self._item, state_t))
        # ExecuTorch copies outputs out on every call: these arrays are ours to keep
        indices = indices.numpy()
        if self._cast_indices:
            indices = indices.astype(np.int64)
        return scores.numpy(), indices, new_state.numpy(), hidden.numpy()

    def raw_call(self, item, state):
        """The bare ExecuTorch call on prepared tensors (for benchmarks): no conversion, no lock."""
        return self._method((item, state))

    def close(self) -> None:
        self._method = self._keep = self._program = None
