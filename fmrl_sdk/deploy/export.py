"""Export one granularity of a trained run to an ExecuTorch bundle (docs/bundle-format.md, format 3).

Pipeline: StepModel (step.py) -> torch.export(strict=False) -> [int8: pt2e dynamic per-channel
quantisation] -> to_edge_transform_and_lower(XNNPACK) -> .pte -> locate the item table's bytes in the
.pte -> run the .pte with the ExecuTorch runtime on real user sequences, each event's item vector read
through the manifest's `item_table` exactly as the runtime reads it, and compare with eager -> write the
bundle atomically: a directory and/or the one-file NAME.fmrlb beside it, from the same bytes.

The item table is stored once (docs/deploy.md, "Item table: stored once"): the program takes the observed
item's vector as input and reads the [N, s] table only in its scoring product, whose weight XNNPACK
serializes as is (fp32: the row-major [N, s] float32 table; int8: the [N, s] int8 weight and its N
per-row float32 scales). `locate_item_table` finds those bytes in the .pte (exactly once, else a
separate `item_table.bin` holds them) and the manifest records where, so the runtime reads item i's
vector straight from the program file.
"""

from __future__ import annotations

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
from ..fileio import atomic_directory, atomic_write_bytes, sha256_file
from ..runtime.bundle import FILE_SUFFIX, FORMAT_VERSION, PROGRAM_FILE, ItemTable, pack_bundle_file, read_item_table
from ..runtime.engine import select_topk
from ..runtime.program import load_program
from .step import StepModel

# FORMAT_VERSION (3) comes from runtime/bundle.py: the runtime reads exactly the version export writes
BUNDLE_FORMATS = ("dir", "file", "both")   # --format: the directory, NAME.fmrlb beside it, or both
PRECISIONS = ("fp32", "int8")
# holds the item vectors only when their bytes cannot be located exactly once in the program
SEPARATE_TABLE_FILE = "item_table.bin"
# .pte vs eager: fp32 absolute score difference; int8 (vs the quantised eager graph) relative difference
# and mean top-10 overlap (see verification_passed)
VERIFY_TOLERANCE = {"fp32": 1e-4, "int8_rel": 2e-2, "int8_overlap": 0.95}
VERIFY_SEQUENCES = 32
VERIFY_MAX_LEN = 50


# ----------------------------------------------------------------------------------------------
# Lowering


def lower(module: torch.nn.Module, example_args: tuple) -> bytes:
    """torch.export -> XNNPACK-lowered ExecuTorch program bytes (`module` may be a quantised graph)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
        XnnpackPartitioner,
    )
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower

    exported = torch.export.export(module, example_args, strict=False)
    # keep aten.linear whole even where it is not delegated (decomposed, it copies its weight per call)
    config = EdgeCompileConfig(_check_ir_validity=False, preserve_ops=[torch.ops.aten.linear.default])
    edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()], compile_config=config)
    return edge.to_executorch().buffer


def quantize_step(step: torch.nn.Module, example_args: tuple):
    """int8 dynamic per-channel quantisation of every linear except the chunk-LayerNorm averaging
    products (quantising those would quantise the statistics). Returns the quantised eager graph."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from .step import ChunkNorm

    quantizer = XNNPACKQuantizer()
    quantizer.set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True))
    quantizer.set_module_type(ChunkNorm, None)
    graph = torch.export.export(step, example_args, strict=False).module()
    prepared = prepare_pt2e(graph, quantizer)
    prepared(*example_args)  # dynamic quantisation needs no calibration; one pass initialises observers
    return convert_pt2e(prepared)


def make_step(model, size: int, k_max: int = 100, precision: str = "fp32",
              table: torch.Tensor | None = None) -> StepModel:
    if precision not in PRECISIONS:
        raise FmrlError(f"unknown precision {precision!r} (known: {', '.join(PRECISIONS)})")
    return StepModel(model, size, k_max=k_max, table=table)


@dataclass
class Program:
    """A lowered step program and everything the bundle needs to feed it."""

    pte: bytes
    reference: torch.nn.Module        # eager module with the same forward (int8: the quantised graph)
    item_table: dict                  # the manifest's "item_table" entry
    files: dict                       # bundle file name -> bytes: the program, + SEPARATE_TABLE_FILE if used
    table: ItemTable                  # the item vectors as the runtime reads them (views into `files`)

    @property
    def table_bytes(self) -> int:
        """Bytes of the item vectors (int8: + their scales) inside the bundle."""
        return self.table.nbytes


