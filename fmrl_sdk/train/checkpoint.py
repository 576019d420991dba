"""Resumable training state: safetensors for tensors, JSON for everything else (no pickle).

runs/NAME/train_state.safetensors  model.*      current weights
                                   best.*       best weights (absent when the current epoch is the best)
                                   optimizer.<param index>.<name>   AdamW moments and step counts
                                   rng.torch.<rank>, rng.cuda.<rank> every rank's generator state
runs/NAME/train_state.json         epoch, best score / epoch, early-stopping counter, optimizer groups,
                                   scheduler, numpy generator, the epoch's history record, best metrics

Written by rank 0 at the end of every epoch, before the files derived from it (model.safetensors,
metrics.json, history.jsonl), each file atomically (temporary file + rename). The same JSON is embedded
in the safetensors metadata with a random token, so a kill between the two renames is detected and the
embedded copy (which matches the tensors) is used. `reconcile` rewrites the derived files from the
state on resume, so every kill point resumes to a consistent run directory.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from ..errors import FmrlError
from ..fileio import atomic_save_file, atomic_write_bytes, atomic_write_json, exclusive_lock, release_lock
from ..jsonio import parse_json_text, read_json
from .run import CHECKPOINT, save_checkpoint, write_metrics

TENSORS, META, LOCK = "train_state.safetensors", "train_state.json", ".lock"
FORMAT = "fmrl-sdk-train-state/1"


def lock(run_dir: Path) -> int | None:
    """Hold an exclusive lock on the run directory while training (fileio.exclusive_lock: dropped by the OS
    when the process dies, SIGKILL included), so that a resume cannot race a run that is still going."""
    return exclusive_lock(run_dir / LOCK, run_dir, "train")


def unlock(run_dir: Path, handle: int | None) -> None:
    release_lock(run_dir / LOCK, handle)


def check_resumable(run_dir: Path) -> None:
    """FmrlError when run_dir is being trained right now or has finished (checked before launching)."""
    unlock(run_dir, lock(run_dir))
    if not has_state(run_dir) and (run_dir / CHECKPOINT).exists():
        raise FmrlError(f"{run_dir}: has a checkpoint but no training state to resume from "
                        "(trained by an older fmrl-sdk?)")
    if has_state(run_dir):
        meta, _ = load_state(run_dir)
        if meta.get("finished"):
            raise FmrlError(f"{run_dir}: training already finished (epoch {meta['epoch']}); nothing to resume")


def remove_partial_writes(run_dir: Path) -> list[str]:
    """Delete the temporary files of atomic writes cut short by a kill (training state, checkpoint,
    metrics, history: `.NAME.<random>.tmp`). Call with the run's lock held. Returns the names removed."""
    patterns = [f".{TENSORS}.tmp"] + [f".{name}.*.tmp" for name in (META, CHECKPOINT, "metrics.json", "history.jsonl")]
    removed = []
    for pattern in patterns:
        for path in run_dir.glob(pattern):
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return sorted(removed)


def has_state(run_dir: Path) -> bool:
    return (run_dir / TENSORS).exists()


