"""`python -m fmrl_sdk.runtime.cpp`: print the C/C++ runtime's CMake source folder."""

from . import cpp_dir

print(cpp_dir())
