"""`fmrl-sdk item-vectors`: vectors of new items from a trained run (the same encoders as its features,
the run's projector, the first `size` dims). Writes the item-vectors file of runtime/vectors.py."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from ..errors import FmrlError
from ..runtime.vectors import SUFFIXES, write_item_vectors
from .run import load_run


def item_vectors(run_dir, items_file, size: int, out, *, text_encoder: str | None = None,
                 image_encoder: str | None = None, batch_size: int = 64, device: str = "cpu",
                 console=None) -> dict:
    """Vectors [M, size] for the new items of `items_file` (JSONL, features.pipeline.read_new_items)."""
    import torch
    from rich.console import Console

    from ..features import features_for_items, read_manifest
    from ..features.pipeline import read_new_items
    from ..model.model import uses_content, uses_ids

    console = console if console is not None else Console()
    run_dir = Path(run_dir).expanduser()
    out = Path(out).expanduser()
    if out.suffix.lower() not in SUFFIXES:
        raise FmrlError(f"{out}: --out must end in .safetensors or .json")
    run = load_run(run_dir)
    config = run.config or {}
    _check_out(out, run_dir, items_file, config.get("features"))
    sizes = [int(s) for s in (config.get("model") or {}).get("sizes", [])]
    if size not in sizes:
        raise FmrlError(f"--size {size}: the run was trained at sizes {sizes}; pick one of them")
    kind = (config.get("model") or {}).get("item_embedding", "content")
    if not uses_content(kind):
        raise FmrlError(f"{run_dir}: the run uses id embeddings only; new items need a content-based run")
    if uses_ids(kind):
        console.print("[yellow]note: hybrid run: new items get the content part only (no learned id vector)")
    if not config.get("features"):
        raise FmrlError(f"{run_dir}: the run was trained without content features; new items need a run "
                        "trained on `fmrl-sdk featurize` features")
    fdir = Path(config["features"])   # load_run resolved it (train.run.read_run)
    manifest = read_manifest(fdir)
    ids, metas, images = read_new_items(items_file)
    t0 = time.perf_counter()
    feats, info = features_for_items(manifest, metas, images, text_encoder=text_encoder,
                                      image_encoder=image_encoder, batch_size=batch_size, device=device,
                                      console=console)
    model = run.model
    model.eval()
    try:
        param = next(model.parameters())
        target = {"device": param.device, "dtype": param.dtype}
    except (StopIteration, AttributeError, TypeError):
        target = {}
    with torch.inference_mode():
        vecs = model.content_vectors(torch.from_numpy(feats).to(**target))
    vecs = vecs[:, :size].float().cpu().numpy()
    if vecs.shape != (len(ids), size):
        raise FmrlError(f"{run_dir}: the projector gave vectors of shape {list(vecs.shape)}, "
                        f"expected [{len(ids)}, {size}]")
    write_item_vectors(out, ids, np.ascontiguousarray(vecs),
                       {"run": str(run_dir), "size": size, "features": str(fdir),
                        "input_hash": manifest.get("input_hash")})
    seconds = time.perf_counter() - t0
    console.print(f"[green]wrote {out}[/green]: {len(ids)} items x {size} dims in {seconds:.1f}s")
    return {"out": str(out), "items": len(ids), "size": size, "ids": ids, "seconds": round(seconds, 3), **info}


def _check_out(out: Path, run_dir: Path, items_file, features) -> None:
    """Before any work: --out writable and none of the files item-vectors reads (fileio.check_outputs)."""
    from ..features.store import FEATURES_FILE, MANIFEST_FILE
    from ..fileio import check_outputs
    from .run import CHECKPOINT

    inputs = {"--items": items_file, **{f"the run's {name}": run_dir / name
                                        for name in ("config.json", "items.json", "metrics.json", CHECKPOINT)}}
    if features:   # load_run resolved it (train.run.read_run)
        inputs.update({f"the run's features' {name}": Path(features) / name for name in (FEATURES_FILE, MANIFEST_FILE)})
    check_outputs(inputs, files={"--out": out})


def register(app: typer.Typer) -> None:
    @app.command("item-vectors")
    def item_vectors_cmd(
        run: Path = typer.Option(..., "--run", help="A trained run folder (runs/NAME)."),
        items: Path = typer.Option(..., "--items", help="JSONL: {item, title, brand, categories, price, image}."),
        size: int = typer.Option(..., "--size", help="Granularity to keep (one of the run's trained sizes)."),
        out: Path = typer.Option(..., "--out", help="Output .safetensors (tensor 'vectors', ids in metadata) or .json."),
        text_encoder: Optional[str] = typer.Option(
            None, "--text-encoder", help="Folder with the same text encoder, if it moved (revision is checked)."),
        image_encoder: Optional[str] = typer.Option(
            None, "--image-encoder", help="Folder with the same image encoder, if it moved (revision is checked)."),
        batch_size: int = typer.Option(64, "--batch-size", min=1),
        device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    ) -> None:
        """Vectors for new items with a trained run: same encoders, the run's projector, first SIZE dims.

        --out is checked before any work: one that cannot be written or that is a file the command reads
        (--items, the run's or its features' files) is one error line."""
        item_vectors(run, items, size, out, text_encoder=text_encoder, image_encoder=image_encoder,
                     batch_size=batch_size, device=device)