def build_program(step: StepModel, precision: str = "fp32") -> Program:
    """Lower the step (int8: quantise first) and locate its item table in the program bytes."""
    args = step.example_inputs()
    reference = step if precision == "fp32" else quantize_step(step, args)
    pte = lower(reference, args)
    if precision == "fp32":
        rows, scales = step.scorer.table.numpy().astype("<f4"), None
    else:
        rows, scales = quantised_table(reference, step.num_items)
    entry, files = locate_item_table(pte, rows, scales)
    table = read_item_table(entry, files, step.num_items, step.size, "the exported program")
    return Program(pte, reference, entry, files, table)


def quantised_table(graph, num_items: int) -> tuple[np.ndarray, np.ndarray]:
    """(int8 weight [N, s], per-row float32 scales [N]) of the scoring linear of a quantised graph: the
    per-channel weight with N rows (no other weight of the step has as many rows as there are items)."""
    found = []
    for node in graph.graph.nodes:
        if node.op == "call_function" and "dequantize_per_channel" in str(node.target):
            weight, scales = (getattr(graph, arg.target) for arg in node.args[:2])
            if weight.dtype == torch.int8 and weight.shape[0] == num_items:
                zero = getattr(graph, node.args[2].target)
                if node.args[3] != 0 or bool(zero.any()):
                    raise FmrlError("the quantised scoring weight is not symmetric per row")
                found.append((weight.numpy(), scales.numpy().astype("<f4")))
    if len(found) != 1:
        raise FmrlError(f"expected one int8 scoring weight with {num_items} rows in the quantised step, "
                        f"found {len(found)}")
    return found[0]


def _occurrences(haystack: bytes, needle: bytes) -> list[int]:
    found, at = [], haystack.find(needle)
    while at >= 0:
        found.append(at)
        at = haystack.find(needle, at + 1)
    return found


def locate_item_table(pte: bytes, rows: np.ndarray, scales: np.ndarray | None) -> tuple[dict, dict]:
    """(manifest "item_table" entry, bundle files {name: bytes}) for item vectors `rows` [N, s]
    (float32, or int8 with per-row `scales` [N]). The vectors point into the program's own bytes when
    those bytes occur there exactly once (XNNPACK serializes the scoring weight as is); otherwise they
    go to SEPARATE_TABLE_FILE (the table is then stored twice: correct, but a bigger bundle)."""
    dtype = "float32" if scales is None else "int8"
    data = np.ascontiguousarray(rows).tobytes()
    scale_bytes = None if scales is None else np.ascontiguousarray(scales, dtype="<f4").tobytes()
    hits = _occurrences(pte, data)
    scale_hits = [] if scale_bytes is None else _occurrences(pte, scale_bytes)
    files = {PROGRAM_FILE: pte}
    entry = {"file": PROGRAM_FILE, "offset": hits[0] if hits else 0, "dtype": dtype,
             "rows": int(rows.shape[0]), "cols": int(rows.shape[1]), "scales": None}
    if len(hits) == 1 and (scale_bytes is None or len(scale_hits) == 1):
        if scale_bytes is not None:
            entry["scales"] = {"file": PROGRAM_FILE, "offset": scale_hits[0], "dtype": "float32"}
        return entry, files
    files[SEPARATE_TABLE_FILE] = data + (scale_bytes or b"")
    entry.update(file=SEPARATE_TABLE_FILE, offset=0)
    if scale_bytes is not None:
        entry["scales"] = {"file": SEPARATE_TABLE_FILE, "offset": len(data), "dtype": "float32"}
    return entry, files


# ----------------------------------------------------------------------------------------------
# Running and verifying


