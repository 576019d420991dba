"""What every exportable variant of a run costs, measured once and cached in runs/NAME/deploy_cache.json.

For each trained size x precision the exact bundle is built in memory (the same .pte, items.json and
cold_start.json that `export` writes), so bundle bytes are real serialized bytes. The .pte is then run
in a fresh process (probe.py) for its per-event latency on this CPU and the memory the runtime adds
when loading and running it (XNNPACK's packed weights, planned buffers), measured as RSS growth above
that of a trivial one-weight XNNPACK program. int8 quality = the fp32 validation NDCG@10 of
metrics.json plus the int8 - fp32 difference measured on real validation users through both .pte files.

The cache is keyed by the checkpoint's sha256, k_max, the table design and the SDK/ExecuTorch versions;
any change re-measures. Latencies depend on the machine's load: `fmrl-sdk profiles --remeasure`.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import FmrlError
from ..fileio import atomic_write_json, sha256_file
from .profiles import Candidate

CACHE_FILE = "deploy_cache.json"
QUALITY_USERS = 500


def json_bytes(obj) -> bytes:
    """The exact bytes fileio.atomic_write_json writes for obj."""
    return (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()


def cache_key(run, k_max: int, design: str) -> dict:
    import executorch.version

    from .probe import REFERENCE_THREADS
    from .step import STEP_VERSION

    return {"checkpoint_sha256": sha256_file(Path(run.path) / "model.safetensors"), "k_max": k_max,
            "design": design, "step_version": STEP_VERSION, "threads": REFERENCE_THREADS, "sdk_version": __version__,
            "executorch_version": executorch.version.__version__.split("+")[0]}


def probe(pte_path: Path, num_state: tuple, items: list[int], events: int = 400) -> dict:
    """Run probe.py in a fresh interpreter; its JSON result."""
    cmd = [sys.executable, "-m", "fmrl_sdk.deploy.probe", str(pte_path), str(num_state[0]), str(num_state[1]),
           ",".join(map(str, items)), str(events)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"probe of {pte_path} failed ({result.returncode}): {result.stderr[-2000:]}")
    return json.loads(lines[-1])


def baseline_rss(tmp: Path) -> int:
    """RSS growth of loading and running a trivial one-weight XNNPACK program (runtime code pages,
    allocator pools): subtracted from every candidate's growth."""
    import torch

    from .export import lower

    class Trivial(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1, 1), requires_grad=False)

        def forward(self, item, state):
            return state[0], item, torch.nn.functional.linear(state, self.w), state[0]

    path = tmp / "trivial.pte"
    path.write_bytes(lower(Trivial(), (torch.tensor([1]), torch.zeros(1, 1)), "static"))
    return int(probe(path, (1, 1), [1], events=50)["rss_growth_bytes"])


def measure(run, dataset, precisions=("fp32", "int8"), k_max: int = 100, design: str | None = None,
            refresh: bool = False, log=None, sizes=None, events: int = 400) -> list[Candidate]:
    """Candidates for every trained size (or `sizes`) x precision, from the cache or measured now."""
    import torch

    from .export import (DEFAULT_DESIGN, build_program, load_method, make_step, ndcg_at_10,
                         sample_sequences)
    from .measure import event_stream

    design = design or DEFAULT_DESIGN
    log = log or (lambda msg: None)
    path = Path(run.path) / CACHE_FILE
    key = cache_key(run, k_max, design)
    cache = {}
    if path.exists() and not refresh:
        try:
            cache = json.loads(path.read_text())
        except json.JSONDecodeError:
            cache = {}
    if cache.get("key") != key:
        cache = {"key": key, "entries": {}}
    entries = cache["entries"]
    sizes = list(sizes or run.sizes)
    wanted = [(s, p) for s in sizes for p in precisions]
    missing = [(s, p) for s, p in wanted if f"{s}/{p}" not in entries]
    if missing:
        torch.set_num_threads(min(2, os.cpu_count() or 1))
        items_bytes = len(json_bytes(run.item_ids))
        sequences = sample_sequences(dataset, 64)
        stream = event_stream(sequences, 400)
        rng = np.random.default_rng(1)
        users = sorted(rng.permutation(dataset.num_users)[:QUALITY_USERS].tolist())
        max_len = run.config.get("recipe", {}).get("data", {}).get("max_len", 50)
        with tempfile.TemporaryDirectory(prefix="fmrl-candidates-") as tmp:
            tmp = Path(tmp)
            if "baseline_rss_bytes" not in cache or refresh:
                cache["baseline_rss_bytes"] = baseline_rss(tmp)
            for size in sorted({s for s, _ in missing}):
                fp32_method = None
                for precision in ("fp32", "int8"):
                    if (size, precision) not in missing and not (precision == "fp32" and (size, "int8") in missing):
                        continue
                    log(f"measuring size {size} {precision}")
                    step = make_step(run.model, size, k_max, precision, design)
                    pte, _ = build_program(step, precision, design)
                    pte_path = tmp / f"{size}-{precision}.pte"
                    pte_path.write_bytes(pte)
                    num_state = (2 * step.num_blocks, size)
                    probed = probe(pte_path, num_state, stream, events)
                    method = load_method(pte)
                    entry = {
                        "size": size, "precision": precision, "pte_bytes": len(pte),
                        "bundle_bytes": len(pte) + items_bytes + len(json_bytes(step.cold_start())),
                        "state_bytes": 4 * num_state[0] * num_state[1],
                        "runtime_bytes": max(0, int(probed["rss_growth_bytes"]) - cache["baseline_rss_bytes"]),
                        "step_p50_us": round(probed["step_p50_us"], 2),
                        "step_p99_us": round(probed["step_p99_us"], 2),
                    }
                    if precision == "fp32":
                        fp32_method = method
                    else:
                        n_fp32 = ndcg_at_10(fp32_method, dataset, num_state, max_len, users)
                        n_int8 = ndcg_at_10(method, dataset, num_state, max_len, users)
                        entry["int8_ndcg10_change"] = round(n_int8 - n_fp32, 6)
                        entry["int8_quality_users"] = len(users)
                    entries[f"{size}/{precision}"] = entry
            cache["machine"] = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                                "cpus": os.cpu_count(), "measured": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            atomic_write_json(path, cache)
    return [to_candidate(entries[f"{s}/{p}"], run) for s, p in wanted]


def val_ndcg(run, size: int) -> float:
    row = run.metrics.get("val", {}).get(str(size))
    if not row or "NDCG@10" not in row:
        raise FmrlError(f"{run.path}: metrics.json has no validation NDCG@10 for size {size} "
                        "(run `fmrl-sdk eval --split val --run ...`)")
    return float(row["NDCG@10"])


def to_candidate(entry: dict, run) -> Candidate:
    quality = val_ndcg(run, entry["size"]) + entry.get("int8_ndcg10_change", 0.0)
    return Candidate(size=entry["size"], precision=entry["precision"], bundle_bytes=entry["bundle_bytes"],
                     state_bytes=entry["state_bytes"], runtime_bytes=entry["runtime_bytes"],
                     step_p50_us=entry["step_p50_us"], val_ndcg10=round(quality, 6))
