"""Run directories: everything later stages (eval, export, item-vectors) need from a training run.

runs/NAME/
  config.json        recipe, model config, data and features paths, dataset stats, SDK version
  model.safetensors  best weights (by validation NDCG@10 at the largest size)
  items.json         external item ids in internal order (internal index i + 1 = items[i])
  metrics.json       {"val": {"<size>": {"Recall@10": ..., ...}}, "test": {...}}
  history.jsonl      one line per epoch: loss, validation NDCG@10 per size, seconds
  train_state.*      resumable training state (safetensors + JSON, see checkpoint.py)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..errors import FmrlError
from ..fileio import atomic_write_bytes, atomic_write_json, read_json
from ..model.model import FMRLRec, ModelConfig

CHECKPOINT = "model.safetensors"


@dataclass
class Run:
    path: Path
    config: dict
    model: FMRLRec
    item_ids: list[str]
    metrics: dict = field(default_factory=dict)

    @property
    def sizes(self) -> list[int]:
        return list(self.model.cfg.sizes)


def load_item_features(features_dir: str | Path, item_ids: list[str]) -> torch.Tensor:
    """[N + 1, F] float32 content features aligned with item_ids, row 0 (padding) zeros."""
    from ..features import load_features

    matrix, _ = load_features(features_dir, item_ids)
    matrix = torch.from_numpy(np.ascontiguousarray(matrix, dtype=np.float32))
    return torch.cat([torch.zeros(1, matrix.shape[1]), matrix])


def save_checkpoint(model: FMRLRec, run_dir: Path, state: dict | None = None) -> None:
    """Write `state` (default: the model's current weights) as the run's checkpoint, atomically."""
    state = {k: v.detach().cpu().contiguous() for k, v in (state or model.state_dict()).items()}
    tmp = run_dir / f".{CHECKPOINT}.tmp"
    save_file(state, str(tmp), metadata={"format": "fmrl-sdk", "sizes": json.dumps(list(model.cfg.sizes))})
    tmp.replace(run_dir / CHECKPOINT)


def write_metrics(run_dir: Path, split: str, metrics: dict[int, dict[str, float]]) -> None:
    path = run_dir / "metrics.json"
    current = json.loads(path.read_text()) if path.exists() else {}
    current[split] = {str(size): values for size, values in metrics.items()}
    atomic_write_json(path, current)


def newest_run(root: str | Path = "runs") -> Path:
    root = Path(root)
    runs = [p.parent for p in root.glob(f"*/{CHECKPOINT}")] if root.exists() else []
    if not runs:
        raise FmrlError(f"no trained run under {root}/ (train one with `fmrl-sdk train`, or pass --run)")
    return max(runs, key=lambda p: (p / CHECKPOINT).stat().st_mtime)


def load_run(run_dir: str | Path, features_dir: str | Path | None = None) -> Run:
    """Rebuild the trained model (eval mode) with its features, item ids and metrics.

    features_dir: where the run's content features are now (default: the path recorded at training);
    `load_features` still checks that they describe exactly the run's items.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FmrlError(f"{run_dir}: run directory not found")
    if not (run_dir / CHECKPOINT).exists():
        raise FmrlError(f"{run_dir}: no checkpoint ({CHECKPOINT}); the run did not finish an epoch")
    config = read_json(run_dir / "config.json")
    item_ids = read_json(run_dir / "items.json")
    cfg = ModelConfig(**config["model"])
    if config.get("features") and features_dir is not None:
        config["features"] = str(Path(features_dir).resolve())
    features = load_item_features(config["features"], item_ids) if config.get("features") else None
    model = FMRLRec(cfg, features)
    try:
        model.load_state_dict(load_file(str(run_dir / CHECKPOINT)))
    except RuntimeError as e:
        raise FmrlError(f"{run_dir / CHECKPOINT}: does not match config.json ({str(e).splitlines()[0]})") from None
    model.eval()
    metrics = read_json(run_dir / "metrics.json") if (run_dir / "metrics.json").exists() else {}
    return Run(run_dir, config, model, item_ids, metrics)


def append_history(run_dir: Path, record: dict) -> None:
    path = run_dir / "history.jsonl"
    old = path.read_bytes() if path.exists() else b""
    atomic_write_bytes(path, old + (json.dumps(record) + "\n").encode())
