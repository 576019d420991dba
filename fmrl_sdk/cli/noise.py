"""Known-harmless library noise, hidden at the CLI's entry point unless `--verbose` is given.

Each entry names the library, the exact message shape and why it is harmless; anything else (errors,
other warnings) passes through untouched.
- torchao logs "Failed to load .../torchao/_C_*.so" for optional CUDA kernels (mxfp8, cutlass) that a CPU
  wheel cannot load; the SDK uses none of them.
- torch.utils._pytree logs that registering an Enum as a pytree constant is deprecated (done by torchao at
  import); nothing to do for a user.
- torch's pytree FutureWarning "`isinstance(treespec, LeafSpec)` is deprecated", raised from inside
  torch.export / ExecuTorch while a program is lowered.
- ExecuTorch's cpuinfo lines ("[cpuinfo_utils.cpp:N] Failed to open midr file /sys/...", "Reading file
  /sys/...", "CPU info and manual query on # of cpus dont match."): probing for ARM identification files
  that x86 machines and containers lack.
  ExecuTorch's Python bindings print them through sys.stderr, where `filter_stderr` drops exactly these
  lines (and "[threadpool.cpp:N] Resetting threadpool to T threads.", the SDK setting its thread count).
"""

from __future__ import annotations

import atexit
import logging
import re
import sys
import warnings

HARMLESS_LOGS = {
    "torchao": re.compile(r"Failed to load \S*/torchao/_C\w*[^ ]*\.so\b"),
    "torch.utils._pytree": re.compile(r"<enum '\w+'> is an Enum subclass and is now natively supported"),
}
HARMLESS_WARNINGS = ((FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),)
HARMLESS_LINE = re.compile(r"\[cpuinfo_utils\.cpp:\d+\] (Reading file /sys/\S+|Failed to open midr file /sys/\S+"
                           r"|CPU info and manual query on # of cpus dont match\.)\r?\n"
                           r"|\[threadpool\.cpp:\d+\] Resetting threadpool to \d+ threads\.\r?\n")
HARMLESS_PREFIXES = ("[cpuinfo_utils.cpp:", "[threadpool.cpp:")


class _DropMatching(logging.Filter):
    def __init__(self, pattern: re.Pattern):
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or not self.pattern.match(record.getMessage())


_installed: dict[str, logging.Filter] = {}


def hide_known_noise(hide: bool = True) -> None:
    """Install (or with hide=False remove) the filters above. Idempotent; call before torch is imported."""
    for name, pattern in HARMLESS_LOGS.items():
        logger = logging.getLogger(name)
        if name in _installed:
            logger.removeFilter(_installed.pop(name))
        if hide:
            _installed[name] = _DropMatching(pattern)
            logger.addFilter(_installed[name])
    for category, message in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore" if hide else "default", message=message, category=category)


class _FilteredStderr:
    """sys.stderr less HARMLESS_LINE lines. Text that may begin such a line waits for its newline; any
    other text is written through at once. Everything else (isatty, fileno, encoding...) is the stream's."""

    def __init__(self, stream):
        self._stream = stream
        self._pending = ""

    def write(self, text: str) -> int:
        data = self._pending + text
        self._pending = ""
        out = []
        parts = data.split("\n")
        for line in [part + "\n" for part in parts[:-1]] + ([parts[-1]] if parts[-1] else []):
            if not line.endswith("\n") and any(p.startswith(line) or line.startswith(p) for p in HARMLESS_PREFIXES):
                self._pending = line
            elif not HARMLESS_LINE.fullmatch(line):
                out.append(line)
        if out:
            self._stream.write("".join(out))
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def release(self) -> None:
        """Write what still waits for a newline (at exit)."""
        if self._pending:
            self._stream.write(self._pending)
            self._pending = ""
        self._stream.flush()

    def __getattr__(self, name):
        return getattr(self._stream, name)


def filter_stderr() -> None:
    """Replace sys.stderr by a _FilteredStderr: ExecuTorch's Python bindings print their native log lines
    through sys.stderr. Once per process, and not when sys.stderr was replaced (a test capturing output)."""
    if isinstance(sys.stderr, _FilteredStderr) or sys.stderr is not sys.__stderr__:
        return
    sys.stderr = _FilteredStderr(sys.stderr)
    atexit.register(sys.stderr.release)
