"""Lower a step model to an ExecuTorch program and find its item table in the program bytes.

StepModel (step.py) -> torch.export(strict=False) -> [int8: pt2e dynamic per-channel quantisation] ->
to_edge_transform_and_lower(XNNPACK) -> .pte -> locate the item table's bytes in the .pte.

The item table is stored once (docs/deploy.md, "Item table: stored once"): the program takes the observed
item's vector as input and reads the [N, s] table only in its scoring product, whose weight XNNPACK
serializes as is (fp32: the row-major [N, s] float32 table; int8: the [N, s] int8 weight and its N
per-row float32 scales). `locate_item_table` finds those bytes in the .pte (exactly once, else a
separate `item_table.bin` holds them) and the manifest records where, so the runtime reads item i's
vector straight from the program file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import FmrlError
from ..runtime.bundle import PROGRAM_FILE, ItemTable, read_item_table
from .step import StepModel

PRECISIONS = ("fp32", "int8")
# holds the item vectors only when their bytes cannot be located exactly once in the program
SEPARATE_TABLE_FILE = "item_table.bin"


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
