"""`python -m fmrl_sdk.cli ...` (torchrun and the multi-node lines use it)."""

from . import main

main()
