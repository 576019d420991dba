"""fmrl_sdk.runtime: a real exported bundle against the eager model, constant-size state, persistence,
refusals, items added after export, the light import and the C++ example.

The fixture model is untrained (training takes minutes): a seeded random FMRLRec on the packaged demo
data, with item vectors nudged towards their training successors so that recommendations are not
pure noise. It is exported once per pytest session with the real `fmrl_sdk.deploy.export` (shared
with tests/test_simulate.py through a directory under pytest's base temp dir).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from fmrl_sdk.errors import FmrlError
from fmrl_sdk.runtime import Recommender, false_positive_rate
from tests.helpers import SIZE, copy_bundle, foreign_bundle, rewrite_manifest

ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------------------------
# The eager model of the shared run (the run and bundle: conftest's `art`, built by tests/helpers.py)


@pytest.fixture(scope="module")
def model(art):
    from fmrl_sdk.train.run import load_run

    return load_run(art.run_dir).model


# ----------------------------------------------------------------------------------------------
# Light import


def test_runtime_import_is_light():
    code = ("import sys, fmrl_sdk.runtime\n"
            "heavy = [m for m in ('transformers', 'fmrl_sdk.train', 'fmrl_sdk.model', 'torch') if m in sys.modules]\n"
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------------------------
# The one program loader


def test_fast_loader_private_api_is_where_we_expect():
    """runtime/program.py loads programs through executorch's private pybindings for a fast start-up
    and falls back to the official API if they move. This fails loudly when they do (after an
    ExecuTorch upgrade): the fallback works, but start-up is several seconds slower."""
    from fmrl_sdk.runtime import program

    assert program.fast_path_available(), "executorch.extension.pybindings._C moved: fix runtime/program.py"


def test_fast_and_official_loaders_run_the_same_program(art, monkeypatch):
    from fmrl_sdk.runtime.program import LOADER_ENV, load_program

    pte = (art.bundle / "model.pte").read_bytes()
    fast = load_program(pte)
    monkeypatch.setenv(LOADER_ENV, "official")
    official = load_program(art.bundle / "model.pte")
    assert (fast.loader, official.loader) == ("fast", "official")
    state = torch.zeros(*json.loads((art.bundle / "manifest.json").read_text())["state"]["shape"])
    for item in (1, 5, 9):
        x = torch.full((1, state.shape[1]), 0.1 * item)
        a, b = fast.execute((x, state)), official.execute((x, state))
        for x, y in zip(a, b):
            assert torch.equal(x, y)
        state = a[2]
    with pytest.raises(FmrlError, match="could not load"):
        load_program(b"not a program")


def test_only_trusted_programs_skip_the_helper_process_check(art, monkeypatch):
    from fmrl_sdk.runtime import program

    checked = []
    monkeypatch.setattr(program, "check_program", lambda data, method: checked.append(len(data)))
    pte = (art.bundle / "model.pte").read_bytes()
    program.load_program(pte, trusted=True)
    assert checked == []
    program.load_program(pte)
    assert checked == [len(pte)]


@pytest.mark.parametrize("bad", ["short", "four outputs"])
def test_program_outputs_not_matching_the_manifest_are_refused(art, bad):
    """A program (tampered, yet loadable) returning scores of another length, or the four outputs of
    programs before the runtime selected the top-k, is an FmrlError, and the session keeps its state."""
    from fmrl_sdk.runtime import Recommender

    rec = Recommender.open(art.bundle)
    session = rec.new_session()
    session.observe(rec.item_ids[0])
    before = session.to_bytes()
    real = rec.engine._method

    def tampered(inputs):
        scores, hidden, state = real(inputs)
        if bad == "short":
            return scores[:-1], hidden, state
        return scores[:rec.k_max], scores[:rec.k_max], state, hidden

    rec.engine._method = tampered
    with pytest.raises(FmrlError, match="do not match the manifest"):
        session.observe(rec.item_ids[1])
    assert session.to_bytes() == before
    rec.close()


def test_loader_refuses_bad_thread_counts():
    from fmrl_sdk.runtime.program import set_threads

    with pytest.raises(FmrlError, match="threads must be >= 1"):
        set_threads(0)


# ----------------------------------------------------------------------------------------------
# Scores


def eager_scores(model, sequence, size) -> torch.Tensor:
    """[len, N] size-`size` scores after every prefix, from the full nested model in parallel mode."""
    with torch.no_grad():
        table = model.item_table()
        hidden = model(torch.as_tensor(sequence)[None], table)[0]
        return hidden[:, :size] @ table[1:, :size].T


def test_runtime_matches_eager_model(rec, model, dataset):
    assert rec.granularity == SIZE and rec.num_items == dataset.num_items
    with torch.no_grad():  # cold start = the empty-history prediction
        table = model.item_table()
        cold = model.empty_history_hidden(table)[:SIZE] @ table[1:, :SIZE].T
    values, order = torch.topk(cold, rec.k_max)
    idx, scores = rec.new_session().top(rec.k_max)
    assert (idx == order.numpy() + 1).all()
    np.testing.assert_allclose(scores, values.numpy(), atol=1e-4)

    for user in (0, 1, 2, 7):
        seq = dataset.sequences[user]
        session = rec.new_session()
        reference = eager_scores(model, seq, SIZE)
        for t, item in enumerate(seq):
            assert session.observe(dataset.item_ids[item - 1])
            idx, scores = session.top(rec.k_max)
            values, order = torch.topk(reference[t], rec.k_max)
            assert (idx == order.numpy() + 1).all(), f"user {user} step {t}"
            np.testing.assert_allclose(scores, values.numpy(), atol=1e-4)
        # the public API returns external ids with the same scores
        recs = session.recommend(k=5)
        assert [r[0] for r in recs] == [dataset.item_ids[i] for i in order[:5].tolist()]


def test_state_size_is_constant(rec, dataset):
    session = rec.new_session()
    sizes = [len(session.to_bytes())]
    for n, item in enumerate(np.resize(np.concatenate(dataset.sequences[:40]), 400)):
        session.observe_index(int(item))
        if n in (0, 9, 399):
            sizes.append(len(session.to_bytes()))
    assert set(sizes) == {rec.state_bytes}
    assert session.observed == 400
    # layout: header + state [2, s] + hidden [s] + top-k scores and indices + 256-byte Bloom filter + crc
    assert rec.state_bytes < 2048


def test_to_bytes_restore_round_trip(rec, dataset):
    seq = [dataset.item_ids[i - 1] for i in dataset.sequences[3]]
    straight = rec.new_session()
    for item in seq:
        straight.observe(item)
    first = rec.new_session()
    for item in seq[:3]:
        first.observe(item)
    restored = rec.restore(first.to_bytes())
    assert restored.recommend(10) == first.recommend(10)
    for item in seq[3:]:
        restored.observe(item)
    assert restored.recommend(10) == straight.recommend(10)
    assert restored.to_bytes() == straight.to_bytes()
    assert restored.observed == len(seq)
    assert rec.restore(rec.new_session().to_bytes()).recommend(5) == rec.cold_start(5)


def test_restore_refuses_foreign_and_corrupt_states(rec, art, tmp_path, dataset):
    session = rec.new_session()
    session.observe(dataset.item_ids[0])
    blob = session.to_bytes()
    # a state from another bundle (same program, different cold start -> different fingerprint)
    other_dir = foreign_bundle(art.bundle, tmp_path / "other")
    other = Recommender.open(other_dir)
    assert other.fingerprint != rec.fingerprint
    with pytest.raises(FmrlError, match="another bundle"):
        other.restore(blob)
    assert other.restore(other.new_session().to_bytes()).observed == 0
    other.close()

    flipped = bytearray(blob)
    flipped[100] ^= 0x01
    with pytest.raises(FmrlError, match="corrupt"):
        rec.restore(bytes(flipped))
    with pytest.raises(FmrlError):
        rec.restore(blob[:-10])
    with pytest.raises(FmrlError, match="magic"):
        rec.restore(b"JUNK" + blob[4:])
    future = bytearray(blob)
    future[4] = 9  # version field
    with pytest.raises(FmrlError, match="version"):
        rec.restore(bytes(future))
    with pytest.raises(FmrlError, match="seen filter"):
        Recommender(rec.bundle, rec.engine, bloom_bits=4096).restore(blob)


# ----------------------------------------------------------------------------------------------
# Bundle checks


def test_tampered_or_partial_bundle_is_refused(art, tmp_path):
    tampered = copy_bundle(art.bundle, tmp_path / "tampered")
    data = bytearray((tampered / "model.pte").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tampered / "model.pte").write_bytes(bytes(data))
    with pytest.raises(FmrlError, match="sha256 mismatch"):
        Recommender.open(tampered)

    partial = copy_bundle(art.bundle, tmp_path / "partial")
    (partial / "items.json").unlink()
    with pytest.raises(FmrlError, match="missing"):
        Recommender.open(partial)
    (partial / "manifest.json").unlink()
    with pytest.raises(FmrlError, match="not a bundle"):
        Recommender.open(partial)

    future = copy_bundle(art.bundle, tmp_path / "future")
    rewrite_manifest(future, format_version=99)
    with pytest.raises(FmrlError, match="format_version"):
        Recommender.open(future)
    # bundles of older formats (1, 2) are refused with what to do
    old = copy_bundle(art.bundle, tmp_path / "v1")
    rewrite_manifest(old, format_version=1)
    with pytest.raises(FmrlError, match="format_version 1: .* re-export the bundle with fmrl-sdk export"):
        Recommender.open(old)
    newer = copy_bundle(art.bundle, tmp_path / "newer")
    rewrite_manifest(newer, executorch_version="99.0.0")
    with pytest.raises(FmrlError, match="newer"):
        Recommender.open(newer)


# ----------------------------------------------------------------------------------------------
# Items, unknown ids, seen items


def test_item_vector_is_the_eager_table_row(rec, model, dataset):
    """Export-time vectors come from the program's own bytes and equal the eager table exactly (fp32)."""
    table = model.item_table()[1:, :SIZE].detach().numpy()
    for index in (1, 2, dataset.num_items // 2, dataset.num_items):
        assert np.array_equal(rec.item_vector(dataset.item_ids[index - 1]), table[index - 1])
    assert rec.item_vector(dataset.item_ids[0]).dtype == np.float32
    with pytest.raises(FmrlError, match="unknown item"):
        rec.item_vector("no-such-item")


def test_added_copies_of_items_observe_exactly_like_the_originals(rec, dataset):
    """A new item is a new row of the table: copies of export-time items added under new ids advance
    the state exactly like the originals (identical program top-k and hidden)."""
    fresh = Recommender(rec.bundle, rec.engine)
    users = [dataset.sequences[u][-20:] for u in (0, 3, 11)]
    originals = sorted({int(i) for seq in users for i in seq})
    ids = [dataset.item_ids[i - 1] for i in originals]
    fresh.add_items([f"copy:{i}" for i in ids], np.stack([fresh.item_vector(i) for i in ids]))
    for seq in users:
        a, b = fresh.new_session(), fresh.new_session()
        for item in seq:
            item_id = dataset.item_ids[int(item) - 1]
            assert a.observe(item_id) and b.observe(f"copy:{item_id}")
            assert np.abs(a.hidden - b.hidden).max() <= 1e-5
            ia, sa = a._indices, a._scores  # the program's own top-k (export-time items)
            assert np.array_equal(ia, b._indices) and np.abs(sa - b._scores).max() <= 1e-5
        assert (b.added, b.observed, a.added) == (len(seq), len(seq), 0)
        # the merged ranking (program top-k + added items, copies included) is the same
        ranked_a, ranked_b = a.recommend(20, exclude_seen=False), b.recommend(20, exclude_seen=False)
        assert [i for i, _ in ranked_a] == [i for i, _ in ranked_b]
        assert np.allclose([s for _, s in ranked_a], [s for _, s in ranked_b], atol=1e-5)


def test_add_items_makes_a_new_item_recommendable(rec, art, tmp_path, dataset):
    from safetensors.numpy import save_file

    fresh = Recommender(rec.bundle, rec.engine)  # same engine, its own catalogue
    session = fresh.new_session()
    for item in dataset.sequences[5][:4]:
        session.observe_index(int(item))
    hidden = session.hidden
    top_score = session.top(1)[1][0]
    # one vector aligned with the user (wins), one opposite (never shown); vectors may be wider than s
    wide = np.zeros((2, 32), np.float32)
    wide[0, :SIZE] = hidden / np.dot(hidden, hidden) * (top_score + 1.0)
    wide[1, :SIZE] = -hidden
    assert fresh.add_items(["NEW-1", "NEW-2"], wide) == 2
    recs = session.recommend(10)
    assert recs[0][0] == "NEW-1" and abs(recs[0][1] - (top_score + 1.0)) < 1e-3
    assert "NEW-2" not in [r[0] for r in recs]
    # a fresh session's cold start merges added items too; the stored catalogue of `rec` is untouched
    assert "NEW-1" not in [r[0] for r in rec.new_session().recommend(100)]
    # observing an added item steps the state with its vector (counted in `added`); exclude_seen hides it
    assert session.observe("NEW-1") is True and (session.added, session.observed) == (1, 5)
    assert not np.array_equal(session.hidden, hidden)
    assert np.array_equal(fresh.item_vector("NEW-1"), wide[0, :SIZE])
    assert fresh.restore(session.to_bytes()).added == 1
    assert "NEW-1" not in [r[0] for r in session.recommend(10, exclude_seen=True)]
    with pytest.raises(FmrlError, match="already in the bundle"):
        fresh.add_items([dataset.item_ids[0]], wide[:1])
    with pytest.raises(FmrlError, match="dims"):
        fresh.add_items(["X"], np.zeros((1, 4), np.float32))

    # from an `fmrl-sdk item-vectors` style file: tensor `vectors`, ids as JSON in the metadata
    path = tmp_path / "new_items.safetensors"
    save_file({"vectors": wide[:1] * 2}, str(path), metadata={"ids": json.dumps(["NEW-3"])})
    assert fresh.add_items_from_file(path) == 1
    assert session.recommend(1)[0][0] == "NEW-3"
    as_json = tmp_path / "new_items.json"
    as_json.write_text(json.dumps({"ids": ["NEW-4"], "vectors": (wide[:1] * 3).tolist()}))
    assert fresh.add_items_from_file(as_json) == 1
    assert session.recommend(1)[0][0] == "NEW-4"
    bad = tmp_path / "no_ids.safetensors"
    save_file({"vectors": wide[:1]}, str(bad))
    with pytest.raises(FmrlError, match="ids"):
        fresh.add_items_from_file(bad)


def test_unknown_items_skip_or_raise(art, rec):
    session = rec.new_session()
    assert session.observe("no-such-item") is False
    assert session.unknown == 1 and session.observed == 0
    assert session.recommend(5) == rec.cold_start(5)
    strict = Recommender(rec.bundle, rec.engine, on_unknown="raise")
    with pytest.raises(FmrlError, match="unknown item"):
        strict.new_session().observe("no-such-item")


def test_exclude_seen_and_bloom_rate(rec, dataset):
    session = rec.new_session()
    seen_items = set()
    for seq in dataset.sequences[:3]:
        for item in seq:
            session.observe_index(int(item))
            seen_items.add(int(item))
    favourite = int(session.top(1)[0][0])  # this model keeps recommending what it was just fed
    session.observe_index(favourite)
    seen_items.add(favourite)
    everything = session.top(rec.k_max, exclude_seen=False)[0].tolist()
    assert favourite in everything[:20]
    kept = session.top(rec.k_max, exclude_seen=True)[0].tolist()
    assert kept == [i for i in everything if i not in seen_items]  # no false positive on this list
    assert len(session.recommend(20, exclude_seen=True)) == 20
    assert not {r[0] for r in session.recommend(20, exclude_seen=True)} & {dataset.item_ids[i - 1] for i in seen_items}
    assert false_positive_rate(50) < 1e-4 and false_positive_rate(200) < 0.02


def test_shared_recommender_across_threads(rec, dataset):
    seqs = [[dataset.item_ids[i - 1] for i in s] for s in dataset.sequences[10:18]]

    def run(seq):
        session = rec.new_session()
        for item in seq:
            session.observe(item)
        return session.recommend(10)

    expected = [run(s) for s in seqs]
    results = [None] * len(seqs)

    def worker(j):
        results[j] = run(seqs[j])

    threads = [threading.Thread(target=worker, args=(j,)) for j in range(len(seqs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == expected


# ----------------------------------------------------------------------------------------------
# Examples


def test_example_app_persists_state_across_restarts(rec, art, tmp_path, dataset):
    items = [dataset.item_ids[i - 1] for i in dataset.sequences[4][:3]]
    cmd = [sys.executable, str(ROOT / "examples" / "app.py"), "--bundle", str(art.bundle), "--user", "alice",
           "--state-dir", str(tmp_path / "state")]
    subprocess.run(cmd + items[:2], capture_output=True, text=True, check=True, cwd=tmp_path)
    second = subprocess.run(cmd + items[2:], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert "restored" in second.stdout and "(2 events so far)" in second.stdout
    session = rec.new_session()
    for item in items:
        session.observe(item)
    assert (tmp_path / "state" / "alice.state").read_bytes() == session.to_bytes()


def test_select_topk_order_is_total_lower_index_first():
    """The runtimes' top-k (the program returns all N scores): higher score first, equal scores the lower
    position first, NaN below every number (with -inf, by position); the C runtime's select_topk
    (runtime/cpp/src/internal.hpp) implements the same order, so both return the same ids."""
    from fmrl_sdk.runtime.engine import select_topk

    rng = np.random.default_rng(0)
    for trial in range(60):
        n = int(rng.choice([1, 7, 100, 1000, 12101]))
        k = int(rng.integers(1, min(n, 120) + 1))
        scores = (np.round(rng.standard_normal(n) * 2) / 2).astype(np.float32)   # many ties
        if trial % 3 == 1:
            scores[rng.random(n) < 0.3] = np.nan
        if trial % 3 == 2:
            scores[rng.random(n) < 0.5] = -np.inf
            scores[rng.random(n) < 0.2] = np.nan
        key = np.where(np.isnan(scores), -np.inf, scores)
        expected = sorted(range(n), key=lambda i: (-key[i], i))[:k]
        values, positions = select_topk(scores, k)
        assert positions.tolist() == expected and positions.dtype == np.int64
        assert values.tobytes() == scores[expected].tobytes()
