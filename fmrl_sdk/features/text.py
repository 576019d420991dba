"""The text encoder: resolution, pooling, batched L2-normalised embeddings (item texts: fmrl_sdk/data/text.py).

Nothing here imports torch or transformers at module level; the encoder classes import them when built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import FmrlError
from ..jsonio import read_json
from .sources import EncoderSource, resolve_encoder

POOLING_MODES = ("cls", "mean", "max", "mean_sqrt_len", "last")


# ----------------------------------------------------------------------------------------------
# Pooling and length, read from the model folder without loading weights


def _read_json(path: Path) -> dict | list | None:
    """An optional model config: None when the file is absent; unreadable JSON is an FmrlError (a broken
    config must not silently change the pooling or the length)."""
    return read_json(path) if path.is_file() else None


def detect_pooling(folder: Path, name: str) -> tuple[str, str]:
    """(mode, reason). A sentence-transformers pooling config wins; else CLS for BGE models, else mean."""
    pooling_dir = None
    modules = _read_json(folder / "modules.json")
    if isinstance(modules, list):
        for module in modules:
            if isinstance(module, dict) and str(module.get("type", "")).endswith("Pooling"):
                pooling_dir = folder / str(module.get("path", ""))
                break
    if pooling_dir is None and (folder / "1_Pooling" / "config.json").exists():
        pooling_dir = folder / "1_Pooling"
    if pooling_dir is not None:
        cfg = _read_json(pooling_dir / "config.json")
        if isinstance(cfg, dict):
            where = f"{pooling_dir.name}/config.json" if pooling_dir != folder else "modules.json"
            if cfg.get("pooling_mode") in POOLING_MODES:  # newer sentence-transformers spelling
                return cfg["pooling_mode"], f"sentence-transformers {where}"
            for key, mode in (("pooling_mode_cls_token", "cls"), ("pooling_mode_mean_tokens", "mean"),
                              ("pooling_mode_max_tokens", "max"),
                              ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len"),
                              ("pooling_mode_lasttoken", "last")):
                if cfg.get(key):
                    return mode, f"sentence-transformers {where}"
    if "bge" in name.lower() or "bge" in folder.name.lower():
        return "cls", "BGE models use the [CLS] token"
    return "mean", "no pooling config found; mean pooling over tokens"


def detect_max_length(folder: Path) -> int:
    """max_seq_length from sentence_bert_config.json, else the tokenizer's limit, capped at 512."""
    cfg = _read_json(folder / "sentence_bert_config.json")
    if isinstance(cfg, dict) and isinstance(cfg.get("max_seq_length"), int) and cfg["max_seq_length"] > 0:
        return min(cfg["max_seq_length"], 8192)
    limits = []
    tok = _read_json(folder / "tokenizer_config.json")
    if isinstance(tok, dict) and isinstance(tok.get("model_max_length"), int):
        limits.append(tok["model_max_length"])
    model = _read_json(folder / "config.json")
    if isinstance(model, dict) and isinstance(model.get("max_position_embeddings"), int):
        limits.append(model["max_position_embeddings"])
    return min([512] + [n for n in limits if n > 0])


