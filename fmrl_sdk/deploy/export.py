"""Export one granularity of a trained run to an ExecuTorch bundle (docs/bundle-format.md).

Pipeline: StepModel (step.py) -> torch.export(strict=False) -> [int8: pt2e dynamic per-channel
quantisation] -> to_edge_transform_and_lower(XNNPACK) -> .pte -> run the .pte with the ExecuTorch
runtime on real user sequences and compare with eager -> write the bundle atomically.

The item table design (see docs/deploy.md, "Item table: stored once"): the item lookup
(an embedding, a portable kernel) and the scoring product (a linear in the XNNPACK delegate) read
the same [N, s] table. If the delegate owns the table as a static weight, the .pte carries it twice
(delegate blob + program constant). `TABLE_DESIGNS` lists the variants measured; the default passes
the table to the delegate as a runtime input ("dynamic" weight), so the program stores it once.
"""

from __future__ import annotations

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
from ..fileio import atomic_directory, atomic_write_json, sha256_file
from .step import ScoreOnly, StepModel

FORMAT_VERSION = 1
PRECISIONS = ("fp32", "int8")
# how the [N, s] item table reaches the XNNPACK scoring linear (docs/deploy.md has the measurements)
TABLE_DESIGNS = {
    "dynamic": "table is a program constant, read by the lookup and passed to the delegate's linear as input",
    "static": "table is a static delegate weight (packed once at load) and a program constant: stored twice",
    "portable": "scoring linear not delegated (ExecuTorch CPU kernel); table is one program constant",
}
DEFAULT_DESIGN = "dynamic"
VERIFY_TOLERANCE = {"fp32": 1e-4, "int8": 1e-3}   # |score diff| .pte vs eager (int8: vs quantised eager)
VERIFY_SEQUENCES = 32
VERIFY_MAX_LEN = 50


# ----------------------------------------------------------------------------------------------
# Lowering


def _partitioner(design: str):
    from executorch.backends.xnnpack.partition.config import ALL_PARTITIONER_CONFIGS
    from executorch.backends.xnnpack.partition.config.gemm_configs import LinearConfig
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    if design == "static":
        return XnnpackPartitioner()

    class TableLinearConfig(LinearConfig):
        """The table's linear: not delegated ("portable"), or delegated with the table as an input."""

        def check_constraints(self, node, ep) -> bool:
            if design == "portable" and _reads_table(node):
                return False
            return super().check_constraints(node, ep)

        def _get_weight_deps(self, node, ep, precision):
            if _reads_table(node) and precision.name == "FP32":
                return True, []   # leave the table outside the partition: it becomes a delegate input
            return super()._get_weight_deps(node, ep, precision)

    configs = [TableLinearConfig if c is LinearConfig else c for c in ALL_PARTITIONER_CONFIGS]
    return XnnpackPartitioner(configs=configs)


def _reads_table(node) -> bool:
    weight = node.args[1] if len(node.args) > 1 else None
    return getattr(weight, "name", "").endswith("scorer_table") or "scorer.table" in str(
        getattr(weight, "target", ""))


def lower(module: torch.nn.Module, example_args: tuple, design: str = DEFAULT_DESIGN) -> bytes:
    """torch.export -> XNNPACK-lowered ExecuTorch program bytes (`module` may be a quantised graph)."""
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower

    if design not in TABLE_DESIGNS:
        raise FmrlError(f"unknown table design {design!r} (known: {', '.join(TABLE_DESIGNS)})")
    exported = torch.export.export(module, example_args, strict=False)
    # keep aten.linear whole even where it is not delegated (decomposed, it copies its weight per call)
    config = EdgeCompileConfig(_check_ir_validity=False, preserve_ops=[torch.ops.aten.linear.default])
    edge = to_edge_transform_and_lower(exported, partitioner=[_partitioner(design)], compile_config=config)
    return edge.to_executorch().buffer


def quantize_step(step: StepModel, example_args: tuple):
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


def build_program(step: StepModel, precision: str = "fp32", design: str = DEFAULT_DESIGN):
    """(pte bytes, eager reference module with the same forward) for a step model."""
    if precision not in PRECISIONS:
        raise FmrlError(f"unknown precision {precision!r} (known: {', '.join(PRECISIONS)})")
    args = (torch.tensor([1]), step.initial_state())
    reference = step if precision == "fp32" else quantize_step(step, args)
    return lower(reference, args, design), reference


