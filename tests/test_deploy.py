"""Deployment: exact slicing, recurrent step == parallel model, device profiles, the size choice,
bundles whose .pte runs like eager, int8, and one-line errors for bad input.

Models here have random weights (with long-memory LRU poles, so the recurrence is really exercised)
over the packaged demo data: the identities must hold for any weights, and real sequences are used.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fmrl_sdk.data.dataset import load_dataset
from fmrl_sdk.errors import FmrlError
from fmrl_sdk.fileio import sha256_file
from fmrl_sdk.model.model import FMRLRec, ModelConfig
from fmrl_sdk.train.recipe import Recipe
from fmrl_sdk.train.run import save_checkpoint

SIZES = (8, 16, 32)


def _random_model(num_items: int, sizes=SIZES, blocks: int = 2, seed: int = 0) -> FMRLRec:
    torch.manual_seed(seed)
    cfg = ModelConfig(num_items=num_items, sizes=sizes, item_embedding="id", num_blocks=blocks)
    model = FMRLRec(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # non-trivial LayerNorm affine parameters
                p.add_(0.3 * torch.randn_like(p))
        for block in model.blocks:  # |lambda| in [0.8, 0.99]: state carries across many events
            radius = 0.8 + 0.19 * torch.rand(cfg.d)
            block.lru.nu_log.copy_(torch.log(-torch.log(radius)))
            block.lru.gamma_log.copy_(torch.log(torch.sqrt(1 - radius**2)))
    return model.eval()


@pytest.fixture(scope="module")
def demo():
    return load_dataset("demo")


@pytest.fixture(scope="module")
def model(demo):
    return _random_model(demo.num_items)


@pytest.fixture(scope="module")
def sequences(demo):
    """Real demo histories (validation inputs), the longest first, cut to the last 50 items."""
    histories, _ = demo.history_and_target("val")
    order = sorted(range(len(histories)), key=lambda i: -len(histories[i]))
    return [np.asarray(histories[i][-50:]) for i in order[:6]] + [np.asarray(histories[i]) for i in order[-4:]]


def _write_run(path: Path, model: FMRLRec, demo, metrics: bool = True) -> Path:
    path.mkdir(parents=True)
    (path / "items.json").write_text(json.dumps(demo.item_ids))
    (path / "config.json").write_text(json.dumps({"recipe": Recipe().to_dict(), "model": model.cfg.to_dict(),
                                                  "data": {"path": "demo"}, "features": None}))
    save_checkpoint(model, path)
    if metrics:
        val = {str(s): {"NDCG@10": 0.01 * (i + 1), "Recall@10": 0.02 * (i + 1)} for i, s in enumerate(model.cfg.sizes)}
        (path / "metrics.json").write_text(json.dumps({"val": val, "test": val}))
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, demo):
    """A small run: sizes 8 and 16, one block, demo items."""
    return _write_run(tmp_path_factory.mktemp("runs") / "small", _random_model(demo.num_items, (8, 16), 1, seed=1), demo)


# ----------------------------------------------------------------------------------------------
# 1-2. slicing and the recurrent step


@torch.no_grad()
def test_slicing_is_exact_at_every_trained_size(model, sequences):
    """The folded standalone step model of size s == the full nested model's size-s head."""
    from fmrl_sdk.deploy.step import StepModel

    table = model.item_table()
    for size in SIZES:
        step = StepModel(model, size)
        assert step.scorer.table.shape == (model.cfg.num_items, size)
        for seq in sequences[:4]:
            state_full, state_cut = model.initial_state(), step.initial_state()
            for item in seq:
                assert torch.equal(step.vector(int(item))[0], table[int(item), :size])   # the input is the row
                hidden, state_full = model.step(table[int(item)][None], state_full)
                full_scores = FMRLRec.scores(hidden, table, size)[0]
                cut_scores, state_cut = step.all_scores(step.vector(int(item)), state_cut)
                assert (cut_scores - full_scores).abs().max().item() <= 1e-5
        with pytest.raises(ValueError):
            StepModel(model, 12)


