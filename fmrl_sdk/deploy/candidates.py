"""What every exportable variant of a run costs, measured once and cached in runs/NAME/deploy_cache.json.

For each trained size x precision the exact bundle is built in memory (the same .pte, items.json and
cold_start.json that `export` writes), so bundle bytes are real serialized bytes. The .pte is then run
in a fresh process (a child of probe.py's server) for its per-event latency on this CPU and the memory the runtime adds
when loading and running it (XNNPACK's packed weights, planned buffers), measured as RSS growth above
that of a trivial one-weight XNNPACK program. int8 quality = the fp32 validation NDCG@10 of
metrics.json plus the int8 - fp32 difference measured on real validation users through both .pte files.

The cache is keyed by the checkpoint's sha256, k_max, the step graph's version and the SDK/ExecuTorch
versions; any change re-measures. Latencies depend on the machine's load: `fmrl-sdk profiles --remeasure`.
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
from ..jsonio import parse_json_text, read_json
from ..runtime.recommender import session_bytes
from .profiles import Candidate

CACHE_FILE = "deploy_cache.json"
QUALITY_USERS = 500


def json_bytes(obj) -> bytes:
    """The exact bytes fileio.atomic_write_json writes for obj."""
    return (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()


def bundle_bytes(program, item_ids: list, cold_start: dict) -> int:
    """Bytes of the files export writes for a bundle, manifest.json not counted (the manifest's
    'bundle_bytes'): the program's files, items.json and cold_start.json."""
    return (sum(len(data) for data in program.files.values()) + len(json_bytes(item_ids))
            + len(json_bytes(cold_start)))


def cache_key(run, k_max: int) -> dict:
    import executorch.version

    from .probe import PROBE_VERSION, REFERENCE_THREADS
    from .step import STEP_VERSION

    return {"checkpoint_sha256": sha256_file(Path(run.path) / "model.safetensors"), "k_max": k_max,
            "step_version": STEP_VERSION, "probe_version": PROBE_VERSION,
            "threads": REFERENCE_THREADS, "sdk_version": __version__,
            "executorch_version": executorch.version.__version__.split("+")[0]}


class Prober:
    """One probe server (probe.py --serve) for a batch of measurements; each program is measured in a child
    forked for it. Use as a context manager; `probe` is one measurement."""

    def __init__(self):
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        self._proc = subprocess.Popen([sys.executable, "-m", "fmrl_sdk.deploy.probe", "--serve"], env=env,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, bufsize=1)

    def probe(self, pte_path: Path, num_state: tuple, vectors: np.ndarray, events: int = 400) -> dict:
        """Latency and RSS growth of the program at pte_path, fed the item vectors [n, s] in turn."""
        vectors_path = pte_path.with_suffix(".inputs.npy")
        np.save(vectors_path, np.ascontiguousarray(vectors, dtype=np.float32))
        request = {"program": str(pte_path), "rows": num_state[0], "cols": num_state[1],
                   "inputs": str(vectors_path), "events": events}
        try:
            self._proc.stdin.write(json.dumps(request) + "\n")
            self._proc.stdin.flush()
            answer = self._proc.stdout.readline()
        except BrokenPipeError:
            answer = ""
        lines = [line for line in answer.splitlines() if line.startswith("{")]
        result = parse_json_text(lines[-1], "the probe's answer") if lines else {"error": "no answer"}
        if "error" in result:
            stderr = self._proc.stderr.read()[-2000:] if self._proc.poll() is not None else ""
            raise RuntimeError(f"probe of {pte_path} failed: {result['error']} {stderr}".strip())
        return result

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc.stdout.close()
        self._proc.stderr.close()

    def __enter__(self) -> "Prober":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def baseline_rss(prober: Prober, tmp: Path) -> int:
    """RSS growth of loading and running a trivial one-weight XNNPACK program (runtime code pages,
    allocator pools): subtracted from every candidate's growth."""
    import torch

    from .export import lower

    class Trivial(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1, 1), requires_grad=False)

        def forward(self, x, state):
            return state[0], x[0], torch.nn.functional.linear(state, self.w), state[0]

    path = tmp / "trivial.pte"
    path.write_bytes(lower(Trivial(), (torch.zeros(1, 1), torch.zeros(1, 1))))
    return int(prober.probe(path, (1, 1), np.ones((1, 1)), events=50)["rss_growth_bytes"])


def measure(run, dataset, precisions=("fp32", "int8"), k_max: int = 100, refresh: bool = False,
            sizes=None, events: int = 400, progress=None) -> list[Candidate]:
    """Candidates for every trained size (or `sizes`) x precision, from the cache or measured now.
    progress(done, total, label) is called before each measurement and once at the end."""
    import torch

    from ..runtime.program import load_program
    from .export import Stepper, build_program, make_step, ndcg_at_10, sample_sequences
    from .measure import event_stream

    progress = progress or (lambda done, total, label: None)
    path = Path(run.path) / CACHE_FILE
    key = cache_key(run, k_max)
    cache = {}
    if path.exists() and not refresh:
        try:
            cache = read_json(path)
        except FmrlError:
            cache = {}  # an unreadable cache is measured again
    if cache.get("key") != key:
        cache = {"key": key, "entries": {}}
    entries = cache["entries"]
    sizes = list(sizes or run.sizes)
    wanted = [(s, p) for s in sizes for p in precisions]
    missing = [(s, p) for s, p in wanted if f"{s}/{p}" not in entries]
    if missing:
        torch.set_num_threads(min(2, os.cpu_count() or 1))
        sequences = sample_sequences(dataset, 64)
        stream = event_stream(sequences, 400)
        rng = np.random.default_rng(1)
        users = sorted(rng.permutation(dataset.num_users)[:QUALITY_USERS].tolist())
        max_len = run.info.max_len
        with tempfile.TemporaryDirectory(prefix="fmrl-candidates-") as tmp, Prober() as prober:
            tmp = Path(tmp)
            if "baseline_rss_bytes" not in cache or refresh:
                cache["baseline_rss_bytes"] = baseline_rss(prober, tmp)
            # an int8 candidate also builds its fp32 twin (the quality reference) when that is cached
            total = len(missing) + sum(p == "int8" and (s, "fp32") not in missing for s, p in missing)
            done = 0
            for size in sorted({s for s, _ in missing}):
                fp32_method = None
                for precision in ("fp32", "int8"):
                    if (size, precision) not in missing and not (precision == "fp32" and (size, "int8") in missing):
                        continue
                    progress(done, total, f"size {size} {precision}")
                    step = make_step(run.model, size, k_max, precision)
                    program = build_program(step, precision)
                    pte_path = tmp / f"{size}-{precision}.pte"
                    pte_path.write_bytes(program.pte)
                    num_state = (2 * step.num_blocks, size)
                    vectors = np.stack([program.table.vector(i) for i in stream])
                    probed = prober.probe(pte_path, num_state, vectors, events)
                    method = Stepper(load_program(program.pte, trusted=True), program.table)
                    entry = {
                        "size": size, "precision": precision, "pte_bytes": len(program.pte),
                        "bundle_bytes": bundle_bytes(program, run.item_ids, step.cold_start()),
                        "state_bytes": session_bytes(num_state[0], size, k_max),
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
                    done += 1
            progress(done, total, "done")
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