def build_floor_program(table: torch.Tensor, precision: str = "fp32") -> bytes:
    """The scoring product alone (hidden [1, s] @ table^T), lowered the same way (benchmark floor)."""
    module = ScoreOnly(table)
    args = (torch.zeros(1, table.shape[1]),)
    if precision == "int8":
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True,
                                                                                     is_dynamic=True))
        prepared = prepare_pt2e(torch.export.export(module, args, strict=False).module(), quantizer)
        prepared(*args)
        module = convert_pt2e(prepared)
    return lower(module, args, "static")


# ----------------------------------------------------------------------------------------------
# Running and verifying


def load_method(pte: bytes | str | Path):
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(pte if isinstance(pte, bytes) else Path(pte))
    return program.load_method("forward")


def sample_sequences(dataset, count: int = VERIFY_SEQUENCES, max_len: int = VERIFY_MAX_LEN,
                     split: str = "val", seed: int = 0) -> list[np.ndarray]:
    """Real user histories (the input of `split`'s prediction), the last max_len items, chosen evenly."""
    histories, _ = dataset.history_and_target(split)
    order = np.random.default_rng(seed).permutation(len(histories))[:count]
    return [np.asarray(histories[i][-max_len:], dtype=np.int64) for i in sorted(order)]


@torch.no_grad()
def verify_program(method, reference, sequences, k_max: int, tolerance: float, num_state: tuple) -> dict:
    """Stream every sequence through the .pte and the eager reference; compare scores and ids per event."""
    max_diff, topk_equal, events, state_diff = 0.0, True, 0, 0.0
    for seq in sequences:
        state_pte = state_ref = torch.zeros(*num_state)
        for item in seq:
            item_t = torch.tensor([int(item)])
            values, indices, state_pte, hidden = method.execute([item_t, state_pte])
            ref_values, ref_indices, state_ref, ref_hidden = reference(item_t, state_ref)
            diff = (values - ref_values).abs().max().item()
            max_diff = max(max_diff, diff, (hidden - ref_hidden).abs().max().item())
            state_diff = max(state_diff, (state_pte - state_ref).abs().max().item())
            if not torch.equal(indices, ref_indices):
                # equal scores may be ordered differently; anything else is a real difference
                same_set = set(indices.tolist()) == set(ref_indices.tolist())
                if not (same_set and diff <= tolerance):
                    topk_equal = False
            events += 1
    return {"sequences": len(sequences), "events": events, "max_abs_diff": max_diff,
            "max_state_diff": state_diff, "topk_equal": topk_equal, "tolerance": tolerance}


@torch.no_grad()
def topk_overlap(method_a, method_b, sequences, num_state: tuple, k: int = 10) -> float:
    """Mean |top-k(a) & top-k(b)| / k over every event of the sequences (two callables or methods)."""
    total, events = 0.0, 0
    for seq in sequences:
        sa = sb = torch.zeros(*num_state)
        for item in seq:
            item_t = torch.tensor([int(item)])
            _, ia, sa, _ = _call(method_a, item_t, sa)
            _, ib, sb, _ = _call(method_b, item_t, sb)
            total += len(set(ia[:k].tolist()) & set(ib[:k].tolist())) / k
            events += 1
    return total / max(1, events)


def _call(fn, item, state):
    return fn.execute([item, state]) if hasattr(fn, "execute") else fn(item, state)


@torch.no_grad()
def ndcg_at_10(step_fn, dataset, num_state: tuple, max_len: int, users: list[int]) -> float:
    """Validation NDCG@10 of a step program over `users`, streaming each history (full ranking over the
    k_max >= 10 returned ids: a target outside the top 10 scores 0 whatever k_max is)."""
    histories, targets = dataset.history_and_target("val")
    total = 0.0
    for u in users:
        state = torch.zeros(*num_state)
        indices = None
        for item in histories[u][-max_len:]:
            _, indices, state, _ = _call(step_fn, torch.tensor([int(item)]), state)
        top = indices[:10].tolist()
        if int(targets[u]) in top:
            total += 1.0 / np.log2(top.index(int(targets[u])) + 2)
    return total / max(1, len(users))


# ----------------------------------------------------------------------------------------------
# Bundles


@dataclass
class ExportResult:
    out: Path
    manifest: dict
    report: dict = field(default_factory=dict)