@torch.no_grad()
def test_step_equals_parallel_model_at_every_prefix(model, sequences):
    from fmrl_sdk.deploy.step import StepModel, parallel_scores, stream_scores

    for size in SIZES:
        step = StepModel(model, size)
        reference = parallel_scores(model, sequences, size)
        for seq, ref in zip(sequences, reference):
            streamed = stream_scores(step, seq)
            assert streamed.shape == ref.shape == (len(seq), model.cfg.num_items)
            assert (streamed - ref).abs().max().item() <= 1e-4


@torch.no_grad()
def test_cold_start_and_block_topk(model):
    from fmrl_sdk.deploy.step import StepModel, block_topk, topk_groups

    step = StepModel(model, 16, k_max=20)
    cold = step.cold_start()
    table = model.item_table()
    expected = torch.topk(FMRLRec.scores(model.empty_history_hidden(table), table, 16), 20)
    assert cold["indices"] == (expected.indices + 1).tolist()
    assert np.allclose(cold["scores"], expected.values.numpy(), atol=1e-5)
    for n, k, group in [(1000, 10, 8), (997, 100, 8), (12101, 100, 11), (50, 10, 16), (5, 5, 8), (7374, 50, 0)]:
        x = torch.randn(n)
        values, indices = block_topk(x[None] if n > 1000 else x, k, group)
        ref = torch.topk(x, k)
        assert torch.equal(values, ref.values) and torch.equal(indices, ref.indices)
    # ties: the same values, each index once, every index pointing at its value
    x = torch.round(torch.randn(5000) * 2)
    values, indices = block_topk(x, 100, topk_groups(5000, 100))
    assert torch.equal(values, torch.topk(x, 100).values) and torch.equal(x[indices], values)
    assert len(set(indices.tolist())) == 100
    assert topk_groups(12101, 100) == 11 and topk_groups(50, 50) == 0


# ----------------------------------------------------------------------------------------------
# 3-4. profiles and the choice


def test_builtin_profiles_load(tmp_path):
    from fmrl_sdk.deploy.profiles import all_profiles, resolve_profile

    names = {p.name for p in all_profiles()}
    assert {"wearable", "phone-lowmem", "phone-mid", "phone-flagship", "tablet", "tv", "edge-server"} <= names
    assert resolve_profile("phone-lowmem").memory_budget_bytes > 0
    mine = tmp_path / "mine.toml"
    mine.write_text('name = "mine"\ndescription = ""\nmemory_budget_bytes = 1000\nlatency_budget_ms = 1\n'
                    'speed_factor = 0.5\nprecisions = ["int8"]\nthreads = 1\nbackend = "xnnpack"\n')
    profile = resolve_profile(str(mine))
    assert profile.latency_budget_ms == 1.0 and profile.precisions == ["int8"]


GOOD = {"name": "x", "description": "d", "memory_budget_bytes": 1000, "latency_budget_ms": 1.0,
        "speed_factor": 1.0, "precisions": ["fp32"], "threads": 1, "backend": "xnnpack"}


@pytest.mark.parametrize("change, field", [
    ({"colour": "red"}, "colour"),
    ({"memory_budget_bytes": None}, "memory_budget_bytes"),       # missing
    ({"memory_budget_bytes": -5}, "memory_budget_bytes"),
    ({"memory_budget_bytes": 1.5}, "memory_budget_bytes"),
    ({"latency_budget_ms": "fast"}, "latency_budget_ms"),
    ({"speed_factor": 0}, "speed_factor"),
    ({"precisions": ["fp16"]}, "precisions"),
    ({"precisions": []}, "precisions"),
    ({"threads": True}, "threads"),
    ({"backend": "coreml"}, "backend"),
])
def test_profile_validation_names_file_and_field(tmp_path, change, field):
    from fmrl_sdk.deploy.profiles import load_profile_file

    raw = {**GOOD, **change}
    lines = []
    for key, value in raw.items():
        if value is None:
            continue
        lines.append(f"{key} = {json.dumps(value) if not isinstance(value, bool) else str(value).lower()}")
    path = tmp_path / "bad.toml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(FmrlError) as e:
        load_profile_file(path)
    assert str(path) in str(e.value) and field in str(e.value) and "\n" not in str(e.value)