def pool(hidden, mask, mode: str):
    """Pool token states [B, T, H] with attention mask [B, T] into [B, H] (torch tensors)."""
    import torch

    if mode == "cls":
        return hidden[:, 0]
    m = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "mean" or mode == "mean_sqrt_len":
        total = (hidden * m).sum(1)
        count = m.sum(1).clamp(min=1.0)
        return total / (count if mode == "mean" else count.sqrt())
    if mode == "max":
        return hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).amax(1)
    if mode == "last":  # last non-padding token (right padding)
        last = mask.sum(1).clamp(min=1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise FmrlError(f"unknown pooling {mode!r}: expected one of {', '.join(POOLING_MODES)}")


# ----------------------------------------------------------------------------------------------
# The encoder

DEFAULT_TEXT_ENCODER = "BAAI/bge-large-en-v1.5"


def resolve_text_encoder(spec: str | None, allow_download: bool = False) -> EncoderSource:
    return resolve_encoder(spec, "text", allow_download=allow_download)


def describe_text_encoder(source: EncoderSource, pooling: str | None = None,
                          max_length: int | None = None) -> dict:
    """Everything that determines the text vectors besides the weights, read from files (no model load)."""
    folder = Path(source.path)
    if pooling is None:
        pooling, reason = detect_pooling(folder, source.name)
    else:
        if pooling not in POOLING_MODES:
            raise FmrlError(f"--text-pooling {pooling!r}: expected one of {', '.join(POOLING_MODES)}")
        reason = "set by the user"
    return {"pooling": pooling, "pooling_reason": reason,
            "max_length": int(max_length or detect_max_length(folder))}


def quiet_transformers() -> None:
    """No weight-loading progress bars or advisory warnings from transformers in our output."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # pragma: no cover - older/newer transformers
        pass


def check_device(device: str) -> str:
    import torch

    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise FmrlError(f"--device {device!r}: expected cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FmrlError("--device cuda: no CUDA device is available to torch")
    return device


class TextEncoder:
    """A transformers text model pooled as it expects and L2-normalised; float32 throughout."""

    def __init__(self, source: EncoderSource, device: str = "cpu", pooling: str | None = None,
                 max_length: int | None = None):
        import torch
        from transformers import AutoModel, AutoTokenizer

        quiet_transformers()
        self.source = source
        info = describe_text_encoder(source, pooling, max_length)
        self.pooling = info["pooling"]
        self.pooling_reason = info["pooling_reason"]
        self.max_length = info["max_length"]
        self.device = check_device(device)
        path = source.path
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = AutoModel.from_pretrained(path, local_files_only=True, dtype=torch.float32)
        except (OSError, ValueError, KeyError, RuntimeError, ImportError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise FmrlError(f"{path}: cannot load text encoder ({first})") from None
        if getattr(model.config, "is_encoder_decoder", False) and hasattr(model, "get_encoder"):
            model = model.get_encoder()
        self.model = model.to(self.device).eval()
        self.dim = int(getattr(model.config, "hidden_size", 0) or getattr(model.config, "d_model", 0))
        if self.tokenizer.pad_token is None:
            fallback = self.tokenizer.eos_token or self.tokenizer.unk_token
            if fallback is None:
                raise FmrlError(f"{path}: tokenizer has no padding token")
            self.tokenizer.pad_token = fallback
        import inspect

        try:
            params = inspect.signature(self.model.forward).parameters
        except (TypeError, ValueError):
            params = {}
        self._takes_token_types = "token_type_ids" in params

    def encode(self, texts: list[str], batch_size: int = 64,
               on_batch: Callable[[int], None] | None = None) -> np.ndarray:
        """[len(texts), dim] float32, unit rows. Batches are formed from length-sorted texts."""
        import torch

        if batch_size < 1:
            raise FmrlError(f"--batch-size {batch_size}: must be at least 1")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_length,
                             padding=False, return_attention_mask=False, return_token_type_ids=False)
        ids = enc["input_ids"]
        order = sorted(range(len(texts)), key=lambda i: -len(ids[i]))
        pad_id = self.tokenizer.pad_token_id
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                width = max(len(ids[i]) for i in rows)
                input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                for r, i in enumerate(rows):
                    input_ids[r, :len(ids[i])] = torch.tensor(ids[i], dtype=torch.long)
                    mask[r, :len(ids[i])] = 1
                kwargs = {"input_ids": input_ids.to(self.device), "attention_mask": mask.to(self.device)}
                if self._takes_token_types:
                    kwargs["token_type_ids"] = torch.zeros_like(kwargs["input_ids"])
                hidden = self.model(**kwargs).last_hidden_state.float()
                vec = pool(hidden, kwargs["attention_mask"], self.pooling)
                vec = torch.nn.functional.normalize(vec, p=2, dim=-1, eps=1e-12)
                out[rows] = vec.cpu().numpy()
                if on_batch is not None:
                    on_batch(len(rows))
        return out
