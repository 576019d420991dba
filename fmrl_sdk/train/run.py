"""Run directories: written here (checkpoint, metrics, history) and read here, by `read_run` (JSON only,
no torch) and `load_run` (the model too). Every later stage (eval, export, item-vectors, make-stream)
reads a run through these two functions.

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
from typing import TYPE_CHECKING

from ..data.split import SplitSpec
from ..errors import FmrlError
from ..fileio import atomic_write_bytes, atomic_write_json
from ..jsonio import read_json

if TYPE_CHECKING:
    import torch

    from ..model.model import FMRLRec

CHECKPOINT = "model.safetensors"
TRAIN_STATE = "train_state.json"   # checkpoint.META: carries "finished": true once training completed
DEFAULT_MIN_COUNT = 5              # recipe defaults, for configs that do not record them
DEFAULT_MAX_LEN = 50


@dataclass(frozen=True)
class RunInfo:
    """What a run directory says about itself, from its JSON files (see `read_run`)."""

    path: Path
    config: dict                 # config.json as written by the trainer
    item_ids: list[str]          # items.json: internal index i + 1 is item_ids[i]
    data_path: str | None        # the dataset the run was trained on (config data.path; None: not recorded)
    min_count: int               # recipe data.min_count (k-core used when loading data_path)
    max_len: int                 # recipe data.max_len (history length the model saw)
    items: str | None            # recipe data.items: the item catalogue used with data_path (None: none)
    features: Path | None        # content features folder, resolved (None: the run uses none)
    split: SplitSpec             # recipe data.split / test_from / val_from (as asked, resolved on loading)
    has_checkpoint: bool         # model.safetensors exists (at least one epoch finished)
    finished: bool | None        # training completed; False: interrupted (resumable); None: unknown
                                 # (no train_state.json: a run from before resumable training, or hand-made)


def read_run(run_dir: str | Path) -> RunInfo:
    """Read a run directory's config.json and items.json (FmrlError when either is missing).

    features: the recorded path if it exists; a relative path that does not exist from the current
    directory is taken relative to the run directory (a run folder moved with its features); otherwise
    the recorded path as is (`load_features` reports it missing when it is needed).
    finished: from train_state.json's "finished" flag (see `RunInfo.finished`).
    """
    run_dir = Path(run_dir).expanduser()
    if not run_dir.is_dir():
        raise FmrlError(f"{run_dir}: run directory not found")
    if not (run_dir / "config.json").exists():
        raise FmrlError(f"{run_dir}: not a run directory (no config.json)")
    config = read_json(run_dir / "config.json")
    if not (run_dir / "items.json").exists():
        raise FmrlError(f"{run_dir}: not a run directory (no items.json)")
    item_ids = read_json(run_dir / "items.json")
    if not isinstance(config, dict):
        raise FmrlError(f"{run_dir / 'config.json'}: not a run configuration (expected a JSON object)")
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    recipe_data = (config.get("recipe") or {}).get("data") or {}
    features = None
    if config.get("features"):
        features = Path(config["features"]).expanduser()
        if not features.exists() and not features.is_absolute() and (run_dir / features).exists():
            features = run_dir / features
    finished = None
    if (run_dir / TRAIN_STATE).exists():
        finished = bool(read_json(run_dir / TRAIN_STATE).get("finished", False))
    return RunInfo(run_dir, config, item_ids, str(data["path"]) if data.get("path") else None,
                   int(recipe_data.get("min_count", DEFAULT_MIN_COUNT)),
                   int(recipe_data.get("max_len", DEFAULT_MAX_LEN)), recipe_data.get("items") or None, features,
                   SplitSpec(recipe_data.get("split", "leave-one-out"), recipe_data.get("test_from", ""),
                             recipe_data.get("val_from", "")),
                   (run_dir / CHECKPOINT).exists(), finished)


def load_run_dataset(info: RunInfo, data: str | None = None, items: str | None = None,
                     with_catalogue: bool = True):
    """The dataset the run was trained on (data.path, its catalogue, min_count), checked against the
    run's items. data / items: where they are now, if they moved since training. with_catalogue=False
    reads interactions only (callers that never use item content: export, make-stream), so a catalogue
    that moved since training does not stop them. FmrlError when config.json records no data.path and
    none is given: there is no fallback dataset."""
    from ..data.dataset import load_dataset

    path = data or info.data_path
    if path is None:
        raise FmrlError(f"{info.path / 'config.json'}: no data.path")
    catalogue = (items or info.items) if with_catalogue else None
    dataset = load_dataset(path, min_count=info.min_count, split=info.split,
                           **({"items": catalogue} if catalogue else {}))
    if dataset.item_ids != info.item_ids:
        raise FmrlError(f"{info.path}: the run's items differ from its dataset {dataset.source}")
    return dataset


@dataclass
class Run:
    path: Path
    config: dict
    model: FMRLRec
    item_ids: list[str]
    metrics: dict = field(default_factory=dict)
    info: RunInfo | None = None

    @property
    def sizes(self) -> list[int]:
        return list(self.model.cfg.sizes)


def load_item_features(features_dir: str | Path, item_ids: list[str]) -> torch.Tensor:
    """[N + 1, F] float32 content features aligned with item_ids, row 0 (padding) zeros."""
    import numpy as np
    import torch

    from ..features import load_features

    matrix, _ = load_features(features_dir, item_ids)
    matrix = torch.from_numpy(np.ascontiguousarray(matrix, dtype=np.float32))
    return torch.cat([torch.zeros(1, matrix.shape[1]), matrix])


def save_checkpoint(model: FMRLRec, run_dir: Path, state: dict | None = None) -> None:
    """Write `state` (default: the model's current weights) as the run's checkpoint, atomically."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in (state or model.state_dict()).items()}
    from ..fileio import atomic_save_file

    metadata = {"format": "fmrl-sdk", "sizes": json.dumps(list(model.cfg.sizes))}
    atomic_save_file(run_dir / CHECKPOINT, run_dir / f".{CHECKPOINT}.tmp",
                     lambda tmp: save_file(state, tmp, metadata=metadata))


def write_metrics(run_dir: Path, split: str, metrics: dict[int, dict[str, float]]) -> None:
    path = run_dir / "metrics.json"
    current = read_json(path) if path.exists() else {}
    current[split] = {str(size): values for size, values in metrics.items()}
    atomic_write_json(path, current)


def newest_run(root: str | Path = "runs") -> Path:
    root = Path(root)
    runs = [p.parent for p in root.glob(f"*/{CHECKPOINT}")] if root.exists() else []
    if not runs:
        raise FmrlError(f"no trained run under {root}/ (train one with `fmrl-sdk train`, or pass --run)")
    return max(runs, key=lambda p: (p / CHECKPOINT).stat().st_mtime)


def load_run(run_dir: str | Path, features_dir: str | Path | None = None) -> Run:
    """Rebuild the trained model (eval mode) with its features, item ids and metrics (`read_run` first).

    features_dir: where the run's content features are now (default: `RunInfo.features`);
    `load_features` still checks that they describe exactly the run's items.
    """
    from safetensors.torch import load_file

    from ..model.model import FMRLRec, ModelConfig

    run_dir = Path(run_dir).expanduser()
    if run_dir.is_dir() and not (run_dir / CHECKPOINT).exists():
        raise FmrlError(f"{run_dir}: no checkpoint ({CHECKPOINT}); the run did not finish an epoch")
    info = read_run(run_dir)
    config = info.config
    cfg = ModelConfig.from_dict(config["model"])
    features_path = None
    if config.get("features"):
        features_path = Path(features_dir).resolve() if features_dir is not None else info.features
        config["features"] = str(features_path)
    features = load_item_features(features_path, info.item_ids) if features_path is not None else None
    model = FMRLRec(cfg, features)
    try:
        model.load_state_dict(load_file(str(run_dir / CHECKPOINT)))
    except RuntimeError as e:
        raise FmrlError(f"{run_dir / CHECKPOINT}: does not match config.json ({str(e).splitlines()[0]})") from None
    model.eval()
    metrics = read_json(run_dir / "metrics.json") if (run_dir / "metrics.json").exists() else {}
    return Run(run_dir, config, model, info.item_ids, metrics, info)


def append_history(run_dir: Path, record: dict) -> None:
    path = run_dir / "history.jsonl"
    old = path.read_bytes() if path.exists() else b""
    atomic_write_bytes(path, old + (json.dumps(record) + "\n").encode())
