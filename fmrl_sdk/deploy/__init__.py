"""Deployment: slice one granularity out of a trained run, pick the size a device can afford, export it
to an ExecuTorch bundle (docs/bundle-format.md) and verify the exported program against eager PyTorch.

Heavy imports (torch, executorch) live in the submodules; importing this package is cheap.
"""