class Stepper:
    """A step program fed by item index: each event's vector is read from `table` as the runtime reads
    it, then `run` (a loaded program, or an eager module) takes (x [1, s], state) and returns (scores [N],
    hidden, new_state); the top k of the scores is selected as both runtimes select it (`select_topk`).
    Returns (top-k scores [k], internal indices [k] (1..N), new state, hidden); k: the bundle's k_max
    (default 100, export's)."""

    def __init__(self, run, table: ItemTable, k: int = 100):
        self.run, self.table, self.k = run, table, k
        self._call = run.execute if hasattr(run, "execute") else (lambda inputs: run(*inputs))

    def __call__(self, item: int, state: torch.Tensor):
        x = torch.from_numpy(self.table.vector(int(item)))[None]
        scores, hidden, new_state = self._call((x, state))
        values, positions = select_topk(scores.detach().numpy().astype(np.float32, copy=False), self.k)
        return torch.from_numpy(values), torch.from_numpy(positions + 1), new_state, hidden


def sample_sequences(dataset, count: int = VERIFY_SEQUENCES, max_len: int = VERIFY_MAX_LEN,
                     split: str = "val", seed: int = 0) -> list[np.ndarray]:
    """Real user histories (the input of `split`'s prediction), the last max_len items, chosen evenly."""
    histories, _ = dataset.history_and_target(split)
    order = np.random.default_rng(seed).permutation(len(histories))[:count]
    return [np.asarray(histories[i][-max_len:], dtype=np.int64) for i in sorted(order)]


@torch.no_grad()
def verify_program(program: Stepper, reference: Stepper, sequences, num_state: tuple) -> dict:
    """Stream every sequence through the .pte and the eager reference (both fed the vectors the runtime
    reads); compare scores, hidden, state and ids per event."""
    max_diff = max_rel = state_diff = 0.0
    topk_equal, events, overlap = True, 0, 0.0
    for seq in sequences:
        state_pte = state_ref = torch.zeros(*num_state)
        for item in seq:
            values, indices, state_pte, hidden = program(item, state_pte)
            ref_values, ref_indices, state_ref, ref_hidden = reference(item, state_ref)
            indices = indices.to(torch.int64)
            diff = max((values - ref_values).abs().max().item(), (hidden - ref_hidden).abs().max().item())
            max_diff = max(max_diff, diff)
            max_rel = max(max_rel, diff / max(ref_values.abs().max().item(), 1e-12))
            state_diff = max(state_diff, (state_pte - state_ref).abs().max().item())
            if not torch.equal(indices, ref_indices):
                # scores equal to within float noise may come out in another order; ids must not differ
                same = set(indices.tolist()) == set(ref_indices.tolist())
                if not (same and diff <= VERIFY_TOLERANCE["fp32"]):
                    topk_equal = False
            overlap += len(set(indices[:10].tolist()) & set(ref_indices[:10].tolist())) / min(10, len(indices))
            events += 1
    return {"sequences": len(sequences), "events": events, "max_abs_diff": max_diff, "max_rel_diff": max_rel,
            "max_state_diff": state_diff, "topk_equal": topk_equal, "top10_overlap": overlap / max(1, events)}


def verification_passed(precision: str, v: dict) -> bool:
    """fp32: same top-k ids as eager, |diff| <= 1e-4. int8 (against the quantised eager graph, whose
    reference q/dq arithmetic rounds activations slightly differently from XNNPACK's integer kernels):
    |diff| <= 2% of the largest score and mean top-10 overlap >= 0.95."""
    if precision == "fp32":
        return v["topk_equal"] and v["max_abs_diff"] <= VERIFY_TOLERANCE["fp32"]
    return v["max_rel_diff"] <= VERIFY_TOLERANCE["int8_rel"] and v["top10_overlap"] >= VERIFY_TOLERANCE["int8_overlap"]


@torch.no_grad()
def topk_overlap(step_a: Stepper, step_b: Stepper, sequences, num_state: tuple, k: int = 10) -> float:
    """Mean |top-k(a) & top-k(b)| / k over every event of the sequences."""
    total, events = 0.0, 0
    for seq in sequences:
        sa = sb = torch.zeros(*num_state)
        for item in seq:
            _, ia, sa, _ = step_a(item, sa)
            _, ib, sb, _ = step_b(item, sb)
            total += len(set(ia[:k].tolist()) & set(ib[:k].tolist())) / k
            events += 1
    return total / max(1, events)


