"""The C/C++ runtime (fmrl_runtime library + fmrl_replay): a CMake project shipped inside the package.

    cmake -S $(python -m fmrl_sdk.runtime.cpp) -B build/fmrl -DCMAKE_PREFIX_PATH=<executorch package dir>

See docs/runtime.md, "C/C++ runtime". Nothing here is imported by `fmrl_sdk.runtime`.
"""

from pathlib import Path


def cpp_dir() -> Path:
    """The folder holding CMakeLists.txt, include/fmrl_runtime.h, src/, tools/ and the vendored third_party/."""
    return Path(__file__).resolve().parent
