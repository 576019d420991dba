"""Export one granularity of a trained run to an ExecuTorch bundle (docs/bundle-format.md).

Pipeline: StepModel (step.py) -> torch.export(strict=False) -> [int8: pt2e dynamic per-channel
quantisation] -> to_edge_transform_and_lower(XNNPACK) -> .pte -> run the .pte with the ExecuTorch
runtime on real user sequences and compare with eager -> write the bundle atomically.

The item table design (docs/deploy.md, "Item table: stored once"): the item lookup and the scoring
product read the same [N, s] table. A lookup as an embedding runs as a portable kernel outside the
XNNPACK delegate, so with the scoring linear inside it the .pte carries the table twice (program constant
+ delegate blob). The default ("onehot") does the lookup as one-hot(item) @ table inside the delegate:
both products use the one static table, which XNNPACK serializes once. `TABLE_DESIGNS` lists the
variants measured.
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
# How the [N, s] item table reaches the item lookup and the scoring linear (docs/deploy.md has the
# measured sizes and latencies). fp32 bundles use DEFAULT_DESIGN; int8 bundles always use "int8".
TABLE_DESIGNS = {
    "onehot": "lookup = one-hot(item) @ table inside the delegate; the delegate's one static table serves "
              "lookup and scoring: stored once",
    "static": "lookup = embedding (portable kernel) + scoring in the delegate: stored twice",
    "dynamic": "lookup = embedding; the table is passed to the delegate's linear as a runtime input "
               "(XNNPACK repacks it every call): stored once",
    "portable": "lookup = embedding; scoring linear left to the ExecuTorch CPU kernel: stored once",
    "int8": "int8 scoring in the delegate + lookup (embedding) from a per-item int8 copy: 2 bytes/entry",
}
DEFAULT_DESIGN = "onehot"
# .pte vs eager: fp32 absolute score difference; int8 (vs the quantised eager graph) relative difference
# and mean top-10 overlap (see verification_passed)
VERIFY_TOLERANCE = {"fp32": 1e-4, "int8_rel": 2e-2, "int8_overlap": 0.95}
VERIFY_SEQUENCES = 32
VERIFY_MAX_LEN = 50


# ----------------------------------------------------------------------------------------------
# Lowering


def _partitioner(design: str):
    from executorch.backends.xnnpack.partition.config import ALL_PARTITIONER_CONFIGS
    from executorch.backends.xnnpack.partition.config.gemm_configs import LinearConfig
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    if design not in ("dynamic", "portable"):
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


def lookup_for(precision: str, design: str) -> str:
    if precision == "int8":
        return "int8"
    return "onehot" if design == "onehot" else "embedding"


def make_step(model, size: int, k_max: int = 100, precision: str = "fp32", design: str = DEFAULT_DESIGN,
              table: torch.Tensor | None = None) -> StepModel:
    if precision not in PRECISIONS:
        raise FmrlError(f"unknown precision {precision!r} (known: {', '.join(PRECISIONS)})")
    if design not in TABLE_DESIGNS:
        raise FmrlError(f"unknown table design {design!r} (known: {', '.join(TABLE_DESIGNS)})")
    return StepModel(model, size, k_max=k_max, table=table, lookup=lookup_for(precision, design))


def build_program(step: StepModel, precision: str = "fp32", design: str = DEFAULT_DESIGN):
    """(pte bytes, eager reference with the same forward): for int8 the quantised eager graph."""
    args = (torch.tensor([1]), step.initial_state())
    reference = step if precision == "fp32" else quantize_step(step, args)
    return lower(reference, args, "int8" if precision == "int8" else design), reference


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


class LoadedMethod:
    """The `forward` method of a loaded program. Holds the program: a Method whose Program has been
    garbage-collected points at freed memory (a segmentation fault, not an exception)."""

    def __init__(self, pte: bytes | str | Path):
        from executorch.runtime import Runtime

        self.program = Runtime.get().load_program(pte if isinstance(pte, bytes) else Path(pte))
        self.method = self.program.load_method("forward")

    def execute(self, inputs):
        return self.method.execute(inputs)


def load_method(pte: bytes | str | Path) -> LoadedMethod:
    return LoadedMethod(pte)


def sample_sequences(dataset, count: int = VERIFY_SEQUENCES, max_len: int = VERIFY_MAX_LEN,
                     split: str = "val", seed: int = 0) -> list[np.ndarray]:
    """Real user histories (the input of `split`'s prediction), the last max_len items, chosen evenly."""
    histories, _ = dataset.history_and_target(split)
    order = np.random.default_rng(seed).permutation(len(histories))[:count]
    return [np.asarray(histories[i][-max_len:], dtype=np.int64) for i in sorted(order)]


@torch.no_grad()
def verify_program(method, reference, sequences, num_state: tuple) -> dict:
    """Stream every sequence through the .pte and the eager reference; compare scores and ids per event."""
    max_diff = max_rel = state_diff = 0.0
    topk_equal, events, overlap = True, 0, 0.0
    for seq in sequences:
        state_pte = state_ref = torch.zeros(*num_state)
        for item in seq:
            item_t = torch.tensor([int(item)])
            values, indices, state_pte, hidden = method.execute([item_t, state_pte])
            ref_values, ref_indices, state_ref, ref_hidden = reference(item_t, state_ref)
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
                  verify_sequences: int = VERIFY_SEQUENCES, quality_users: int = 500,
                  log=None, run=None, dataset=None) -> ExportResult:
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
    if run is None or dataset is None:
        run, dataset = load_run_and_data(run_dir)
    check_size(run, size)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    step = make_step(run.model, size, k_max, precision, design)
    num_state = (2 * step.num_blocks, size)
    started = time.perf_counter()
    log(f"exporting size {size} ({precision}, {dataset.num_items} items, k_max {step.k_max})")
    pte, reference = build_program(step, precision, design)
    method = load_method(pte)
    sequences = sample_sequences(dataset, verify_sequences)
    verification = verify_program(method, reference, sequences, num_state)
    if not verification_passed(precision, verification):
        raise FmrlError(f"size {size} {precision}: the .pte disagrees with eager on real sequences "
                        f"(max |diff| {verification['max_abs_diff']:.2e}, top-k equal {verification['topk_equal']}, "
                        f"top-10 overlap {verification['top10_overlap']:.3f}); no bundle written")
    report = {"seconds_export": round(time.perf_counter() - started, 2), "verification": verification}
    if precision == "int8":
        fp32_step = make_step(run.model, size, k_max, "fp32", design)
        fp32_pte, _ = build_program(fp32_step, "fp32", design)
        fp32_method = load_method(fp32_pte)
        users = sorted(np.random.default_rng(1).permutation(dataset.num_users)[:quality_users].tolist())
        max_len = run.config.get("recipe", {}).get("data", {}).get("max_len", VERIFY_MAX_LEN)
        ndcg_fp32 = ndcg_at_10(fp32_method, dataset, num_state, max_len, users)
        ndcg_int8 = ndcg_at_10(method, dataset, num_state, max_len, users)
        report["int8"] = {
            "fp32_bytes": len(fp32_pte), "int8_bytes": len(pte),
            "size_change": round(len(pte) / len(fp32_pte) - 1, 4),
            "top10_overlap_with_fp32": round(topk_overlap(method, fp32_method, sequences, num_state), 4),
            "val_users": len(users), "val_NDCG@10_fp32": round(ndcg_fp32, 5),
            "val_NDCG@10_int8": round(ndcg_int8, 5), "val_NDCG@10_change": round(ndcg_int8 - ndcg_fp32, 5)}

    out_dir = Path(out_dir)
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        tmp.chmod(0o755)
        (tmp / "model.pte").write_bytes(pte)
        atomic_write_json(tmp / "items.json", run.item_ids)
        atomic_write_json(tmp / "cold_start.json", step.cold_start())
        files = {name: sha256_file(tmp / name) for name in ("model.pte", "items.json", "cold_start.json")}
        bundle_bytes = sum((tmp / name).stat().st_size for name in files)
        manifest = manifest_for(run, profile, size, precision, step, verification,
                                bundle_bytes, files, report)
        atomic_write_json(tmp / "manifest.json", manifest)
        for f in tmp.iterdir():
            f.chmod(0o644)
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
        "metrics": {split: vals for split, vals in _metrics_at(run, size).items() if vals},
        "verification": {**{k: verification[k] for k in ("sequences", "max_abs_diff", "topk_equal")},
                         "against": "eager" if precision == "fp32" else "quantised eager graph",
                         "top10_overlap": round(verification["top10_overlap"], 4)},
        "sizes": {"bundle_bytes": bundle_bytes, "state_bytes": 4 * state_shape[0] * state_shape[1]},
        "files": files,
        **({"quantization": report["int8"]} if "int8" in report else {}),
    }


def read_manifest(bundle_dir) -> dict:
    return json.loads((Path(bundle_dir) / "manifest.json").read_text())