def test_profile_errors_unknown_name_and_bad_toml(tmp_path):
    from fmrl_sdk.deploy.profiles import resolve_profile

    with pytest.raises(FmrlError, match="unknown profile 'toaster'.*phone-lowmem"):
        resolve_profile("toaster")
    bad = tmp_path / "broken.toml"
    bad.write_text("name = \n")
    with pytest.raises(FmrlError, match="broken.toml:1: invalid TOML"):
        resolve_profile(str(bad))
    with pytest.raises(FmrlError, match="not found"):
        resolve_profile(str(tmp_path / "absent.toml"))


def _cand(size, precision, bundle, p50, quality):
    from fmrl_sdk.deploy.profiles import Candidate

    return Candidate(size, precision, bundle, 8 * size, 1000, p50, quality)


def test_choice_rule():
    from fmrl_sdk.deploy.profiles import Profile, choose, require_choice

    cands = [_cand(8, "fp32", 100_000, 50.0, 0.010), _cand(16, "fp32", 200_000, 60.0, 0.020),
             _cand(32, "fp32", 400_000, 80.0, 0.030), _cand(32, "int8", 150_000, 70.0, 0.030),
             _cand(64, "fp32", 800_000, 200.0, 0.040)]
    prof = Profile("p", "", 500_000, 0.1, 1.0, ["fp32", "int8"], 1, "xnnpack")
    # 64 is too slow (0.2 ms > 0.1); 32 fp32 and int8 tie on quality -> the smaller bundle (int8)
    choice = choose(prof, cands)
    assert (choice.chosen.size, choice.chosen.precision) == (32, "int8")
    assert any("latency" in r["why_not"] for r in choice.rows if r["size"] == 64)
    # fp32 only, memory 300 kB: 32 fp32 needs 401,256 B -> 16
    prof = Profile("p", "", 300_000, 1.0, 1.0, ["fp32"], 1, "xnnpack")
    assert require_choice(choose(prof, cands)).size == 16
    # a slower device (speed 0.5): 8 -> 0.1 ms, 16 -> 0.12 ms; budget 0.11 ms -> 8
    prof = Profile("p", "", 10**9, 0.11, 0.5, ["fp32"], 1, "xnnpack")
    assert require_choice(choose(prof, cands)).size == 8
    # nothing fits: the error names the smallest need and the budget
    prof = Profile("tiny", "", 50_000, 1.0, 1.0, ["fp32"], 1, "xnnpack")
    with pytest.raises(FmrlError) as e:
        require_choice(choose(prof, cands))
    msg = str(e.value)
    assert "tiny" in msg and "nothing fits" in msg and "101,064" in msg and "50,000" in msg


# ----------------------------------------------------------------------------------------------
# 5-6. export: the .pte runs like eager


@pytest.fixture(scope="module")
def bundle(run_dir, tmp_path_factory):
    from fmrl_sdk.deploy.export import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "phone-lowmem"
    return export_bundle(run_dir, out, size=16, profile="phone-lowmem", k_max=50, verify_sequences=4)


def test_bundle_files_and_manifest(bundle, demo):
    from fmrl_sdk.deploy.export import FORMAT_VERSION

    out, m = bundle.out, bundle.manifest
    assert sorted(p.name for p in out.iterdir()) == ["cold_start.json", "items.json", "manifest.json", "model.pte"]
    # the item vectors are the program's own scoring table bytes: stored once
    assert m["item_table"] == {"file": "model.pte", "offset": m["item_table"]["offset"], "dtype": "float32",
                               "rows": demo.num_items, "cols": 16, "scales": None}
    assert json.loads((out / "manifest.json").read_text()) == m
    assert m["format_version"] == FORMAT_VERSION and m["executorch_version"] == "1.5.1"
    assert (m["granularity"], m["precision"], m["num_items"], m["k_max"], m["profile"]) == \
        (16, "fp32", demo.num_items, 50, "phone-lowmem")
    assert m["state"]["shape"] == [2, 16] and m["sizes"]["state_bytes"] == 2 * 16 * 4
    for name, digest in m["files"].items():
        assert sha256_file(out / name) == digest
    assert m["sizes"]["bundle_bytes"] == sum((out / n).stat().st_size for n in m["files"])
    assert json.loads((out / "items.json").read_text()) == demo.item_ids
    assert m["verification"]["topk_equal"] and m["verification"]["max_abs_diff"] <= 1e-4
    assert m["metrics"]["val"]["NDCG@10"] == pytest.approx(0.02)