def load_run_and_data(run_dir):
    """(Run, Dataset) with the dataset the run was trained on (needed for real verification sequences)."""
    from ..data.dataset import load_dataset
    from ..train.run import load_run

    run = load_run(run_dir)
    data = run.config.get("data", {})
    min_count = run.config.get("recipe", {}).get("data", {}).get("min_count", 5)
    dataset = load_dataset(data.get("path", "demo"), min_count=min_count)
    if dataset.item_ids != run.item_ids:
        raise FmrlError(f"{run.path}: the run's items differ from its dataset {dataset.source}")
    return run, dataset


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
                  k_max: int = 100, design: str = DEFAULT_DESIGN, overwrite: bool = True,
                  verify_sequences: int = VERIFY_SEQUENCES, quality_users: int = 200,
                  log=None) -> ExportResult:
    """Export granularity `size` of the run in `run_dir` to the bundle folder `out_dir`.

    The .pte is run on real sequences before anything is written; a mismatch with eager raises
    FmrlError and leaves `out_dir` untouched. quantize: None/"fp32" or "int8".
    """
    log = log or (lambda msg: None)
    precision = quantize or "fp32"
    if precision not in PRECISIONS:
        raise FmrlError(f"--quantize {quantize!r}: expected int8 (or leave it out for fp32)")
    if k_max < 1:
        raise FmrlError(f"--k-max {k_max}: must be at least 1")
    run, dataset = load_run_and_data(run_dir)
    check_size(run, size)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    step = StepModel(run.model, size, k_max=k_max)
    num_state = (2 * step.num_blocks, size)
    started = time.perf_counter()
    log(f"exporting size {size} ({precision}, {dataset.num_items} items, k_max {step.k_max})")
    pte, reference = build_program(step, precision, design)
    method = load_method(pte)
    sequences = sample_sequences(dataset, verify_sequences)
    verification = verify_program(method, reference, sequences, step.k_max, VERIFY_TOLERANCE[precision], num_state)
    if not (verification["topk_equal"] and verification["max_abs_diff"] <= VERIFY_TOLERANCE[precision]):
        raise FmrlError(f"size {size} {precision}: the .pte disagrees with eager on real sequences "
                        f"(max |diff| {verification['max_abs_diff']:.2e}, top-k equal {verification['topk_equal']}); "
                        "no bundle written")
    report = {"seconds_export": round(time.perf_counter() - started, 2), "verification": verification}
    if precision == "int8":
        fp32_pte, _ = build_program(step, "fp32", design)
        fp32_method = load_method(fp32_pte)
        users = list(np.random.default_rng(1).permutation(dataset.num_users)[:quality_users])
        ndcg_fp32 = ndcg_at_10(fp32_method, dataset, num_state, VERIFY_MAX_LEN, users)
        ndcg_int8 = ndcg_at_10(method, dataset, num_state, VERIFY_MAX_LEN, users)
        report["int8"] = {
            "fp32_bytes": len(fp32_pte), "int8_bytes": len(pte),
            "size_change": round(len(pte) / len(fp32_pte) - 1, 4),
            "top10_overlap_with_fp32": round(topk_overlap(method, fp32_method, sequences, num_state), 4),
            "val_users": len(users), "val_NDCG@10_fp32": round(ndcg_fp32, 5),
            "val_NDCG@10_int8": round(ndcg_int8, 5), "val_NDCG@10_change": round(ndcg_int8 - ndcg_fp32, 5)}

    out_dir = Path(out_dir)
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        (tmp / "model.pte").write_bytes(pte)
        atomic_write_json(tmp / "items.json", run.item_ids)
        atomic_write_json(tmp / "cold_start.json", step.cold_start())
        files = {name: sha256_file(tmp / name) for name in ("model.pte", "items.json", "cold_start.json")}
        bundle_bytes = sum((tmp / name).stat().st_size for name in files)
        manifest = manifest_for(run, profile, size, precision, step, verification,
                                bundle_bytes, files, report)
        atomic_write_json(tmp / "manifest.json", manifest)
    log(f"bundle written to {out_dir} ({bundle_bytes:,} bytes)")
    return ExportResult(out_dir, manifest, report)


def manifest_for(run, profile, size, precision, step, verification, bundle_bytes, files, report) -> dict:
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
        "run": str(run.path),
        "metrics": {split: vals for split, vals in _metrics_at(run, size).items()},
        "verification": {k: verification[k] for k in ("sequences", "max_abs_diff", "topk_equal")},
        "sizes": {"bundle_bytes": bundle_bytes, "state_bytes": 4 * state_shape[0] * state_shape[1]},
        "files": files,
        **({"quantization": report["int8"]} if "int8" in report else {}),
    }


def read_manifest(bundle_dir) -> dict:
    return json.loads((Path(bundle_dir) / "manifest.json").read_text())
