"""The fMRLRec model: nested linears and LayerNorms, the LRU, blocks, and weight-tied scoring."""

from .model import DEFAULT_SIZES, FMRLRec, LRUState, ModelConfig, NestedLayerNorm, NestedLinear, parallel_scan

__all__ = ["DEFAULT_SIZES", "FMRLRec", "LRUState", "ModelConfig", "NestedLayerNorm", "NestedLinear", "parallel_scan"]