@torch.no_grad()
def test_pte_equals_eager_on_real_sequences(bundle, run_dir, sequences):
    """The key test: the exported program, run by the ExecuTorch runtime and fed the item vectors read
    from the bundle's bytes (as the runtime does), == eager PyTorch == the parallel model at every prefix."""
    from fmrl_sdk.deploy.step import StepModel
    from fmrl_sdk.runtime.bundle import load_bundle
    from fmrl_sdk.runtime.engine import select_topk
    from fmrl_sdk.runtime.program import load_program
    from fmrl_sdk.train.run import load_run

    model = load_run(run_dir).model
    loaded = load_bundle(bundle.out)
    method = load_program(loaded.program)
    step = StepModel(model, 16, k_max=50)
    table = model.item_table()
    assert np.array_equal(loaded.item_table.dense(), table[1:, :16].numpy())   # fp32: exactly the rows
    for seq in sequences[:5]:
        state = torch.zeros(2, 16)
        hidden_all = model(torch.as_tensor(seq)[None], table)[0]
        for t, item in enumerate(seq):
            x = torch.from_numpy(loaded.item_table.vector(int(item)))[None]
            scores, hidden, new_state = method.execute((x, state))   # format 3: all N scores
            ref = step(x, state)
            assert scores.shape == (model.cfg.num_items,)
            assert (scores - ref[0]).abs().max().item() <= 1e-4
            assert (hidden - ref[1]).abs().max().item() <= 1e-5
            assert (new_state - ref[2]).abs().max().item() <= 1e-5
            values, positions = select_topk(scores.numpy(), 50)   # the runtimes' top-k
            ref_values, ref_positions = select_topk(ref[0].numpy(), 50)
            assert (torch.from_numpy(values - ref_values)).abs().max().item() <= 1e-4
            assert set(positions.tolist()) == set(ref_positions.tolist()) or \
                np.sort(ref[0].numpy())[-50] - np.sort(ref[0].numpy())[-51] <= 1e-4   # a near-tie at the cut
            values = torch.from_numpy(values)
            # and against the parallel nested model: hidden[:16] and its top-k
            assert (hidden - hidden_all[t, :16]).abs().max().item() <= 1e-4
            parallel = torch.topk(FMRLRec.scores(hidden_all[t], table, 16), 50)
            assert (values - parallel.values).abs().max().item() <= 1e-4
            state = new_state
    cold = json.loads((bundle.out / "cold_start.json").read_text())
    assert cold["indices"] == step.cold_start()["indices"] and len(cold["hidden"]) == 16


def test_table_stored_once(bundle, demo):
    """The [N, s] fp32 item table appears once in the bundle (inside the .pte, where the manifest points):
    the bundle is the table + the block weights + ids, far below two tables."""
    m = bundle.manifest
    table_bytes = demo.num_items * 16 * 4
    pte = (bundle.out / "model.pte").read_bytes()
    assert m["sizes"]["table_bytes"] == table_bytes
    assert pte.count(pte[m["item_table"]["offset"]:m["item_table"]["offset"] + table_bytes]) == 1
    assert table_bytes < len(pte) < table_bytes + 2 * m["sizes"]["block_weight_bytes_fp32"] + 100_000


def test_item_table_not_found_once_goes_to_its_own_file():
    """The fallback: vectors whose bytes are not in the program exactly once get a separate file."""
    from fmrl_sdk.deploy.export import (
        PROGRAM_FILE,
        SEPARATE_TABLE_FILE,
        locate_item_table,
    )
    from fmrl_sdk.runtime.bundle import read_item_table

    rows = np.arange(12, dtype=np.int8).reshape(4, 3)
    scales = np.array([0.5, 1.0, 2.0, 4.0], dtype=np.float32)
    inside = b"head" + rows.tobytes() + b"mid" + scales.tobytes()
    entry, files = locate_item_table(inside, rows, scales)
    assert (entry["file"], entry["offset"], entry["scales"]["offset"]) == (PROGRAM_FILE, 4, 19)
    table = read_item_table(entry, files, 4, 3, "test")
    assert np.array_equal(table.dense(), rows.astype(np.float32) * scales[:, None])
    twice = inside + rows.tobytes()
    entry, files = locate_item_table(twice, rows, scales)
    assert entry["file"] == SEPARATE_TABLE_FILE and set(files) == {PROGRAM_FILE, SEPARATE_TABLE_FILE}
    assert np.array_equal(read_item_table(entry, files, 4, 3, "test").vector(2), rows[1] * np.float32(1.0))


