"""Helpers that several test modules use: builders of shared artifacts, tiny models, subprocess runners.
Fixtures live in tests/conftest.py; test modules import these from here, never from each other."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from rich.console import Console

from fmrl_sdk.model import FMRLRec, ModelConfig
from fmrl_sdk.simulate.stream import write_stream

MODEL_SIZES = (4, 8, 16, 32)   # make_model's default nesting
DEEP = "[" * 100_000            # JSON nested deeper than any parser follows


# ----------------------------------------------------------------------------------------------
# The shared run and size-16 bundle (conftest's `art`), and copies of it edited validly

SIZE = 16          # granularity of the fixture bundle
SIZES = (8, 16, 32)


def make_run(run_dir: Path) -> None:
    """A run directory (config.json, items.json, model.safetensors) holding a seeded untrained model."""
    from fmrl_sdk.data.dataset import load_dataset
    from fmrl_sdk.model.model import FMRLRec, ModelConfig
    from fmrl_sdk.train.run import save_checkpoint

    dataset = load_dataset("demo")
    torch.manual_seed(0)
    cfg = ModelConfig(num_items=dataset.num_items, sizes=SIZES, item_embedding="id", num_blocks=1,
                      dropout=0.0, lru_dropout=0.0)
    model = FMRLRec(cfg).eval()
    with torch.no_grad():  # item vector += random vectors of the items that followed it in training
        base = torch.randn(dataset.num_items + 1, cfg.d) / cfg.d ** 0.5
        table = base.clone()
        for seq in dataset.train_sequences():
            for a, b in zip(seq[:-1].tolist(), seq[1:].tolist()):
                table[a] += base[b]
        table[0] = 0
        model.id_embedding.weight.copy_(table * 3)
    run_dir.mkdir(parents=True)
    save_checkpoint(model, run_dir)
    (run_dir / "items.json").write_text(json.dumps(dataset.item_ids))
    config = {"sdk_version": "0.1.0", "recipe": {"data": {"path": "demo", "max_len": 50, "min_count": 5}},
              "model": cfg.to_dict(), "data": {"path": "demo", "name": "demo"}, "features": None}
    (run_dir / "config.json").write_text(json.dumps(config))


def shared_artifacts(base: Path) -> SimpleNamespace:
    """Run dir + size-16 bundle under `base`, built once and reused by every test module."""
    base.mkdir(parents=True, exist_ok=True)
    run_dir, bundle = base / "run", base / "bundle"
    if not (run_dir / "model.safetensors").exists():
        shutil.rmtree(run_dir, ignore_errors=True)
        make_run(run_dir)
    if not (bundle / "manifest.json").exists():
        from fmrl_sdk.deploy.export import export_bundle

        export_bundle(run_dir, bundle, size=SIZE, profile="test", verify_sequences=4)
    return SimpleNamespace(run_dir=run_dir, bundle=bundle)


def rewrite_manifest(bundle: Path, **changes) -> None:
    """Edit a copied bundle's manifest, re-hashing its files (a *valid* but different bundle)."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest.update(changes)
    manifest["files"] = {name: hashlib.sha256((bundle / name).read_bytes()).hexdigest()
                         for name in manifest["files"]}
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def foreign_bundle(src: Path, dst: Path) -> Path:
    """A copy of the bundle `src` with other cold-start scores: the same program, another fingerprint (its
    session states are foreign to `src`)."""
    copy_bundle(src, dst)
    cold = json.loads((dst / "cold_start.json").read_text())
    cold["scores"] = [s + 1.0 for s in cold["scores"]]
    (dst / "cold_start.json").write_text(json.dumps(cold))
    rewrite_manifest(dst)
    return dst


def alias_of(path: Path, folder: Path, how: str) -> Path:
    """`path` itself ("same path"), or a new symbolic or hard link to it in `folder` ("symlink", "hard link"):
    the ways an output can name an input."""
    if how == "same path":
        return path
    alias = folder / (("link" if how == "symlink" else "hard") + path.suffix)
    if how == "symlink":
        alias.symlink_to(path)
    else:
        os.link(path, alias)
    return alias


def copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for p in dst.iterdir():
        p.chmod(0o644)
    return dst