def save_state(run_dir: Path, model, optimizer, scheduler, rng: np.random.Generator, scalars: dict,
               best_weights: dict | None, torch_rng: list[torch.Tensor], cuda_rng: list[torch.Tensor]) -> None:
    """scalars: epoch, best, best_epoch, waited, ... (JSON). best_weights None: the current weights are best."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    if best_weights is not None:
        tensors.update({f"best.{k}": v for k, v in best_weights.items()})
    opt = optimizer.state_dict()
    opt_scalars = {}
    for index, values in opt["state"].items():
        for name, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{index}.{name}"] = value
            else:
                opt_scalars[f"{index}.{name}"] = value
    tensors.update({f"rng.torch.{r}": s for r, s in enumerate(torch_rng)})
    tensors.update({f"rng.cuda.{r}": s for r, s in enumerate(cuda_rng)})
    meta = {"format": FORMAT, "token": uuid.uuid4().hex, **scalars,
            "best_is_current": best_weights is None, "world_size": len(torch_rng),
            "optimizer": {"param_groups": opt["param_groups"], "scalars": opt_scalars},
            "scheduler": scheduler.state_dict(), "numpy_rng": rng.bit_generator.state}
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_save_file(run_dir / TENSORS, run_dir / f".{TENSORS}.tmp",
                     lambda tmp: save_file(tensors, tmp, metadata={"format": FORMAT, "train_state": json.dumps(meta)}))
    atomic_write_json(run_dir / META, meta)


def load_state(run_dir: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(scalars, tensors) of the last completed epoch; FmrlError when missing or unreadable."""
    path = run_dir / TENSORS
    try:
        with safe_open(str(path), "pt") as f:
            embedded = parse_json_text((f.metadata() or {})["train_state"], str(path), "train_state")
        tensors = load_file(str(path))
    except FileNotFoundError:
        raise FmrlError(f"{path}: not found") from None
    except (SafetensorError, KeyError, FmrlError, OSError) as e:
        raise FmrlError(f"{path}: not a readable training state ({type(e).__name__})") from None
    meta = embedded
    if (run_dir / META).exists():
        try:
            written = read_json(run_dir / META)
        except FmrlError:
            written = {}
        if written.get("token") == embedded.get("token"):
            meta = written  # same epoch; the JSON file may carry later flags ("finished")
    if meta.get("format") != FORMAT:
        raise FmrlError(f"{path}: unknown training-state format {meta.get('format')!r}")
    return meta, tensors


def restore(meta: dict, tensors: dict, model, optimizer, scheduler, rng: np.random.Generator,
            rank: int, device: torch.device, source: Path) -> dict | None:
    """Load everything into the live objects; returns the best weights (None: same as the model)."""
    def part(prefix: str) -> dict:
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    try:
        model.load_state_dict(part("model."))
    except RuntimeError as e:
        raise FmrlError(f"{source}: does not match the run's model ({str(e).splitlines()[0]})") from None
    state: dict = {}
    for key, value in part("optimizer.").items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for key, value in meta["optimizer"]["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in meta["optimizer"]["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    scheduler.load_state_dict(dict(meta["scheduler"]))
    rng.bit_generator.state = meta["numpy_rng"]
    if f"rng.torch.{rank}" in tensors:
        torch.set_rng_state(tensors[f"rng.torch.{rank}"])
    else:  # resumed on more processes than saved: a fresh, deterministic stream for this rank
        torch.manual_seed(int(meta["seed"]) + 7919 * int(meta["epoch"]) + rank)
    if device.type == "cuda" and f"rng.cuda.{rank}" in tensors:
        torch.cuda.set_rng_state(tensors[f"rng.cuda.{rank}"], device)
    best = part("best.")
    return {k: v.to(device) for k, v in best.items()} if best else None


def reconcile(run_dir: Path, meta: dict, model, best_weights: dict | None) -> None:
    """Make the derived files agree with the state: history up to its epoch, best checkpoint, val metrics."""
    path = run_dir / "history.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    kept = [line for line in lines if _epoch_of(line) <= meta["epoch"]]
    if meta.get("record") and (not kept or _epoch_of(kept[-1]) < meta["epoch"]):
        kept.append(json.dumps(meta["record"]))
    atomic_write_bytes(path, "".join(line + "\n" for line in kept).encode())
    if meta["best_epoch"]:
        save_checkpoint(model, run_dir, best_weights)
        write_metrics(run_dir, "val", {int(k): v for k, v in meta["best_val"].items()})


def mark_finished(run_dir: Path) -> None:
    path = run_dir / META
    meta = read_json(path)
    atomic_write_json(path, {**meta, "finished": True})


def _epoch_of(line: str) -> int:
    try:
        return int(parse_json_text(line, "history.jsonl")["epoch"])
    except (FmrlError, KeyError, TypeError, ValueError):
        return 1 << 30  # unreadable lines (a torn write cannot happen: appends are atomic) are dropped