def test_int8_export_reports_overlap(run_dir, tmp_path):
    from fmrl_sdk.deploy.export import export_bundle
    from fmrl_sdk.deploy.step import StepModel
    from fmrl_sdk.runtime.bundle import load_bundle
    from fmrl_sdk.train.run import load_run

    result = export_bundle(run_dir, tmp_path / "int8", size=8, profile="wearable", quantize="int8",
                           k_max=20, verify_sequences=3, quality_users=100)
    m, q = result.manifest, result.report["int8"]
    # the int8 lookup reads the program's own int8 scoring weight and per-row scales: no second table
    table = m["item_table"]
    assert (table["file"], table["dtype"], table["scales"]["file"]) == ("model.pte", "int8", "model.pte")
    assert m["sizes"]["table_bytes"] == m["num_items"] * (8 + 4)
    vectors = load_bundle(result.out).item_table
    assert vectors.rows.dtype == np.int8 and vectors.scales.shape == (m["num_items"],)
    fp32_rows = StepModel(load_run(run_dir).model, 8).scorer.table.numpy()   # each vector is its row, quantised
    assert (np.abs(vectors.dense() - fp32_rows) <= vectors.scales[:, None] / 2 + 1e-7).all()
    assert m["precision"] == "int8" and m["verification"]["against"] == "quantised eager graph"
    assert m["verification"]["top10_overlap"] >= 0.95
    assert q["int8_bytes"] < 0.7 * q["fp32_bytes"] and q["size_change"] < -0.3   # per-item scales weigh at s = 8
    assert 0.0 <= q["top10_overlap_with_fp32"] <= 1.0 and q["val_users"] == 100
    assert math.isfinite(q["val_NDCG@10_change"])
    assert m["quantization"] == q


# ----------------------------------------------------------------------------------------------
# profiles command (from a cache) and bad input


def _seed_cache(run_dir):
    """deploy_cache.json as `measure` writes it, with made-up costs (the measuring itself is slow)."""
    from fmrl_sdk.deploy.candidates import CACHE_FILE, cache_key
    from fmrl_sdk.train.run import load_run

    run = load_run(run_dir)
    entries = {}
    for size in run.sizes:
        for precision, factor in (("fp32", 1.0), ("int8", 0.5)):
            entries[f"{size}/{precision}"] = {
                "size": size, "precision": precision, "pte_bytes": int(30_000 * size * factor),
                "bundle_bytes": int(30_000 * size * factor) + 100_000, "state_bytes": 8 * size,
                "runtime_bytes": 500_000, "step_p50_us": 40.0 + size, "step_p99_us": 90.0,
                **({"int8_ndcg10_change": -0.001} if precision == "int8" else {})}
    (Path(run_dir) / CACHE_FILE).write_text(json.dumps(
        {"key": cache_key(run, 100), "entries": entries, "baseline_rss_bytes": 0}))


