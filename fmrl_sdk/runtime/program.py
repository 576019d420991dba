"""The one place that loads ExecuTorch programs (.pte) and sizes ExecuTorch's CPU thread pool.

Export verification, the latency probe, the benchmarks and the app runtime all load programs here, so
what export verifies and what the benchmarks time is what an app runs.

Loading: the official `executorch.runtime` module imports `executorch.exir` (the whole export stack,
several seconds). Running a program only needs the compiled pybindings, which load after `import torch`,
so `load_program` uses `executorch.extension.pybindings._C` directly (about 1 s) and falls back to
`executorch.runtime` if that private module changes (tests/test_runtime.py fails loudly when it does).
Set FMRL_EXECUTORCH_LOADER=official to force the official path.

    program = load_program(pte_bytes)           # or a path
    scores, indices, new_state, hidden = program.execute((item [1] int64, state [rows, s] f32))
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import FmrlError
from .program_check import check_program

LOADER_ENV = "FMRL_EXECUTORCH_LOADER"


def _pybindings():
    """executorch's private compiled module, or None when it moved (the official path is used then)."""
    import torch  # noqa: F401  (loads libtorch, which the pybindings link against)

    try:
        from executorch.extension.pybindings import _C
    except ImportError:
        return None
    needed = ("_load_program_from_buffer", "Verification", "_threadpool_get_thread_count",
              "_unsafe_reset_threadpool")
    return _C if all(hasattr(_C, name) for name in needed) else None


def fast_path_available() -> bool:
    """True when the private pybindings this module relies on are where it expects them."""
    return _pybindings() is not None


def set_threads(threads: int) -> None:
    """Size ExecuTorch's process-wide CPU thread pool (used by XNNPACK); affects every program in the
    process. Call it before loading programs: resizing under live XNNPACK runtimes can deadlock.
    Without the private pybindings the pool keeps its default size (one thread per core)."""
    if threads < 1:
        raise FmrlError(f"threads must be >= 1, got {threads}")
    bindings = _pybindings()
    if bindings is not None and bindings._threadpool_get_thread_count() != threads:
        bindings._unsafe_reset_threadpool(int(threads))


class LoadedProgram:
    """One method of a loaded program. `execute(inputs)` runs it on a sequence of tensors and returns
    its outputs (ExecuTorch copies them out: they are the caller's to keep). Keeps the program and its
    bytes alive: a method whose program was garbage-collected points at freed memory (a crash, not an
    exception). One method owns one set of planned buffers: callers serialise calls across threads."""

    def __init__(self, execute, keep_alive: tuple, loader: str):
        self.execute = execute          # the bare bound call: no wrapper between callers and ExecuTorch
        self.loader = loader            # "fast" (private pybindings) or "official"
        self._keep_alive = keep_alive

    def close(self) -> None:
        self.execute = None
        self._keep_alive = ()


def load_program(program: bytes | bytearray | memoryview | str | Path, method: str = "forward",
                 trusted: bool = False) -> LoadedProgram:
    """Load `method` of a .pte (bytes, a buffer such as a one-file bundle's memory-mapped part, or a path to
    read) with the fastest loader available. ExecuTorch's Python binding takes `bytes` only, so a buffer is
    copied once, here (the C runtime loads a mapped program in place). The program
    is first loaded and run once in a helper process (program_check.py): one that makes ExecuTorch abort
    is an FmrlError here instead of the end of this process. trusted=True skips that check, for programs
    this process has just lowered itself (export verification, profiles, benchmarks)."""
    if isinstance(program, (bytearray, memoryview)):
        program = bytes(program)
    elif not isinstance(program, bytes):
        path = Path(program)
        try:
            program = path.read_bytes()
        except OSError as e:
            raise FmrlError(f"{path}: cannot read the program ({e.strerror})") from None
    if not trusted:
        check_program(program, method)
    bindings = _pybindings() if os.environ.get(LOADER_ENV, "fast") != "official" else None
    if bindings is not None:
        try:
            loaded = bindings._load_program_from_buffer(
                program, enable_etdump=False, debug_buffer_size=0,
                program_verification=bindings.Verification.InternalConsistency, data_path=None)
            bound = loaded.load_method(method)
            return LoadedProgram(bound, (program, loaded), "fast")
        except (AttributeError, TypeError):
            pass  # the private call's signature changed: use the public API below
        except RuntimeError as e:
            raise FmrlError(f"ExecuTorch could not load the program: {e}") from None
    from executorch.runtime import Runtime

    try:
        loaded = Runtime.get().load_program(program)
        bound = loaded.load_method(method)
    except RuntimeError as e:
        raise FmrlError(f"ExecuTorch could not load the program: {e}") from None
    if bound is None:
        raise FmrlError(f"the program has no method {method!r}")
    return LoadedProgram(bound.execute, (program, loaded), "official")
