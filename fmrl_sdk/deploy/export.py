"""Export one granularity of a trained run to an ExecuTorch bundle (docs/bundle-format.md, format 3).

The orchestration: load the run -> build the program (lowering.py: StepModel -> torch.export ->
[int8: pt2e dynamic per-channel quantisation] -> XNNPACK -> .pte, and where the item table's bytes lie in
it) -> run the .pte with the ExecuTorch runtime on real user sequences and compare with eager
(verify.py) -> write the bundle atomically: a directory and/or the one-file NAME.fmrlb beside it, from
the same bytes, with its manifest (`manifest_for`). Its outputs are checked before any work
(`check_bundle_outputs`) and locked while it works (`bundle_lock`).

Every name of lowering.py and verify.py that callers use is importable from here too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..errors import FmrlError
from ..fileio import atomic_directory, atomic_write_bytes, check_outputs, output_lock, sha256_file
from ..runtime.bundle import FILE_SUFFIX, FORMAT_VERSION, PROGRAM_FILE, pack_bundle_file
from ..runtime.program import load_program
from .lowering import (  # noqa: F401  (re-exported: callers import them from here)
    PRECISIONS,
    SEPARATE_TABLE_FILE,
    Program,
    build_program,
    locate_item_table,
    lower,
    make_step,
    quantised_table,
    quantize_step,
)
from .step import StepModel
from .verify import (  # noqa: F401  (re-exported: callers import them from here)
    VERIFY_MAX_LEN,
    VERIFY_SEQUENCES,
    VERIFY_TOLERANCE,
    Stepper,
    int8_quality,
    ndcg_at_10,
    sample_sequences,
    topk_overlap,
    verification_passed,
    verify_program,
)

# FORMAT_VERSION (3) comes from runtime/bundle.py: the runtime reads exactly the version export writes
BUNDLE_FORMATS = ("dir", "file", "both")   # --format: the directory, NAME.fmrlb beside it, or both
BUNDLE_MARKER = "manifest.json"   # every bundle directory has one: only such a folder (or an empty one) is replaced


# ----------------------------------------------------------------------------------------------
# Bundles


@dataclass
class ExportResult:
    out: Path
    manifest: dict
    report: dict = field(default_factory=dict)


def load_run_and_data(run_dir):
    """(Run, Dataset): the trained model and the dataset it was trained on (for real verification
    sequences), both through train.run (`read_run` / `load_run_dataset`: no fallback dataset)."""
    from ..train.run import load_run, load_run_dataset

    run = load_run(run_dir)
    return run, load_run_dataset(run.info, with_catalogue=False)


def check_size(run, size: int) -> None:
    if size not in run.sizes:
        raise FmrlError(f"--size {size}: not a trained granularity of {run.path} "
                        f"(trained: {', '.join(map(str, run.sizes))})")


def _metrics_at(run, size: int) -> dict:
    out = {}
    for split in ("val", "test"):
        row = run.metrics.get(split, {}).get(str(size), {})
        out[split] = {k: row[k] for k in ("NDCG@10", "Recall@10") if k in row}
    return out


def bundle_paths(out) -> tuple[Path, Path]:
    """(the bundle directory, the one-file bundle beside it) named by `out` (`out` ending in .fmrlb names the
    file; the directory is then `out` without the suffix)."""
    out_dir = Path(out)
    if out_dir.suffix == FILE_SUFFIX:
        out_dir = out_dir.with_suffix("")
    return out_dir, out_dir.with_name(out_dir.name + FILE_SUFFIX)


def check_bundle_outputs(out, format: str, info) -> None:
    """Before any work: FmrlError `PATH: ...` when an output that `format` writes cannot be written, is the
    run (`info`: train.run.RunInfo) or its data, or is a directory holding them, or is a non-empty folder that
    is not a bundle (fileio.check_outputs: only an earlier bundle is replaced)."""
    out_dir, out_file = bundle_paths(out)
    data = None if info.data_path in (None, "demo") else info.data_path
    inputs = {"the run": info.path, "the run's data": data, "the run's features": info.features,
              "the run's catalogue": info.items}
    check_outputs(inputs, files={"--out (one-file bundle)": out_file if format != "dir" else None},
                  replaced={"--out": (out_dir if format != "file" else None, BUNDLE_MARKER)})


@contextlib.contextmanager
def bundle_lock(out):
    """Hold the lock of the bundle `out` (`.NAME.lock` beside its directory, for both forms: fileio.output_lock):
    a second export to it gets FmrlError "OUT: in use by another export (pid N)"."""
    with output_lock(bundle_paths(out)[0], "export"):
        yield


def export_bundle(run_dir, out_dir, size: int, profile: str = "custom", quantize: str | None = None,
                  k_max: int = 100, overwrite: bool = True, verify_sequences: int = VERIFY_SEQUENCES,
                  quality_users: int = 500, log=None, run=None, dataset=None, format: str = "both",
                  locked: bool = False) -> ExportResult:
    """Export granularity `size` of the run in `run_dir` to the bundle folder `out_dir`.

    The outputs are checked before any work (`check_bundle_outputs`) and locked until written (`bundle_lock`;
    locked=True: the caller holds that lock already). The .pte is run on real sequences before anything is
    written; a mismatch with eager raises FmrlError and leaves `out_dir` untouched. quantize: None/"fp32" or
    "int8". format: "dir" (the bundle directory `out_dir`), "file" (the one-file bundle `out_dir`.fmrlb beside
    it) or "both" (default), each written atomically from the same bytes (`bundle_paths`).
    """
    from ..train.run import read_run

    if format not in BUNDLE_FORMATS:
        raise FmrlError(f"--format {format!r}: expected {', '.join(BUNDLE_FORMATS)}")
    log = log or (lambda msg: None)
    precision = quantize or "fp32"
    if precision not in PRECISIONS:
        raise FmrlError(f"--quantize {quantize!r}: expected int8 (or leave it out for fp32)")
    if k_max < 1:
        raise FmrlError(f"--k-max {k_max}: must be at least 1")
    check_bundle_outputs(out_dir, format, run.info if run is not None and run.info is not None else read_run(run_dir))
    with contextlib.nullcontext() if locked else bundle_lock(out_dir):
        if run is None or dataset is None:
            run, dataset = load_run_and_data(run_dir)
        check_size(run, size)
        torch.set_num_threads(min(2, os.cpu_count() or 1))
        step = make_step(run.model, size, k_max, precision)
        program, report = _build_and_verify(run, dataset, step, size, precision, k_max, verify_sequences,
                                            quality_users, log)
        parts = {**program.files, "items.json": _json_bytes(run.item_ids),
                 "cold_start.json": _json_bytes(step.cold_start())}
        files = {name: hashlib.sha256(data).hexdigest() for name, data in parts.items()}
        bundle_bytes = sum(len(data) for data in parts.values())
        manifest = manifest_for(run, profile, size, precision, step, program, report["verification"],
                                bundle_bytes, files, report)
        manifest_bytes = _json_bytes(manifest)   # stored as is in both forms: the fingerprint is computed over them
        out = _write_bundle(Path(out_dir), format, overwrite, manifest_bytes, parts, bundle_bytes, log)
    return ExportResult(out, manifest, report)


def _build_and_verify(run, dataset, step: StepModel, size: int, precision: str, k_max: int,
                      verify_sequences: int, quality_users: int, log) -> tuple[Program, dict]:
    """(the lowered program, export's report): the .pte is run on real sequences against eager
    (FmrlError on a mismatch); int8 also measures what it costs against fp32."""
    num_state = (2 * step.num_blocks, size)
    started = time.perf_counter()
    log(f"exporting size {size} ({precision}, {dataset.num_items} items, k_max {step.k_max})")
    program = build_program(step, precision)
    if SEPARATE_TABLE_FILE in program.files:
        log(f"the item table's bytes were not found exactly once in the program: {SEPARATE_TABLE_FILE} "
            f"holds a copy ({program.table_bytes:,} bytes)")
    loaded = Stepper(load_program(program.pte, trusted=True), program.table, step.k_max)
    sequences = sample_sequences(dataset, verify_sequences)
    verification = verify_program(loaded, Stepper(program.reference, program.table, step.k_max), sequences, num_state)
    if not verification_passed(precision, verification):
        raise FmrlError(f"size {size} {precision}: the .pte disagrees with eager on real sequences "
                        f"(max |diff| {verification['max_abs_diff']:.2e}, top-k equal {verification['topk_equal']}, "
                        f"top-10 overlap {verification['top10_overlap']:.3f}); no bundle written")
    report = {"seconds_export": round(time.perf_counter() - started, 2), "verification": verification}
    if precision == "int8":
        users = sorted(np.random.default_rng(1).permutation(dataset.num_users)[:quality_users].tolist())
        report["int8"] = int8_quality(run, dataset, size, k_max, loaded, sequences, num_state, users,
                                      len(program.pte))
    return program, report


def _write_bundle(out_dir: Path, format: str, overwrite: bool, manifest_bytes: bytes, parts: dict,
                  bundle_bytes: int, log) -> Path:
    """Write the bundle's files atomically as `format` says; returns what export_bundle reports as written
    (the directory, or the .fmrlb file for format "file")."""
    out_dir, out_file = bundle_paths(out_dir)
    targets = {"dir": [out_dir], "file": [out_file], "both": [out_dir, out_file]}[format]
    existing = [target for target in targets if target.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} already exists")
    if format in ("file", "both"):
        atomic_write_bytes(out_file, pack_bundle_file(manifest_bytes, parts))
    if format in ("dir", "both"):
        with atomic_directory(out_dir, overwrite=overwrite) as tmp:
            tmp.chmod(0o755)
            for name, data in {**parts, "manifest.json": manifest_bytes}.items():
                (tmp / name).write_bytes(data)
                (tmp / name).chmod(0o644)
    written = {"dir": str(out_dir), "file": str(out_file), "both": f"{out_dir} and {out_file}"}[format]
    log(f"bundle written to {written} ({bundle_bytes:,} bytes)")
    return out_dir if format != "file" else out_file


def _json_bytes(obj) -> bytes:
    """A bundle's JSON file as export stores it (indented, key order kept, final newline)."""
    return (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()


def block_weight_bytes(step: StepModel) -> int:
    """float32 bytes of the step's block weights (everything but the item table)."""
    return 4 * sum(p.numel() for p in step.blocks.parameters())


def manifest_for(run, profile, size, precision, step, program: Program, verification, bundle_bytes, files,
                 report) -> dict:
    import executorch.version

    state_shape = [2 * step.num_blocks, size]
    return {
        "format_version": FORMAT_VERSION,
        "sdk_version": __version__,
        "executorch_version": executorch.version.__version__.split("+")[0],
        "torch_version": torch.__version__.split("+")[0],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "profile": profile,
        "granularity": size,
        "precision": precision,
        "num_items": step.num_items,
        "num_blocks": step.num_blocks,
        "k_max": step.k_max,
        "state": {"dtype": "float32", "shape": state_shape, "layout": "rows 2b, 2b+1 = real, imag of block b"},
        "method": "forward",
        "run": {"name": run.path.resolve().name, "checkpoint_sha256": sha256_file(run.path / "model.safetensors")},
        "metrics": {split: vals for split, vals in _metrics_at(run, size).items() if vals},
        # the run's split: simulate scores events after its cut as out-of-sample (runs before splits: LOO)
        "split": (run.config.get("data") or {}).get("split") or {"kind": "leave-one-out"},
        "verification": {**{k: verification[k] for k in ("sequences", "max_abs_diff", "topk_equal")},
                         "against": "eager" if precision == "fp32" else "quantised eager graph",
                         "top10_overlap": round(verification["top10_overlap"], 4)},
        "item_table": program.item_table,
        "sizes": {"bundle_bytes": bundle_bytes, "state_bytes": 4 * state_shape[0] * state_shape[1],
                  "table_bytes": program.table_bytes, "block_weight_bytes_fp32": block_weight_bytes(step)},
        "files": files,
        **({"quantization": report["int8"]} if "int8" in report else {}),
    }