def test_profiles_command_json(run_dir):
    from typer.testing import CliRunner

    from fmrl_sdk.cli import app

    _seed_cache(run_dir)
    result = CliRunner().invoke(app, ["profiles", "--run", str(run_dir), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout[result.stdout.index("{"):])
    by_name = {p["profile"]["name"]: p for p in out["profiles"]}
    # edge-server: fp32 only, everything fits -> best quality (16 fp32, NDCG 0.02)
    assert by_name["edge-server"]["chosen"] == {"size": 16, "precision": "fp32"}
    # wearable: int8 only, 3 MB -> 16 int8 (0.019) fits
    assert by_name["wearable"]["chosen"]["precision"] == "int8"
    for p in out["profiles"]:
        assert p["reason"] and {"bundle_bytes", "state_bytes", "latency_ms", "val_NDCG@10"} <= set(p["candidates"][0])


def test_bad_input_is_one_line_error_and_nothing_written(run_dir, tmp_path, demo):
    from typer.testing import CliRunner

    from fmrl_sdk.cli import app

    runner = CliRunner()
    out = tmp_path / "bundle"
    bad_profile = tmp_path / "bad.toml"
    bad_profile.write_text('name = "bad"\nspeed = 3\n')
    no_ckpt = tmp_path / "runs" / "empty"
    no_ckpt.mkdir(parents=True)
    (no_ckpt / "config.json").write_text("{}")
    (no_ckpt / "items.json").write_text(json.dumps(demo.item_ids))
    cases = [
        (["export", "--profile", "toaster", "--run", str(run_dir), "--out", str(out)], "unknown profile 'toaster'"),
        (["export", "--profile", str(bad_profile), "--run", str(run_dir), "--out", str(out)], "unknown field 'speed'"),
        (["export", "--profile", "phone-lowmem", "--run", str(no_ckpt), "--out", str(out)], "no checkpoint"),
        (["export", "--profile", "phone-lowmem", "--run", str(run_dir), "--size", "12", "--out", str(out)],
         "not a trained granularity"),
        (["export", "--profile", "edge-server", "--run", str(run_dir), "--quantize", "int8", "--out", str(out)],
         "allows only fp32"),
        (["profiles", "--run", str(no_ckpt)], "no checkpoint"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert isinstance(result.exception, FmrlError), (args, result.output)
        assert message in str(result.exception) and "\n" not in str(result.exception)
        assert not out.exists() and not any(p.name.startswith(".bundle") for p in tmp_path.iterdir())
    # through the real entry point: exit code 2, one line on stderr
    done = subprocess.run([sys.executable, "-c", "from fmrl_sdk.cli import main; main()", "export", "--profile",
                           "toaster", "--run", str(run_dir), "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: unknown profile 'toaster'")
    assert not out.exists()


def test_failed_verification_writes_nothing(run_dir, tmp_path, monkeypatch):
    from fmrl_sdk.deploy import export as export_mod

    monkeypatch.setattr(export_mod, "verification_passed", lambda precision, v: False)
    out = tmp_path / "never"
    with pytest.raises(FmrlError, match="disagrees with eager"):
        export_mod.export_bundle(run_dir, out, size=8, verify_sequences=1)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_measured_bundle_bytes_are_the_real_bundle(bundle, run_dir, demo):
    """`profiles` sizes candidates from the bytes export really writes (and caches them in the run)."""
    from fmrl_sdk.deploy.candidates import CACHE_FILE, measure
    from fmrl_sdk.runtime.recommender import session_bytes
    from fmrl_sdk.train.run import load_run

    run = load_run(run_dir)
    (cand,) = measure(run, demo, ("fp32",), k_max=50, sizes=[16], refresh=True, events=50)
    assert cand.bundle_bytes == bundle.manifest["sizes"]["bundle_bytes"]
    rows, size = bundle.manifest["state"]["shape"]
    assert cand.state_bytes == session_bytes(rows, size, 50)   # what one saved user session takes
    assert cand.step_p50_us > 0 and cand.runtime_bytes >= 0 and cand.val_ndcg10 == pytest.approx(0.02)
    cache = json.loads((Path(run_dir) / CACHE_FILE).read_text())
    assert cache["key"]["k_max"] == 50 and "16/fp32" in cache["entries"]


def test_probe_server_measures_each_program_in_a_fresh_child(bundle, tmp_path):
    bundle = bundle.out
    """One probe server answers a batch; a program that fails to load is an error answer and the server
    goes on (each measurement runs in its own forked child)."""
    from fmrl_sdk.deploy.candidates import Prober

    manifest = json.loads((bundle / "manifest.json").read_text())
    rows, cols = manifest["state"]["shape"]
    pte = tmp_path / "model.pte"
    pte.write_bytes((bundle / "model.pte").read_bytes())
    bad = tmp_path / "bad.pte"
    bad.write_bytes(b"not a program")
    vectors = np.random.default_rng(0).standard_normal((8, cols)).astype(np.float32)
    with Prober() as prober:
        first = prober.probe(pte, (rows, cols), vectors, events=30)
        with pytest.raises(RuntimeError, match="could not load"):
            prober.probe(bad, (rows, cols), vectors, events=30)
        second = prober.probe(pte, (rows, cols), vectors, events=30)
    for result in (first, second):
        assert result["events"] == 30 and 0 < result["step_p50_us"] <= result["step_p99_us"]
        assert result["rss_growth_bytes"] > 0
