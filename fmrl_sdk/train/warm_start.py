"""Warm start: a new training run that starts from an earlier run's weights (`train --init-from runs/OLD`,
recipe `[train] init_from`).

The new item table is matched to OLD's by external item id (items.json):

- items OLD knows: their learned id rows (id, hybrid) are copied from OLD; their content part is OLD's
  projector applied to their features, as in OLD;
- items new since OLD: the content part comes from OLD's projector (nothing to copy); id rows
  (id, hybrid) stay as the new model initialised them, exactly like a cold run's;
- items OLD knew that the new data lacks are dropped.

Every other weight (the LRU blocks, the projector, the whitening OLD fixed) is copied as is. Only the
weights carry over: the optimizer moments, the learning-rate schedule (warmup included), the early-stopping
state and the RNGs start fresh, as in any new run.

`check` runs in `trainer.prepare()`, before a run directory exists; `init_model` right after the new model
is built. Both raise a one-line FmrlError naming OLD. OLD is read with `read_run` and safetensors (no pickle);
OLD's features are not needed (the new run's features cover every item, old and new).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import FmrlError
from .run import CHECKPOINT, read_run

if TYPE_CHECKING:
    from ..model.model import FMRLRec, ModelConfig

# ModelConfig keys that fix the weights' shapes and meaning, in the order a difference is reported
# (item_embedding first: it also changes feature_dim). num_items may differ, dropouts and r_min/r_max
# only shape training and initialisation.
SHAPE_KEYS = ("item_embedding", "sizes", "num_blocks", "id_dims", "whiten_features", "feature_dim")
ID_TABLE = "id_embedding.weight"


def check(init_from: str | Path, cfg: ModelConfig) -> Path:
    """Validate OLD against the new run's model config; return OLD's absolute path. FmrlError when OLD is
    missing, lacks model.safetensors / config.json / items.json, or its model has another shape."""
    from safetensors import SafetensorError, safe_open

    from ..model.model import ModelConfig

    path = Path(init_from).expanduser()
    if not path.is_dir():
        raise FmrlError(f"{path}: run to warm-start from (init_from) not found")
    for name in ("config.json", "items.json", CHECKPOINT):
        if not (path / name).is_file():
            raise FmrlError(f"{path}: cannot warm-start from it: no {name}")
    info = read_run(path)
    if not isinstance(info.config.get("model"), dict):
        raise FmrlError(f"{path / 'config.json'}: no model configuration")
    try:
        old = ModelConfig.from_dict(info.config["model"])
    except (TypeError, ValueError) as e:
        raise FmrlError(f"{path / 'config.json'}: invalid model configuration ({e})") from None
    for key in SHAPE_KEYS:
        if getattr(old, key) != getattr(cfg, key):
            what = " (content features of another dimension)" if key == "feature_dim" else ""
            raise FmrlError(f"{path}: cannot warm-start from it: the model's {key} differs: "
                            f"{_shown(getattr(old, key))} in that run, {_shown(getattr(cfg, key))} here{what}")
    if not isinstance(info.item_ids, list) or len(info.item_ids) != old.num_items:
        raise FmrlError(f"{path / 'items.json'}: expected {old.num_items} item ids (the model's num_items)")
    try:
        with safe_open(str(path / CHECKPOINT), framework="pt") as f:
            shapes = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise FmrlError(f"{path / CHECKPOINT}: not a readable safetensors file ({e})") from None
    if old.uses_ids and shapes.get(ID_TABLE) != [old.num_items + 1, old.id_width]:
        raise FmrlError(f"{path / CHECKPOINT}: {ID_TABLE} has shape {shapes.get(ID_TABLE)}, expected "
                        f"{[old.num_items + 1, old.id_width]} from config.json")
    return path.resolve()


def init_model(model: FMRLRec, item_ids: list[str], init_from: str | Path) -> dict:
    """Load OLD's weights into the freshly initialised `model` whose items are `item_ids` (external ids,
    internal order), matching items by id. Returns the record the run's config.json keeps:
    {"run": OLD's absolute path, "items_copied": n, "items_new": m, "items_dropped": k}."""
    import torch
    from safetensors.torch import load_file

    path = check(init_from, model.cfg)
    old_ids = [str(i) for i in read_run(path).item_ids]
    old_state = load_file(str(path / CHECKPOINT))
    new_state = model.state_dict()
    where = path / CHECKPOINT
    if set(old_state) != set(new_state):
        differ = sorted(set(old_state) ^ set(new_state))[0]
        raise FmrlError(f"{where}: does not match the model's weights (first differing weight: {differ})")
    old_index = {item: i + 1 for i, item in enumerate(old_ids)}
    new_ids = [str(i) for i in item_ids]
    shared = [(j + 1, old_index[item]) for j, item in enumerate(new_ids) if item in old_index]
    state = {}
    with torch.no_grad():
        for key, target in new_state.items():
            source = old_state[key]
            if key == ID_TABLE:
                if source.shape != (len(old_ids) + 1, target.shape[1]):
                    raise FmrlError(f"{where}: {key} has shape {list(source.shape)}, expected "
                                    f"{[len(old_ids) + 1, target.shape[1]]}")
                rows = target.detach().clone()  # new items keep the new model's own initialisation
                if shared:
                    new_rows, old_rows = (torch.tensor(r, dtype=torch.long) for r in zip(*shared))
                    rows[new_rows] = source[old_rows].to(rows.dtype)
                state[key] = rows
            elif source.shape != target.shape:
                raise FmrlError(f"{where}: {key} has shape {list(source.shape)}, expected {list(target.shape)}")
            else:
                state[key] = source.to(target.dtype)
    model.load_state_dict(state)  # refreshes the projector inputs (OLD's whitening) through the model's hook
    return {"run": str(path), "items_copied": len(shared), "items_new": len(new_ids) - len(shared),
            "items_dropped": len(old_ids) - len(shared)}


def describe(record: dict) -> str:
    """The one line `train` prints about a warm start."""
    return (f"warm start from {record['run']}: {record['items_copied']:,} items copied, "
            f"{record['items_new']:,} new, {record['items_dropped']:,} dropped; "
            "optimizer and learning-rate schedule start fresh")


def _shown(value) -> str:
    return str(list(value)) if isinstance(value, tuple) else repr(value)