@torch.no_grad()
def ndcg_at_10(step: Stepper, dataset, num_state: tuple, max_len: int, users: list[int]) -> float:
    """Validation NDCG@10 of a step program over `users`, streaming each history (full ranking over the
    k_max >= 10 returned ids: a target outside the top 10 scores 0 whatever k_max is)."""
    histories, targets = dataset.history_and_target("val")
    total = 0.0
    for u in users:
        state = torch.zeros(*num_state)
        indices = None
        for item in histories[u][-max_len:]:
            _, indices, state, _ = step(item, state)
        top = [int(i) for i in indices[:10].tolist()]
        if int(targets[u]) in top:
            total += 1.0 / np.log2(top.index(int(targets[u])) + 2)
    return total / max(1, len(users))


def int8_quality(run, dataset, size: int, k_max: int, int8: Stepper, sequences, num_state: tuple,
                 users: list[int], int8_bytes: int) -> dict:
    """What int8 costs against fp32 (the manifest's `quantization`): bundle program bytes, mean top-10
    overlap on the verification sequences, validation NDCG@10 of both .pte files on `users`."""
    fp32 = build_program(make_step(run.model, size, k_max, "fp32"), "fp32")
    fp32_step = Stepper(load_program(fp32.pte, trusted=True), fp32.table, k_max)
    ndcg_fp32 = ndcg_at_10(fp32_step, dataset, num_state, run.info.max_len, users)
    ndcg_int8 = ndcg_at_10(int8, dataset, num_state, run.info.max_len, users)
    return {"fp32_bytes": len(fp32.pte), "int8_bytes": int8_bytes,
            "size_change": round(int8_bytes / len(fp32.pte) - 1, 4),
            "top10_overlap_with_fp32": round(topk_overlap(int8, fp32_step, sequences, num_state), 4),
            "val_users": len(users), "val_NDCG@10_fp32": round(float(ndcg_fp32), 5),
            "val_NDCG@10_int8": round(float(ndcg_int8), 5),
            "val_NDCG@10_change": round(float(ndcg_int8 - ndcg_fp32), 5)}


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


def export_bundle(run_dir, out_dir, size: int, profile: str = "custom", quantize: str | None = None,
                  k_max: int = 100, overwrite: bool = True, verify_sequences: int = VERIFY_SEQUENCES,
                  quality_users: int = 500, log=None, run=None, dataset=None, format: str = "both") -> ExportResult:
    """Export granularity `size` of the run in `run_dir` to the bundle folder `out_dir`.

    The .pte is run on real sequences before anything is written; a mismatch with eager raises
    FmrlError and leaves `out_dir` untouched. quantize: None/"fp32" or "int8". format: "dir" (the bundle
    directory `out_dir`), "file" (the one-file bundle `out_dir`.fmrlb beside it) or "both" (default), each
    written atomically from the same bytes (`out_dir` ending in .fmrlb names the file; the directory is
    then `out_dir` without the suffix).
    """
    if format not in BUNDLE_FORMATS:
        raise FmrlError(f"--format {format!r}: expected {', '.join(BUNDLE_FORMATS)}")
    log = log or (lambda msg: None)
    precision = quantize or "fp32"
    if precision not in PRECISIONS:
        raise FmrlError(f"--quantize {quantize!r}: expected int8 (or leave it out for fp32)")
    if k_max < 1:
        raise FmrlError(f"--k-max {k_max}: must be at least 1")
    if run is None or dataset is None:
        run, dataset = load_run_and_data(run_dir)
    check_size(run, size)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    step = make_step(run.model, size, k_max, precision)
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

    out_dir = Path(out_dir)
    if out_dir.suffix == FILE_SUFFIX:
        out_dir = out_dir.with_suffix("")
    out_file = out_dir.with_name(out_dir.name + FILE_SUFFIX)
    parts = {**program.files, "items.json": _json_bytes(run.item_ids), "cold_start.json": _json_bytes(step.cold_start())}
    files = {name: hashlib.sha256(data).hexdigest() for name, data in parts.items()}
    bundle_bytes = sum(len(data) for data in parts.values())
    manifest = manifest_for(run, profile, size, precision, step, program, verification, bundle_bytes, files, report)
    manifest_bytes = _json_bytes(manifest)   # stored as is in both forms: the fingerprint is computed over them
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
    return ExportResult(out_dir if format != "file" else out_file, manifest, report)


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