# ----------------------------------------------------------------------------------------------
# The C/C++ runtime's tools (the build itself is conftest's `cpp_build`)

KEY = b"0123456789abcdef-app-key"


def replay(build: Path, *args, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(build / "fmrl_replay"), *map(str, args)], capture_output=True, text=True)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one `error: ...` line of a failed run (ExecuTorch's own log lines aside)."""
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    return lines[0][len("error: "):]


def make_stream(path: Path, dataset, users: int) -> None:
    write_stream(path, dataset.user_ids[:users], dataset.item_ids, dataset.sequences[:users], "test", seed=3)


# ----------------------------------------------------------------------------------------------
# The C ABI through ctypes, in a subprocess without torch, as an app loads it. What every app script starts
# with: the library, its signatures, fmrl_open_options as the header lays it out, and a log callback
# collecting (level, message).

PRELUDE = r"""
import ctypes, json, sys, threading
lib = ctypes.CDLL(sys.argv[1])
args = json.loads(sys.argv[2])
P, I64, SZ, C = ctypes.c_void_p, ctypes.c_int64, ctypes.c_size_t, ctypes.c_char_p
for name, res, argt in [
    ("fmrl_open", ctypes.c_int, [C, P, ctypes.POINTER(P)]), ("fmrl_close", None, [P]),
    ("fmrl_open_options_init_size", ctypes.c_int, [P, SZ]), ("fmrl_last_error", C, []),
    ("fmrl_status_string", C, [ctypes.c_int]), ("fmrl_version", C, []), ("fmrl_version_number", ctypes.c_int, []),
    ("fmrl_thread_count", ctypes.c_int, []), ("fmrl_granularity", ctypes.c_int32, [P]),
    ("fmrl_k_max", ctypes.c_int32, [P]), ("fmrl_num_items", I64, [P]), ("fmrl_item_count", I64, [P]),
    ("fmrl_state_bytes", SZ, [P]), ("fmrl_fingerprint", ctypes.c_int, [P, P]), ("fmrl_profile", C, [P]),
    ("fmrl_item_index", I64, [P, C]), ("fmrl_item_id", C, [P, I64]),
    ("fmrl_session_new", ctypes.c_int, [P, ctypes.POINTER(P)]), ("fmrl_session_free", None, [P]),
    ("fmrl_session_counters", ctypes.c_int, [P, P, P, P]), ("fmrl_observe", ctypes.c_int, [P, P, C, P]),
    ("fmrl_session_to_bytes", ctypes.c_int, [P, P, C, SZ, C, SZ, ctypes.POINTER(SZ)])]:
    getattr(lib, name).restype, getattr(lib, name).argtypes = res, argt


class Options(ctypes.Structure):
    _fields_ = [("struct_size", SZ), ("on_unknown", ctypes.c_int), ("exclude_seen", ctypes.c_int),
                ("bloom_bits", ctypes.c_uint32), ("bloom_hashes", ctypes.c_uint32), ("threads", ctypes.c_int),
                ("check_executorch_version", ctypes.c_int)]

LOG = []
LOG_CB = ctypes.CFUNCTYPE(None, ctypes.c_int, C, P)(lambda level, message, user: LOG.append([level, message.decode()]))
lib.fmrl_set_log_callback.argtypes = [ctypes.CFUNCTYPE(None, ctypes.c_int, C, P), P]
lib.fmrl_set_log_callback(LOG_CB, None)


def err():
    return lib.fmrl_last_error().decode()


def open_(bundle, options=None):
    rec = P()
    status = lib.fmrl_open(bundle.encode(), ctypes.cast(options, P) if options is not None else None, ctypes.byref(rec))
    return status, rec

out = {}
"""


def run_app(build: Path, code: str, **args) -> dict:
    lib = next(p for p in build.iterdir() if p.name.startswith("libfmrl_runtime"))
    result = subprocess.run([sys.executable, "-c", PRELUDE + code + "\nprint(json.dumps(out))", str(lib),
                             json.dumps(args)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_cli(args, capsys) -> tuple[int, str, str]:
    """Run `fmrl-sdk ARGS` in this process through the real entry point (a traceback escapes as an exception):
    (exit code, stdout, stderr)."""
    from fmrl_sdk import cli as cli_module

    old = sys.argv
    sys.argv = ["fmrl-sdk", *map(str, args)]
    code = 0
    try:
        cli_module.main()
    except SystemExit as e:
        code = int(e.code or 0)
    finally:
        sys.argv = old
    out, err = capsys.readouterr()
    return code, out, err


# ----------------------------------------------------------------------------------------------
# Tiny local encoder models (random weights, saved the way hub models are)

WORDS = ("title price brand categories beauty makeup nails nail polish lipstick red blue pink shampoo hair "
         "care skin face cream lotion soap opi maybelline eye eyeliner gel ounce new york oil body wash "
         "fragrance perfume untitled item tools accessories bath").split()


def quiet() -> Console:
    return Console(file=open(os.devnull, "w"), width=120)


def save_tiny_bert(folder: Path, pooling: str | None = None) -> Path:
    """A 2-layer random BERT and a WordPiece tokenizer, saved the way hub models are."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ":", ",", ".", "-", "&"] + WORDS
    vocab += [str(d) for d in range(10)] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab += ["##" + chr(c) for c in range(ord("a"), ord("z") + 1)] + ["##" + str(d) for d in range(10)]
    vocab = list(dict.fromkeys(vocab))
    # the vocabulary as a dict: transformers 5 ignores `vocab_file=` (every token would be [UNK])
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    assert "[UNK]" not in tokenizer.tokenize(f"Title: {WORDS[0]} 12, {WORDS[-1]}")
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    BertModel(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if pooling is not None:
        (folder / "1_Pooling").mkdir(exist_ok=True)
        (folder / "1_Pooling" / "config.json").write_text(json.dumps({
            "word_embedding_dimension": 32, "pooling_mode_cls_token": pooling == "cls",
            "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": False}))
        (folder / "modules.json").write_text(json.dumps([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    return folder


def save_tiny_clip(folder: Path) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"vocab_size": 99, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 16},
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 16, "intermediate_size": 32,
                       "num_hidden_layers": 1, "num_attention_heads": 2},
        projection_dim=12)
    CLIPModel(config).eval().save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------------------------
# Small models


def make_model(item_embedding="hybrid", blocks=2, num_items=60, feature_dim=12, sizes=MODEL_SIZES, seed=0,
               whiten=False, id_dims=0):
    torch.manual_seed(seed)
    features = torch.randn(num_items + 1, feature_dim)
    if whiten:
        features += 2.0 * torch.randn(feature_dim)  # off-centre, as encoder outputs are
    features[0] = 0
    cfg = ModelConfig(num_items=num_items, sizes=sizes, feature_dim=feature_dim, item_embedding=item_embedding,
                      num_blocks=blocks, dropout=0.0, lru_dropout=0.0, r_min=0.4, r_max=0.99,
                      whiten_features=whiten, id_dims=id_dims)
    return FMRLRec(cfg, features if item_embedding != "id" else None).eval()


# ----------------------------------------------------------------------------------------------
# Timed interaction logs

DAY = 86400

T0 = 1_600_000_000


def write_timed_log(path: Path, users: int = 80, items: int = 40, seed: int = 0) -> Path:
    """user,item,timestamp over 100 days, learnable (each next item 1-3 after the last); items 36-39 appear
    only from day 70 on (new items after a late cut); a fifth of the users start after day 75 (new users);
    some events share a timestamp (file order decides)."""
    rng = np.random.default_rng(seed)
    lines = ["user,item,timestamp"]
    for u in range(users):
        start = T0 + (int(rng.integers(75, 95)) if u % 5 == 0 else int(rng.integers(0, 60))) * DAY
        item, ts = int(rng.integers(36)), start
        for _ in range(int(rng.integers(6, 14))):
            late = ts >= T0 + 70 * DAY
            lines.append(f"u{u},i{item if late or item < 36 else item % 36},{ts}")
            item = (item + int(rng.integers(1, 4))) % (items if late else 36)
            ts += int(rng.integers(0, 3)) * DAY // 2   # 0: a tie with the previous event
    path.write_text("\n".join(lines) + "\n")
    return path
