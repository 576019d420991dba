"""Item images: the item -> file mapping, tolerant loading, and the vision encoder.

A bad image (missing, corrupt, truncated, undecodable by the processor) becomes a zero row with mask 0 and is
counted; it never stops a run. torch/transformers are imported only when an encoder is built.
"""

from __future__ import annotations

import csv
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import FmrlError
from ..fileio import sha256_file
from ..jsonio import read_json
from .sources import EncoderSource

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
ID_COLUMNS = ("item", "item_id", "asin", "id")
PATH_COLUMNS = ("path", "image", "image_path", "file")
STATUSES = ("ok", "unmapped", "url", "missing", "corrupt")


@dataclass
class ImageMap:
    """Per item (dataset order) the image path or None, and why it is None ('unmapped' or 'url')."""

    source: str
    paths: list[Path | None]
    status: list[str]
    kind: str  # folder | json | csv | pickle | catalogue
    extra: dict = field(default_factory=dict)

    @property
    def mapped(self) -> int:
        return sum(p is not None for p in self.paths)


def _is_url(value: str) -> bool:
    return value.lower().startswith(("http://", "https://", "ftp://", "s3://", "gs://"))


def _resolve(base: Path, value: str) -> Path:
    """A path from a map file: absolute, else relative to the map's folder; fall back to base/filename."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    candidate = base / path
    if not candidate.exists() and (base / path.name).exists():
        return base / path.name
    return candidate


def _read_mapping(spec: Path, trust_pickle: bool) -> tuple[dict[str, str], str]:
    suffix = spec.suffix.lower()
    if suffix in (".pkl", ".pickle"):
        if not trust_pickle:
            raise FmrlError(f"{spec}: is a pickle, and loading a pickle can run arbitrary code; pass "
                            "--trust-pickle only if you trust where this file came from (or convert it to JSON)")
        try:
            with open(spec, "rb") as f:
                mapping = pickle.load(f)  # noqa: S301 - explicitly allowed by the user with --trust-pickle
        except Exception as e:
            raise FmrlError(f"{spec}: cannot read pickle ({type(e).__name__}: {e})") from None
        kind = "pickle"
    elif suffix == ".json":
        mapping = read_json(spec)
        kind = "json"
    elif suffix in (".csv", ".tsv"):
        mapping = {}
        with open(spec, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            fields = reader.fieldnames or []
            id_col = next((c for c in ID_COLUMNS if c in fields), None)
            path_col = next((c for c in PATH_COLUMNS if c in fields), None)
            if id_col is None or path_col is None:
                raise FmrlError(f"{spec}:1: image map needs an id column ({'/'.join(ID_COLUMNS)}) and a path "
                                f"column ({'/'.join(PATH_COLUMNS)}); got {fields}")
            for row in reader:
                key, value = (row.get(id_col) or "").strip(), (row.get(path_col) or "").strip()
                if key and value:
                    mapping[key] = value
        kind = "csv"
    else:
        raise FmrlError(f"{spec}: unknown image map format (expected a folder, .json, .csv or a .pkl "
                        "with --trust-pickle)")
    if not isinstance(mapping, dict):
        raise FmrlError(f"{spec}: image map must be an object mapping item id -> image path "
                        f"(got {type(mapping).__name__})")
    clean = {}
    for key, value in mapping.items():
        if isinstance(value, (list, tuple)) and value:  # several images per item: take the first
            value = value[0]
        if isinstance(value, (str, Path)) and str(value).strip():
            clean[str(key)] = str(value).strip()
    return clean, kind


def _index_folder(folder: Path) -> dict[str, Path]:
    """file stem -> path for image files (first extension in IMAGE_EXTENSIONS order wins)."""
    index: dict[str, Path] = {}
    rank = {ext: i for i, ext in enumerate(IMAGE_EXTENSIONS)}
    for path in folder.iterdir():
        ext = path.suffix.lower()
        if ext not in rank or not path.is_file():
            continue
        old = index.get(path.stem)
        if old is None or rank[ext] < rank[old.suffix.lower()]:
            index[path.stem] = path
    return index


def build_image_map(spec: str | Path, item_ids: list[str], alt_ids: list[str] | None = None,
                    trust_pickle: bool = False) -> ImageMap:
    """Map each item to an image file: by its id, else its alternative id (P5: the item's number)."""
    spec = Path(spec).expanduser()
    if not spec.exists():
        raise FmrlError(f"{spec}: --images not found")
    keys = [[i] for i in item_ids]
    if alt_ids is not None:
        keys = [k + [a] for k, a in zip(keys, alt_ids)]
    paths: list[Path | None] = []
    status: list[str] = []
    if spec.is_dir():
        index = _index_folder(spec)
        lower = {k.lower(): v for k, v in index.items()}
        for ks in keys:
            hit = next((index[k] for k in ks if k in index), None)
            if hit is None:
                hit = next((lower[k.lower()] for k in ks if k.lower() in lower), None)
            paths.append(hit)
            status.append("mapped" if hit is not None else "unmapped")
        return ImageMap(str(spec), paths, status, "folder", {"files": len(index)})
    mapping, kind = _read_mapping(spec, trust_pickle)
    values = [next((mapping[k] for k in ks if k in mapping), None) for ks in keys]
    paths, status = _mapped_paths(values, lambda value: _resolve(spec.parent, value))
    return ImageMap(str(spec), paths, status, kind, {"entries": len(mapping)})


def _mapped_paths(values: list, resolve) -> tuple[list[Path | None], list[str]]:
    """Per item: (path, status) for a mapped value: None -> "unmapped", a URL -> "url", else resolve(value)."""
    paths: list[Path | None] = []
    status: list[str] = []
    for value in values:
        if value is None or _is_url(value):
            paths.append(None)
            status.append("unmapped" if value is None else "url")
        else:
            paths.append(resolve(value))
            status.append("mapped")
    return paths, status


def catalogue_image_map(catalogue_path: str | Path, item_ids: list[str], values: dict[str, str]) -> ImageMap:
    """Map items to the `image` field of an --items catalogue: paths relative to the catalogue's folder."""
    base = Path(catalogue_path).parent

    def resolve(value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else base / path

    paths, status = _mapped_paths([values.get(item) for item in item_ids], resolve)
    return ImageMap(str(catalogue_path), paths, status, "catalogue", {"entries": len(values)})


def image_fingerprints(imap: ImageMap) -> list[str]:
    """Per item: sha256 of its image file, or why there is none. Part of the features' input hash."""
    out = []
    for path, status in zip(imap.paths, imap.status):
        if path is None:
            out.append(status)
        elif not path.is_file():
            out.append("missing")
        else:
            try:
                out.append(sha256_file(path))
            except OSError:
                out.append("unreadable")
    return out


def open_image(path: Path | None):
    """(RGB PIL image, 'ok') or (None, 'unmapped'|'missing'|'corrupt'). EXIF orientation is applied."""
    from PIL import Image, ImageOps

    if path is None:
        return None, "unmapped"
    if not Path(path).is_file():
        return None, "missing"
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            rgb = im.convert("RGB")
            rgb.load()
        if rgb.width < 1 or rgb.height < 1:
            return None, "corrupt"
        return rgb, "ok"
    except Exception:  # truncated, not an image, decompression bomb, broken EXIF...
        return None, "corrupt"


class ImageEncoder:
    """AutoImageProcessor + vision model: get_image_features for CLIP/SigLIP, pooled output otherwise."""

    def __init__(self, source: EncoderSource, device: str = "cpu"):
        import torch
        from transformers import AutoImageProcessor, AutoModel

        from .text import check_device, quiet_transformers

        quiet_transformers()
        self.source = source
        self.device = check_device(device)
        try:
            self.processor = AutoImageProcessor.from_pretrained(source.path, local_files_only=True)
            model = AutoModel.from_pretrained(source.path, local_files_only=True, dtype=torch.float32)
        except (OSError, ValueError, KeyError, RuntimeError, ImportError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise FmrlError(f"{source.path}: cannot load image encoder ({first})") from None
        self.model = model.to(self.device).eval()
        self.method = "get_image_features" if hasattr(model, "get_image_features") else "pooled_output"
        from PIL import Image

        probe = self._embed([Image.new("RGB", (64, 64), (128, 128, 128))])
        self.dim = int(probe.shape[-1])

    def _embed(self, images: list):
        import torch

        inputs = self.processor(images=images, return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(self.device, dtype=torch.float32)
        with torch.inference_mode():
            if self.method == "get_image_features":
                out = self.model.get_image_features(pixel_values=pixel_values)
                if not torch.is_tensor(out):  # transformers 5 returns a model output with the projection
                    out = out.pooler_output if getattr(out, "pooler_output", None) is not None else out[0]
            else:
                result = self.model(pixel_values=pixel_values)
                out = None
                for attr in ("image_embeds", "pooler_output"):
                    value = getattr(result, attr, None)
                    if value is not None:
                        out = value
                        break
                if out is None:
                    hidden = result.last_hidden_state
                    out = hidden.mean(dim=1) if hidden.dim() == 3 else hidden.flatten(2).mean(-1)
            out = out.float().reshape(out.shape[0], -1)
            return torch.nn.functional.normalize(out, p=2, dim=-1, eps=1e-12).cpu().numpy()

    def encode(self, paths: list[Path | None], batch_size: int = 32,
               on_batch: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(features [N, dim] float32, mask [N] uint8, per-item status). Bad images give zero rows."""
        n = len(paths)
        feats = np.zeros((n, self.dim), dtype=np.float32)
        mask = np.zeros(n, dtype=np.uint8)
        status = ["unmapped"] * n
        for start in range(0, n, batch_size):
            rows, images = [], []
            for i in range(start, min(n, start + batch_size)):
                image, status[i] = open_image(paths[i])
                if image is not None:
                    rows.append(i)
                    images.append(image)
            if images:
                try:
                    feats[rows] = self._embed(images)
                    mask[rows] = 1
                except Exception:  # one odd image must not sink the batch: retry one by one
                    for i, image in zip(rows, images):
                        try:
                            feats[i] = self._embed([image])[0]
                            mask[i] = 1
                        except Exception:
                            status[i] = "corrupt"
            if on_batch is not None:
                on_batch(min(n, start + batch_size) - start)
        return feats, mask, status
