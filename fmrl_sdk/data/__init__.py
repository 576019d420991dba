"""Interaction data: readers (P5 Amazon folders, CSV/JSONL logs), leave-one-out splits, batches."""

from .dataset import Dataset, load_dataset, DEMO_DATA_DIR

__all__ = ["Dataset", "load_dataset", "DEMO_DATA_DIR"]
