"""featurize (dataset -> features folder) and features for new items with the same encoders
(`features_for_items`; train/vectors.py turns them into item vectors with a trained run)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import FmrlError
from ..fileio import sha256_file
from ..jsonio import read_jsonl_objects
from .sources import EncoderSource, resolve_encoder, set_offline, source_from_manifest
from .store import FORMAT, VERSION, cache_hit, check_out_dir, ids_sha256, input_hash, now_iso, write_features
from ..data.text import UNTITLED, item_text, item_texts
from .text import describe_text_encoder


def _console(console):
    if console is not None:
        return console
    from rich.console import Console

    return Console()


def _progress(console):
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task):
            speed = task.finished_speed or task.speed
            return Text(f"{speed:,.0f} items/s" if speed else "- items/s", style="cyan")

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Rate(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console)


def _short(revision: str) -> str:
    return revision[:19] if revision.startswith("sha256:") else revision[:12]


def _identity(source: EncoderSource) -> dict:
    return {"name": source.name, "revision": source.revision}


def _library_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("transformers", "torch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:  # pragma: no cover
            pass
    return out


def _encode_texts(encoder, texts, batch_size, console, label="text") -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    with _progress(console) as progress:
        task = progress.add_task(f"{label} ({encoder.source.name})", total=len(texts))
        feats = encoder.encode(texts, batch_size=batch_size, on_batch=lambda k: progress.advance(task, k))
    return feats, time.perf_counter() - start


def _encode_images(encoder, paths, batch_size, console) -> tuple[np.ndarray, np.ndarray, list[str], float]:
    start = time.perf_counter()
    with _progress(console) as progress:
        task = progress.add_task(f"images ({encoder.source.name})", total=len(paths))
        feats, mask, status = encoder.encode(paths, batch_size=batch_size,
                                             on_batch=lambda k: progress.advance(task, k))
    return feats, mask, status, time.perf_counter() - start


# ----------------------------------------------------------------------------------------------
# featurize


@dataclass
class FeaturizeOptions:
    """What `featurize` does besides its input and output (the `fmrl-sdk featurize` options)."""
    text_encoder: str | None = None
    image_encoder: str | None = None
    images: str | None = None
    batch_size: int = 64
    image_batch_size: int | None = None
    device: str = "cpu"
    limit_items: int | None = None
    trust_pickle: bool = False
    from_npy: str | None = None
    text_template: str | None = None
    text_pooling: str | None = None
    allow_download: bool = False
    force: bool = False
    items: str | None = None
    strict: bool = False
    allow_constant: bool = False


@dataclass
class _Items:
    dataset: object
    ids: list[str]
    metas: list[dict]
    total_items: int          # before --limit-items


@dataclass
class _Encoders:
    template: str
    texts: list[str]
    text: EncoderSource
    text_info: dict
    image_map: object = None  # images.ImageMap when images are encoded
    image: EncoderSource | None = None
    fingerprints: list[str] = field(default_factory=list)


def featurize(data, out, *, console=None, **options) -> dict:
    """Compute (or reuse) the features folder `out` for every item of `data` (before k-core filtering, so
    any [data] min_count can use them), with item content from the `items` catalogue if given. `options`:
    the fields of FeaturizeOptions."""
    opts = FeaturizeOptions(**options)
    t0 = time.perf_counter()
    set_offline(opts.allow_download)
    console = _console(console)
    out = Path(out).expanduser()
    check_out_dir(out)
    if opts.batch_size < 1:
        raise FmrlError(f"--batch-size {opts.batch_size}: must be at least 1")
    items = _read_items(data, opts, console)
    base = _manifest_base(items, opts.limit_items)
    if opts.from_npy is not None:
        if opts.text_encoder or opts.image_encoder or opts.images or opts.text_template:
            raise FmrlError("--from-npy imports finished features; drop --text-encoder/--image-encoder/"
                            "--images/--text-template")
        return _import_npy(Path(opts.from_npy).expanduser(), out, items.ids, items.total_items, base, opts.force,
                           console, t0)
    enc = _choose_text_encoder(items, opts, console)
    _choose_images(enc, items, opts, console)
    digest = input_hash(_input_parts(enc, items.ids))
    if not opts.force:
        hit = cache_hit(out, digest)
        if hit is not None:
            console.print(f"[green]cache: {out} already holds features for these inputs "
                          f"(input hash {digest[:12]}); reusing them[/green]")
            return {"out": str(out), "items": len(items.ids), "cached": True,
                    "seconds": round(time.perf_counter() - t0, 3), "dim": hit.get("dim"), "input_hash": digest,
                    "manifest": hit}
    tensors, modalities, seconds, counts = _encode(enc, opts, console)
    return _write(out, base, items.ids, tensors, modalities, seconds, counts, enc, digest, opts, console, t0)


def _read_items(data, opts: FeaturizeOptions, console) -> _Items:
    """The items of `data` (with the --items catalogue's content), cut to --limit-items."""
    from ..data.catalogue import alignment_lines
    from ..data.dataset import load_items

    dataset = load_items(data, items=opts.items, strict=opts.strict)
    for line in alignment_lines(dataset.report.get("catalogue")):
        console.print(line)
    ids = list(dataset.item_ids)
    metas = list(dataset.item_meta) + [{}] * (len(ids) - len(dataset.item_meta))
    total_items = len(ids)
    if opts.limit_items is not None:
        if opts.limit_items < 1:
            raise FmrlError(f"--limit-items {opts.limit_items}: must be at least 1")
        ids, metas = ids[:opts.limit_items], metas[:opts.limit_items]
    return _Items(dataset, ids, metas, total_items)


def _manifest_base(items: _Items, limit_items: int | None) -> dict:
    dataset = items.dataset
    return {
        "format": FORMAT, "version": VERSION, "created": now_iso(),
        "dataset": {"name": dataset.name, "source": dataset.source, "items": items.total_items,
                    "limit_items": limit_items,
                    "catalogue": str(dataset.catalogue.path.resolve()) if dataset.catalogue else None},
        "items": len(items.ids), "item_ids_sha256": ids_sha256(items.ids),
    }


def _choose_text_encoder(items: _Items, opts: FeaturizeOptions, console) -> _Encoders:
    """The items' texts and the text encoder (with its pooling and length), said on the console."""
    n = len(items.ids)
    fields = items.dataset.catalogue.fields if items.dataset.catalogue is not None else None
    template, texts, untitled = item_texts(items.metas, opts.text_template, fields, opts.allow_constant)
    style = "[yellow]" if untitled * 2 > n else ""
    console.print(f"{style}text: {untitled} of {n} items have an empty text ({UNTITLED!r}); "
                  f"{len(set(texts))} distinct texts; template {template!r}")
    tsrc = resolve_encoder(opts.text_encoder, "text", allow_download=opts.allow_download)
    tinfo = describe_text_encoder(tsrc, opts.text_pooling)
    console.print(f"text encoder: [bold]{tsrc.name}[/bold] ({tsrc.origin}, {_short(tsrc.revision)}): "
                  f"{tsrc.reason}")
    console.print(f"  pooling {tinfo['pooling']} ({tinfo['pooling_reason']}), up to {tinfo['max_length']} "
                  "tokens, L2-normalised")
    return _Encoders(template, texts, tsrc, tinfo)


def _choose_images(enc: _Encoders, items: _Items, opts: FeaturizeOptions, console) -> None:
    """Sets enc.image_map, enc.image and enc.fingerprints when items have images to encode; else says why not."""
    dataset, ids, n = items.dataset, items.ids, len(items.ids)
    catalogue_images = dataset.catalogue.images if dataset.catalogue is not None and opts.images is None else {}
    if opts.images is None and not (catalogue_images and opts.image_encoder):
        if opts.image_encoder is not None:
            raise FmrlError("--image-encoder needs --images (a folder of images or an item -> image map) or an "
                            "'image' field in the --items catalogue")
        if catalogue_images:
            console.print(f"note: the catalogue names images for {len(catalogue_images)} items; pass "
                          "--image-encoder DIR to use them")
        src = Path(dataset.source)
        if src.is_dir() and (src / "item2img_dict.pkl").exists():
            console.print(f"note: {src / 'item2img_dict.pkl'} exists but images are off; use "
                          f"--images {src / 'item2img_dict.pkl'} --trust-pickle to use it (a pickle can run code)")
        console.print("images: none given; text-only features")
        return
    from .images import build_image_map, catalogue_image_map, image_fingerprints

    if opts.images is None:
        imap = catalogue_image_map(dataset.catalogue.path, ids, catalogue_images)
    else:
        alt = [str(i + 1) for i in range(n)] if Path(dataset.source).is_dir() else None
        imap = build_image_map(opts.images, ids, alt, trust_pickle=opts.trust_pickle)
    if imap.mapped == 0:
        console.print(f"[yellow]images: no item of the dataset has an image in {imap.source}; text-only features")
        return
    isrc = resolve_encoder(opts.image_encoder, "image", allow_download=opts.allow_download)
    console.print(f"image encoder: [bold]{isrc.name}[/bold] ({isrc.origin}, {_short(isrc.revision)}): "
                  f"{isrc.reason}")
    console.print(f"  {imap.mapped} of {n} items mapped to an image file ({imap.kind} {imap.source})")
    enc.image_map, enc.image, enc.fingerprints = imap, isrc, image_fingerprints(imap)


def _input_parts(enc: _Encoders, ids: list[str]) -> dict:
    """Everything the features depend on (their input hash is the cache key)."""
    parts = {"format": VERSION, "item_ids": ids, "texts": enc.texts, "template": enc.template,
             "text_encoder": _identity(enc.text), "text_pooling": enc.text_info["pooling"],
             "text_max_length": enc.text_info["max_length"]}
    if enc.image_map is not None:
        parts["images"] = enc.fingerprints
        parts["image_encoder"] = _identity(enc.image)
    return parts


def _encode(enc: _Encoders, opts: FeaturizeOptions, console) -> tuple[dict, list[dict], tuple, dict | None]:
    """(tensors, modalities, (text seconds, image seconds), image status counts or None)."""
    from .text import TextEncoder

    encoder = TextEncoder(enc.text, device=opts.device, pooling=enc.text_info["pooling"],
                          max_length=enc.text_info["max_length"])
    text_feats, text_s = _encode_texts(encoder, enc.texts, opts.batch_size, console)
    tensors = {"text": text_feats}
    modalities = [{"name": "text", "tensor": "text", "dim": int(text_feats.shape[1]),
                   "encoder": enc.text.identity(), "pooling": encoder.pooling, "max_length": encoder.max_length,
                   "template": enc.template}]
    del encoder
    image_s = 0.0
    counts = None
    imap = enc.image_map
    if imap is not None:
        from .images import ImageEncoder

        iencoder = ImageEncoder(enc.image, device=opts.device)
        feats, mask, status, image_s = _encode_images(iencoder, imap.paths,
                                                      opts.image_batch_size or min(opts.batch_size, 32), console)
        status = [imap.status[i] if imap.paths[i] is None else s for i, s in enumerate(status)]
        counts = {k: status.count(k) for k in ("ok", "unmapped", "url", "missing", "corrupt")}
        tensors["image"] = feats
        tensors["image_mask"] = mask
        modalities.append({"name": "image", "tensor": "image", "mask": "image_mask", "dim": int(feats.shape[1]),
                           "encoder": enc.image.identity(), "method": iencoder.method, "images": imap.source,
                           "map_kind": imap.kind, "available": int(mask.sum()), "counts": counts})
    return tensors, modalities, (text_s, image_s), counts


def _write(out: Path, base: dict, ids: list[str], tensors: dict, modalities: list[dict], seconds: tuple,
           counts: dict | None, enc: _Encoders, digest: str, opts: FeaturizeOptions, console, t0: float) -> dict:
    """Write the features folder (manifest with timings) and say what was written; returns the summary."""
    n = len(ids)
    text_s, image_s = seconds
    total_s = time.perf_counter() - t0
    encode_s = text_s + image_s
    dim = sum(m["dim"] for m in modalities)
    manifest = dict(base)
    manifest.update({
        "modalities": modalities, "dim": dim, "text_template": enc.template, "input_hash": digest,
        "libraries": _library_versions(),
        "timing": {"device": opts.device, "batch_size": opts.batch_size, "text_seconds": round(text_s, 3),
                   "image_seconds": round(image_s, 3), "total_seconds": round(total_s, 3),
                   "items_per_s": round(n / encode_s, 2) if encode_s > 0 else None},
        "item_ids": ids,
    })
    write_features(out, tensors, manifest)
    rate = n / encode_s if encode_s > 0 else float("inf")
    parts_desc = " + ".join(f"{m['name']} {m['dim']}" for m in modalities)
    console.print(f"[green]wrote {out}[/green]: {n} items x {dim} dims ({parts_desc}) in {total_s:.1f}s; "
                  f"encoding {rate:,.1f} items/s")
    if counts is not None:
        bad = {k: v for k, v in counts.items() if k != "ok" and v}
        console.print(f"  images: {counts['ok']} encoded" + (", " + ", ".join(f"{v} {k}" for k, v in bad.items())
                                                           + " (zero vectors, mask 0)" if bad else ""))
    return {"out": str(out), "items": n, "cached": False, "seconds": round(total_s, 3),
            "encode_seconds": round(encode_s, 3), "items_per_s": round(rate, 2), "dim": dim,
            "text_encoder": enc.text.identity(), "image_counts": counts, "input_hash": digest, "manifest": manifest}


def _import_npy(path: Path, out: Path, ids: list[str], total_items: int, base: dict, force: bool, console,
                t0: float) -> dict:
    if not path.is_file():
        raise FmrlError(f"{path}: --from-npy file not found")
    if path.suffix.lower() != ".npy":
        raise FmrlError(f"{path}: --from-npy expects a .npy array file")
    with open(path, "rb") as f:
        if f.read(6) != b"\x93NUMPY":
            raise FmrlError(f"{path}: not a valid .npy file (no NumPy header)")
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as e:
        if "pickle" in str(e).lower() or "object" in str(e).lower():
            raise FmrlError(f"{path}: holds Python objects (needs pickle); only plain numeric arrays are "
                            "accepted") from None
        raise FmrlError(f"{path}: not a valid .npy file ({e})") from None
    except (OSError, EOFError) as e:
        raise FmrlError(f"{path}: not a valid .npy file ({e})") from None
    if not isinstance(arr, np.ndarray):
        raise FmrlError(f"{path}: not a single .npy array")
    n = len(ids)
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise FmrlError(f"{path}: expected a 2-D matrix [items, features], got shape {list(arr.shape)}")
    if arr.dtype.kind not in "fiu":
        raise FmrlError(f"{path}: expected a numeric matrix, got dtype {arr.dtype}")
    rows = arr.shape[0]
    if rows == total_items and n < total_items:
        arr = arr[:n]
    elif rows != n:
        hint = " (a padding row 0? drop it: rows must align with the dataset's items 1..N)" if rows == n + 1 else ""
        raise FmrlError(f"{path}: has {rows} rows but the dataset has {n} items{hint}")
    with np.errstate(over="ignore", invalid="ignore"):
        mat = np.ascontiguousarray(arr, dtype=np.float32)
    bad = ~np.isfinite(mat).all(axis=1)
    if bad.any():
        raise FmrlError(f"{path}: {int(bad.sum())} rows have NaN or infinite values (first: row {int(bad.argmax())})")
    file_hash = sha256_file(path)
    digest = input_hash({"format": VERSION, "item_ids": ids, "npy": file_hash, "rows": n})
    if not force:
        hit = cache_hit(out, digest)
        if hit is not None:
            console.print(f"[green]cache: {out} already holds these imported features; reusing them[/green]")
            return {"out": str(out), "items": n, "cached": True, "dim": hit.get("dim"), "input_hash": digest,
                    "seconds": round(time.perf_counter() - t0, 3), "manifest": hit}
    manifest = dict(base)
    manifest.update({
        "modalities": [{"name": "imported", "tensor": "imported", "dim": int(mat.shape[1]),
                        "source": {"file": str(path.resolve()), "sha256": file_hash, "dtype": str(arr.dtype)}}],
        "dim": int(mat.shape[1]), "text_template": None, "input_hash": digest, "item_ids": ids,
    })
    write_features(out, {"imported": mat}, manifest)
    seconds = time.perf_counter() - t0
    console.print(f"[green]wrote {out}[/green]: imported {path.name} ({n} items x {mat.shape[1]} dims)")
    return {"out": str(out), "items": n, "cached": False, "dim": int(mat.shape[1]), "input_hash": digest,
            "seconds": round(seconds, 3), "manifest": manifest}


# ----------------------------------------------------------------------------------------------
# New items -> features with the manifest's encoders


def read_new_items(path: str | Path) -> tuple[list[str], list[dict], list[Path | None]]:
    """new_items.jsonl: {"item": id, "title", "brand", "categories", "price", "image": optional path}."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FmrlError(f"{path}: items file not found")
    ids, metas, images = [], [], []
    seen = set()
    for lineno, rec in read_jsonl_objects(path):
        item = rec.get("item")
        if item in (None, ""):
            raise FmrlError(f"{path}:{lineno}: missing 'item'")
        item = str(item)
        if item in seen:
            raise FmrlError(f"{path}:{lineno}: item {item!r} appears twice")
        seen.add(item)
        image = rec.get("image")
        if image not in (None, "") and not isinstance(image, str):
            raise FmrlError(f"{path}:{lineno}: 'image' must be a file path")
        ids.append(item)
        metas.append({k: v for k, v in rec.items() if k not in ("item", "image")})
        if image:
            p = Path(image).expanduser()
            images.append(p if p.is_absolute() else path.parent / p)
        else:
            images.append(None)
    if not ids:
        raise FmrlError(f"{path}: no items")
    return ids, metas, images


def features_for_items(manifest: dict, metas: list[dict], images: list[Path | None], *,
                       text_encoder: str | None = None, image_encoder: str | None = None, batch_size: int = 64,
                       device: str = "cpu", console=None) -> tuple[np.ndarray, dict]:
    """Features [M, F] for new items, laid out exactly like load_features' matrix for this manifest."""
    set_offline(True)
    console = _console(console)
    blocks, info = [], {}
    for modality in manifest["modalities"]:
        name = modality.get("name")
        if name == "text":
            from .text import TextEncoder

            src = source_from_manifest(modality["encoder"], override=text_encoder, kind="text")
            enc = TextEncoder(src, device=device, pooling=modality.get("pooling"),
                              max_length=modality.get("max_length"))
            texts = [item_text(m, modality.get("template")) for m in metas]
            feats, _ = _encode_texts(enc, texts, batch_size, console)
        elif name == "image":
            from .images import ImageEncoder

            src = source_from_manifest(modality["encoder"], override=image_encoder, kind="image")
            enc = ImageEncoder(src, device=device)
            feats, mask, status, _ = _encode_images(enc, images, min(batch_size, 32), console)
            info["image_counts"] = {k: status.count(k) for k in ("ok", "unmapped", "missing", "corrupt")}
        else:
            raise FmrlError(f"features modality {name!r} was imported from a file (--from-npy); vectors for new "
                            "items need features computed by `fmrl-sdk featurize` with encoders")
        if feats.shape[1] != modality.get("dim"):
            raise FmrlError(f"{src.path}: {name} encoder gives {feats.shape[1]} dims, the features have "
                            f"{modality.get('dim')}")
        blocks.append(feats)
    return np.concatenate(blocks, axis=1).astype(np.float32), info
