"""Item catalogues for any interactions file: reading, alignment, default text, featurize and train with them.

The text encoder is the tiny random BERT of test_features, made the default encoder by monkeypatching the
resolution order, so `featurize --data interactions.csv --items items.jsonl --out F` runs with no other flag.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("transformers")

from fmrl_sdk.data.catalogue import read_catalogue  # noqa: E402
from fmrl_sdk.data.dataset import load_dataset, load_items  # noqa: E402
from fmrl_sdk.errors import FmrlError  # noqa: E402
from fmrl_sdk.features import load_features  # noqa: E402
from fmrl_sdk.features import sources  # noqa: E402
from fmrl_sdk.features.pipeline import featurize  # noqa: E402
from fmrl_sdk.data.text import DEFAULT_TEMPLATE, item_texts  # noqa: E402
from tests.helpers import quiet, run_cli, save_tiny_bert, save_tiny_clip  # noqa: E402

GENRES = ["action", "comedy", "drama", "horror", "romance", "western", "musical", "war", "crime", "family",
          "sport", "mystery"]
NOUNS = ["night", "river", "city", "dream", "road", "star", "storm", "garden", "ghost", "king"]


def write_public_shaped(folder: Path, users: int = 240, items: int = 60, seed: int = 0,
                        length: tuple[int, int] = (4, 7), rare: int = 0) -> tuple[Path, Path]:
    """interactions.csv (user,item,timestamp) + items.jsonl (title, year, genres), like a public dataset.

    Each item has one main genre; each user watches items of one genre, so the content carries the signal
    that predicts the next item. Item ids are 'm<n>'; timestamps increase per user with some ties. `rare`
    more items are seen once each (by the first users, before everything else): a k-core drops them.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    genre_of = [i % len(GENRES) for i in range(items + rare)]
    with open(folder / "items.jsonl", "w") as f:
        for i in range(items + rare):
            title = f"{NOUNS[i % len(NOUNS)]} {NOUNS[(i * 7 + 3) % len(NOUNS)]} {i}"
            extra = [GENRES[(genre_of[i] + 1) % len(GENRES)]] if i % 3 == 0 else []
            f.write(json.dumps({"item": f"m{i}", "title": title, "year": 1970 + i % 40,
                                "genres": [GENRES[genre_of[i]]] + extra}) + "\n")
    by_genre = [[i for i in range(items) if genre_of[i] == g] for g in range(len(GENRES))]
    lines = ["user,item,timestamp"] + [f"u{u % users},m{items + u},999000" for u in range(rare)]
    for u in range(users):
        pool = by_genre[u % len(GENRES)]
        seq = rng.choice(pool, size=min(len(pool), int(rng.integers(*length))), replace=False)
        ts = 1_000_000 + np.cumsum(rng.integers(0, 3, size=len(seq)))  # steps of 0 are ties
        lines += [f"u{u},m{i},{t}" for i, t in zip(seq, ts)]
    (folder / "interactions.csv").write_text("\n".join(lines) + "\n")
    return folder / "interactions.csv", folder / "items.jsonl"


def save_tiny_text_encoder(folder: Path) -> Path:
    """test_features' tiny random BERT (mean pooling), its WordPiece vocabulary extended by these texts' words
    (passed as a dict: transformers 5 ignores `vocab_file=`)."""
    from transformers import BertTokenizerFast

    save_tiny_bert(folder, pooling="mean")
    vocab = (folder / "vocab.txt").read_text().split() + ["year", "genres", "kind", "film"] + GENRES + NOUNS
    vocab = list(dict.fromkeys(vocab))
    assert len(vocab) <= json.loads((folder / "config.json").read_text())["vocab_size"] + 30
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    assert "[UNK]" not in tokenizer.tokenize("Title: night road 12\nYear: 1999\nGenres: drama, western")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        (folder / name).unlink(missing_ok=True)
    tokenizer.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    if config["vocab_size"] < len(vocab):
        from transformers import BertModel

        model = BertModel.from_pretrained(folder)
        model.resize_token_embeddings(len(vocab), mean_resizing=False)  # new words get their own vectors
        model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_default_encoder(tmp_path_factory):
    """The tiny BERT folder, made the default text encoder (as if it were the packaged MiniLM)."""
    folder = save_tiny_text_encoder(tmp_path_factory.mktemp("models") / "st-tiny")
    patch = pytest.MonkeyPatch()
    patch.setattr(sources, "hf_cached_snapshot", lambda repo, revision=None: None)
    patch.setattr(sources, "packaged_minilm", lambda: folder)
    yield folder
    patch.undo()


def cli(args: list[str], capsys) -> tuple[int, str, str]:
    """`fmrl-sdk ARGS` in this process: (exit code, stdout with whitespace runs collapsed, stderr)."""
    code, out, err = run_cli(args, capsys)
    return code, " ".join(out.split()), err  # rich wraps lines at the console width


# ----------------------------------------------------------------------------------------------
# Reading


def test_read_jsonl_and_csv_catalogues(tmp_path):
    jsonl = tmp_path / "items.jsonl"
    jsonl.write_text('{"item_id": 7, "title": "Heat", "year": 1995, "genres": ["Crime", "Drama"], '
                     '"path": [["Movies", "Crime"]], "image": "img/7.jpg"}\n\n{"item_id": "8", "title": "Up"}\n')
    cat = read_catalogue(jsonl)
    assert cat.key == "item_id" and list(cat.rows) == ["7", "8"]
    assert cat.fields == ["title", "year", "genres", "path"] and cat.images == {"7": "img/7.jpg"}
    assert cat.rows["7"]["genres"] == ["Crime", "Drama"] and cat.rows["7"]["year"] == 1995
    csv_path = tmp_path / "items.csv"
    csv_path.write_text('id,title,year\n1,"Toy Story, the film",1995\n2,Heat,\n')
    cat = read_catalogue(csv_path)
    assert cat.key == "id" and cat.rows["1"] == {"title": "Toy Story, the film", "year": "1995"}
    assert cat.align(["1", "3"]) == {"file": str(csv_path), "key": "id", "fields": ["title", "year"], "rows": 2,
                                     "items": 2, "matched": 1, "missing": 1, "filtered": 0, "unknown": 1,
                                     "first_missing": "3", "first_unknown": "2"}


UTF16 = r"not UTF-8 text \(a UTF-16 LE byte order mark: save the file as UTF-8\)"
BAD_CATALOGUES = [
    ("items.jsonl", '{"item": "m1", "title": "a"}\n{"item": "m1", "title": "b"}\n',
     r"items.jsonl:2: item 'm1' appears twice \(first on line 1\)"),
    ("items.jsonl", '{"name": "m1"}\n', r"items.jsonl:1: no item id field"),
    ("items.jsonl", '{"item": "m1"}\n{"title": "x"}\n', r"items.jsonl:2: 'item' is missing$"),
    ("items.jsonl", '{"item": "m1"}\n{"item": "m2",\n', r"items.jsonl:2: invalid JSON"),
    ("items.jsonl", '{"item": "m1"}\n["m2"]\n', r"items.jsonl:2: expected a JSON object"),
    ("items.jsonl", '{"item": "m1"}\n' + "[" * 100000 + "\n", r"items.jsonl:2: invalid JSON \(nested too deeply\)"),
    ("items.csv", "name,title\nm1,a\n", r"items.csv:1: header needs an item id column"),
    ("items.csv", "item,title\nm1,a\nm2,b,c\n", r"items.csv:3: 3 fields, the header has 2"),
    ("items.csv", "item,title\nm1,a\nm1,b\n", r"items.csv:3: item 'm1' appears twice"),
    ("items.csv", "item,title,title\nm1,a,b\n", r"items.csv:1: header has duplicate column 'title'"),
    ("items.txt", "item\nm1\n", r"items.txt: unknown catalogue format"),
    # encodings: the line of the first byte that is not UTF-8; a UTF-16/32 file is named as such
    ("items.csv", b"item,title\ni1,a\n\ni2,b\xff\n", r"items.csv:4: not UTF-8 text$"),
    ("items.csv", "item,title\ni1,café\n".encode("latin-1"), r"items.csv:2: not UTF-8 text$"),
    ("items.jsonl", b'{"item": "i1"}\n{"item": "caf\xe9"}\n', r"items.jsonl:2: not UTF-8 text$"),
    ("items.csv", "\ufeffitem,title\ni1,a\n".encode("utf-16-le"), r"items.csv:1: " + UTF16 + "$"),
    ("items.tsv", "\ufeffitem\ttitle\ni1\ta\n".encode("utf-16-le"), r"items.tsv:1: " + UTF16 + "$"),  # Excel
    ("items.jsonl", '\ufeff{"item": "i1"}\n'.encode("utf-16-le"), r"items.jsonl:1: " + UTF16 + "$"),
    ("items.csv", "\ufeffitem,title\ni1,a\n".encode("utf-32-le"),
     r"items.csv:1: not UTF-8 text \(a UTF-32 LE byte order mark: save the file as UTF-8\)$"),
    ("items.csv", "item,title\ni1,a\n".encode("utf-16-be"),
     r"items.csv:1: header holds NUL characters \(UTF-16 or UTF-32 text without a byte order mark\? save the file as "
     r"UTF-8\)$"),
    # ids: the rule of fmrl_sdk.ids (whitespace around an id removed first)
    ("items.csv", b"item,title\ni\x001,a\n", r"items.csv:2: 'item' must not contain NUL characters$"),
    ("items.tsv", b"item\ttitle\ni\x001\ta\n", r"items.tsv:2: 'item' must not contain NUL characters$"),
    ("items.jsonl", '{"item": "i\\u00001"}\n', r"items.jsonl:1: 'item' must not contain NUL characters$"),
    ("items.csv", "id,title\n" + "x" * 1025 + ",a\n", r"items.csv:2: 'id' is longer than 1,024 bytes"),
    ("items.jsonl", '{"item": ' + "9" * 1025 + "}\n", r"items.jsonl:1: 'item' is longer than 1,024 bytes"),
    ("items.csv", "item,title\n   ,a\n", r"items.csv:2: 'item' must not be empty$"),
    ("items.jsonl", '{"item": 1.5}\n', r"items.jsonl:1: 'item' must be a string or an integer, got float$"),
    ("items.jsonl", '{"item": true}\n', r"items.jsonl:1: 'item' must be a string or an integer, got bool$"),
    ("items.jsonl", '{"item": ["a"]}\n', r"items.jsonl:1: 'item' must be a string or an integer, got list$"),
    ("items.jsonl", '{"item": null}\n', r"items.jsonl:1: 'item' is missing$"),
    ("items.jsonl", '{"item": "a", "image": "x\\u0000.jpg"}\n', r"items.jsonl:1: 'image' must be a file path$"),
    # CSV structure: a quote never closed would swallow every row after it
    ("items.csv", 'item,title\ni1,"Heat\ni2,Up\ni3,Down\n',
     r"items.csv:2: malformed CSV \(a quoted field is never closed\)$"),
    ("items.csv", 'item,title\ni1,"Heat"s\n', r"items.csv:2: malformed CSV \(',' expected after '\"'\)$"),
    ("items.csv", "item,title\n", r"items.csv: no items$"),
    ("items.csv", "\ufeff", r"items.csv: empty file \(expected a header row\)$"),
]


@pytest.mark.parametrize("name,text,message", BAD_CATALOGUES)
def test_bad_catalogue_is_one_line_exit_2_nothing_written(tmp_path, capsys, name, text, message):
    data, _ = write_public_shaped(tmp_path / "d", users=12, items=36)
    bad = tmp_path / name
    bad.write_bytes(text if isinstance(text, bytes) else text.encode())
    out = tmp_path / "feats"
    for command in (["featurize", "--data", str(data), "--items", str(bad), "--out", str(out)],
                    ["data", "inspect", "--data", str(data), "--items", str(bad), "--min-count", "1"]):
        code, _, err = cli(command, capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1, err
        assert lines[0].startswith("error: ") and re.search(message, lines[0]), lines[0]
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == sorted(["d", name])


def test_catalogue_line_endings_byte_order_mark_and_id_forms_accepted(tmp_path):
    for ending in ("\n", "\r\n", "\r"):
        path = tmp_path / "items.csv"
        path.write_bytes(("\ufeffitem,title" + ending + " i1 ,\"two" + ending + "lines\"" + ending + "7,x" + ending)
                         .encode())
        cat = read_catalogue(path)
        assert cat.rows == {"i1": {"title": f"two{ending}lines"}, "7": {"title": "x"}}, ending
    path = tmp_path / "items.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"item": 7}\r\n{"item": " m1 "}\r\n{"item": "' + "é".encode() * 512 + b'"}\n')
    assert list(read_catalogue(path).rows) == ["7", "m1", "é" * 512]  # 1,024 bytes: the most an id holds


def test_catalogue_csv_field_limit_is_the_jsonl_line_limit(tmp_path, monkeypatch):
    import csv

    from fmrl_sdk.data import textfiles
    from fmrl_sdk.jsonio import MAX_JSONL_LINE_BYTES

    assert textfiles.MAX_CSV_FIELD_CHARS == MAX_JSONL_LINE_BYTES
    default = csv.field_size_limit()
    for suffix, sep in ((".csv", ","), (".tsv", "\t")):
        path = tmp_path / f"items{suffix}"
        path.write_text(f"item{sep}description\ni1{sep}{'x' * 200_000}\n")  # over csv's 131,072 default
        assert len(read_catalogue(path).rows["i1"]["description"]) == 200_000
        monkeypatch.setattr(textfiles, "MAX_CSV_FIELD_CHARS", 1000)
        path.write_text(f"item{sep}description\ni1{sep}{'x' * 1000}\ni2{sep}\"{'y' * 999}\n{'z' * 5}\"\n")
        with pytest.raises(FmrlError, match=rf"items{suffix}:3: a field longer than 1,000 characters \(the most a "
                                            r"CSV field may hold\)$"):
            read_catalogue(path)
        monkeypatch.undo()
        assert csv.field_size_limit() == default  # the process-wide limit is the catalogue's only while it reads


def test_catalogue_folder_unreadable_and_overlong_name_are_one_line(tmp_path, monkeypatch):
    from fmrl_sdk.data import catalogue, textfiles

    (tmp_path / "items.csv").mkdir()
    with pytest.raises(FmrlError, match=r"items.csv: items catalogue is a folder, not a file$"):
        read_catalogue(tmp_path / "items.csv")
    with pytest.raises(FmrlError, match=r"\.jsonl: cannot read the items catalogue \(File name too long\)$"):
        read_catalogue(tmp_path / ("a" * 5000 + ".jsonl"))

    def refuse(file, *args, **kwargs):  # as open() does for a file without read permission (tests run as root)
        raise PermissionError(13, "Permission denied", str(file))

    monkeypatch.setattr(catalogue, "open", refuse, raising=False)
    monkeypatch.setattr(textfiles, "open", refuse, raising=False)   # the whole-file UTF-8 check reads first
    for name in ("locked.csv", "locked.jsonl"):
        (tmp_path / name).write_text("item\ni1\n")
        with pytest.raises(FmrlError, match=rf"{name}: cannot read the items catalogue \(Permission denied\)$"):
            read_catalogue(tmp_path / name)


# ----------------------------------------------------------------------------------------------
# Alignment and text


def test_alignment_counted_and_strict(tmp_path, capsys, tiny_default_encoder):
    data, items = write_public_shaped(tmp_path, users=30, items=24)
    rows = items.read_text().splitlines()
    items.write_text("\n".join(rows[2:] + ['{"item": "not-in-data", "title": "ghost"}']) + "\n")
    dataset = load_items(data, items)
    assert dataset.report["catalogue"]["missing"] == 2 and dataset.report["catalogue"]["unknown"] == 1
    assert dataset.item_meta[dataset.item_ids.index("m0")] == {}
    with pytest.raises(FmrlError, match=r"items.jsonl: 2 of 24 items of the data have no row \(first: 'm0'\)"):
        load_items(data, items, strict=True)
    code, out, err = cli(["featurize", "--data", str(data), "--items", str(items), "--out", str(tmp_path / "f")],
                         capsys)
    assert code == 0, err
    assert "22 of 24 items of the data have a row" in out and "2 items of the data have no catalogue row" in out
    assert "1 catalogue rows name items not in the data" in out and "2 of 24 items have an empty text" in out
    code, _, err = cli(["featurize", "--data", str(data), "--items", str(items), "--strict",
                        "--out", str(tmp_path / "g")], capsys)
    assert code == 2 and "--strict needs every item" in err and not (tmp_path / "g").exists()


def test_default_text_every_field_in_file_order_and_amazon_template_kept():
    metas = [{"title": "Heat", "year": 1995, "genres": ["Crime", "Drama"], "release_date": "",
              "path": [["Movies", "Crime"], ["Top"]]},
             {"title": "Up", "year": 2009}]
    template, texts, empty = item_texts(metas)
    assert texts[0] == "Title: Heat\nYear: 1995\nGenres: Crime, Drama\nPath: Movies, Crime; Top"
    assert texts[1] == "Title: Up\nYear: 2009" and empty == 0
    assert "Release date: {release_date}" in template
    amazon = [{"asin": "A", "title": "Nail polish", "brand": "OPI", "categories": [["Beauty", "Nails"]]},
              {"asin": "B", "title": "Lipstick", "price": 4.5}]
    template, texts, _ = item_texts(amazon)
    assert template == DEFAULT_TEMPLATE and texts[0] == "Title: Nail polish\nBrand: OPI\nCategories: Beauty, Nails"
    assert item_texts(amazon, "{title} ({asin})")[1] == ["Nail polish (A)", "Lipstick (B)"]


def test_template_with_a_field_no_item_has_is_an_error(tmp_path, capsys):
    with pytest.raises(FmrlError, match=r"no item has a value for \{year\} \(fields: asin, title\)"):
        item_texts([{"asin": "A", "title": "x"}, {"asin": "B", "title": "y"}], "{title}\\n{year}")
    data, items = write_public_shaped(tmp_path, users=12, items=12)
    code, _, err = cli(["featurize", "--data", str(data), "--items", str(items), "--out", str(tmp_path / "f"),
                        "--text-template", "{title} {director}"], capsys)
    assert code == 2 and "no item has a value for {director}" in err and not (tmp_path / "f").exists()


def test_constant_text_is_refused_unless_allowed(tmp_path, capsys, tiny_default_encoder):
    data, _ = write_public_shaped(tmp_path, users=12, items=12)
    code, _, err = cli(["featurize", "--data", str(data), "--out", str(tmp_path / "f")], capsys)
    assert code == 2 and "so the features would be constant; no item has any metadata" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "f").exists()
    code, out, _ = cli(["featurize", "--data", str(data), "--out", str(tmp_path / "f"), "--allow-constant"], capsys)
    assert code == 0 and "12 of 12 items have an empty text" in out
    matrix, _ = load_features(tmp_path / "f", load_items(data).item_ids)
    assert np.ptp(matrix, axis=0).max() == 0


def test_p5_meta_keeps_every_field_for_templates(tmp_path):
    folder = tmp_path / "p5"
    folder.mkdir()
    (folder / "sequential_data.txt").write_text("1 1 2 3\n2 3 2 1\n")
    (folder / "datamaps.json").write_text(json.dumps({"id2item": {"1": "A1", "2": "A2", "3": "A3"}}))
    with gzip.open(folder / "meta.json.gz", "wt") as f:
        for n, asin in enumerate(("A1", "A2", "A3")):
            f.write(json.dumps({"asin": asin, "title": f"t{n}", "year": 2000 + n, "salesRank": {"Beauty": n}}) + "\n")
    data = load_dataset(folder)
    assert data.item_meta[1] == {"asin": "A2", "title": "t1", "year": 2001, "salesRank": {"Beauty": 1}}
    _, texts, _ = item_texts(data.item_meta, "{title}\\nYear: {year}")
    assert texts == ["t0\nYear: 2000", "t1\nYear: 2001", "t2\nYear: 2002"]


def test_p5_folder_without_maps_or_meta_trains_with_id_embeddings(tmp_path):
    from fmrl_sdk.train.recipe import Recipe
    from fmrl_sdk.train.trainer import prepare, train

    folder = tmp_path / "ids-only"
    folder.mkdir()
    rng = np.random.default_rng(0)
    (folder / "sequential_data.txt").write_text(
        "\n".join(f"{u} " + " ".join(str(i) for i in rng.integers(1, 30, size=6)) for u in range(1, 41)) + "\n")
    data = load_dataset(folder)
    assert data.item_ids[:3] == ["1", "2", "3"] and not any(data.item_meta)
    recipe = Recipe.from_dict({"data": {"path": str(folder), "max_len": 8},
                               "model": {"sizes": [4, 8], "item_embedding": "id"},
                               "train": {"epochs": 1, "batch_size": 16, "threads": 1, "warmup_steps": 1}})
    result = train(prepare(recipe), tmp_path / "run", console=quiet())
    assert set(result["test"]) == {4, 8}
    report = json.loads((tmp_path / "run" / "config.json").read_text())["data"]["report"]
    assert report["training_targets"]["targets"] == 40 * 4 and report["k_core"] is None
    with pytest.raises(FmrlError, match="features would be constant"):
        featurize(folder, tmp_path / "f", console=quiet())


# ----------------------------------------------------------------------------------------------
# Featurize and train on a public-shaped dataset


def distinct_unit_fraction(matrix: np.ndarray) -> float:
    """Fraction of rows that have unit L2 norm and appear exactly once in the matrix."""
    unit = np.abs(np.linalg.norm(matrix, axis=1) - 1) < 1e-5
    _, inverse, counts = np.unique(np.round(matrix, 6), axis=0, return_inverse=True, return_counts=True)
    return float(np.mean(unit & (counts[inverse.ravel()] == 1)))


def train_test_ndcg(data: Path, features: Path, run_dir: Path, min_count: int = 3, epochs: int = 20) -> float:
    from fmrl_sdk.train.recipe import Recipe
    from fmrl_sdk.train.trainer import prepare, train

    recipe = Recipe.from_dict({
        "data": {"path": str(data), "features": str(features), "max_len": 12, "min_count": min_count},
        "model": {"sizes": [8, 16], "item_embedding": "content", "dropout": 0.0, "lru_dropout": 0.0},
        "train": {"epochs": epochs, "batch_size": 32, "lr": 2e-2, "weight_decay": 0.0, "warmup_steps": 2,
                  "patience": 50, "threads": 1, "eval_batch_size": 1000}})
    return train(prepare(recipe), run_dir, console=quiet())["test"][16]["NDCG@10"]


def test_public_shaped_featurize_no_flags_then_content_beats_constant(tmp_path, capsys, tiny_default_encoder):
    data, items = write_public_shaped(tmp_path / "d", rare=10)
    feats = tmp_path / "feats"
    code, out, err = cli(["featurize", "--data", str(data), "--items", str(items), "--out", str(feats)], capsys)
    assert code == 0, err
    assert "all-MiniLM-L6-v2" in out and "70 of 70 items of the data have a row" in out
    manifest = json.loads((feats / "manifest.json").read_text())
    assert manifest["text_template"] == "Title: {title}\nYear: {year}\nGenres: {genres}"
    ids = load_items(data).item_ids
    matrix, _ = load_features(feats, ids)
    assert distinct_unit_fraction(matrix) >= 0.95
    # features cover every item before k-core filtering, so any min_count can use them
    assert len(ids) == 70
    for k in (1, 3, 5):
        subset = load_dataset(data, min_count=k).item_ids
        sub, _ = load_features(feats, subset)
        np.testing.assert_array_equal(sub, matrix[[ids.index(i) for i in subset]])
    assert load_dataset(data, min_count=3).num_items == 60 and load_dataset(data, min_count=1).num_items == 70
    # the same run on constant features: every item's text is the same
    constant_items = tmp_path / "constant.jsonl"
    constant_items.write_text("".join(json.dumps({"item": i, "kind": "film"}) + "\n" for i in ids))
    code, _, err = cli(["featurize", "--data", str(data), "--items", str(constant_items), "--out",
                        str(tmp_path / "const"), "--allow-constant"], capsys)
    assert code == 0, err
    content = train_test_ndcg(data, feats, tmp_path / "run-content")
    constant = train_test_ndcg(data, tmp_path / "const", tmp_path / "run-constant")
    chance = 1 / 60 * sum(1 / np.log2(r + 2) for r in range(10))  # NDCG@10 of a random ranking of 60 items
    assert constant == 0.0  # all items tie; ties rank against the target
    assert content > 2 * chance, (content, chance)


def test_recipe_items_train_report_line_and_inspect_table(tmp_path, capsys, monkeypatch):
    from fmrl_sdk.train.recipe import load_recipe

    data, items = write_public_shaped(tmp_path / "d", users=120, items=36, rare=4)
    (tmp_path / "r.toml").write_text('[data]\npath = "d/interactions.csv"\nitems = "d/items.jsonl"\nmin_count = 3\n'
                                     'max_len = 4\n[model]\nsizes = [4, 8]\nitem_embedding = "id"\n'
                                     '[train]\nepochs = 1\nthreads = 1\n')
    recipe = load_recipe(tmp_path / "r.toml")
    assert recipe.data.items == str(items.resolve())  # relative to the recipe file
    dataset = load_dataset(recipe.data.path, recipe.data.min_count, recipe.data.items)
    assert dataset.report["catalogue"]["matched"] == dataset.num_items == 36
    assert dataset.report["catalogue"]["filtered"] == 4 and dataset.report["k_core"]["items_dropped"] == 4
    code, out, err = cli(["train", "--recipe", str(tmp_path / "r.toml"), "--out", str(tmp_path / "run")], capsys)
    assert code == 0, err
    line = out[out.index("data: "):out.index("training ")]
    assert "3-core dropped 0 users (0%), 4 items (10%)" in line and "catalogue covers 36/36 items" in line
    assert "test targets tie in time" in line and "max_len 4 trains" in line
    monkeypatch.setenv("COLUMNS", "250")  # one table row per line
    code, out, err = cli(["data", "inspect", "--data", str(data), "--items", str(items), "--min-count", "3"], capsys)
    assert code == 0, err
    assert "3-core removed" in out and "4 items had fewer than 3 interactions in the file" in out
    assert "4 rows for items the k-core removed" in out and "Title: night" in out


def test_demo_as_csv_and_jsonl(tmp_path, capsys, tiny_default_encoder):
    """The packaged demo (first 300 users) written as interactions.csv + items.jsonl, as a user would."""
    demo = load_dataset("demo")
    lines, used = ["user,item,timestamp"], {}
    for u in range(300):
        for t, i in enumerate(demo.sequences[u]):
            lines.append(f"{demo.user_ids[u]},{demo.item_ids[i - 1]},{1000 + t}")
            used[demo.item_ids[i - 1]] = demo.item_meta[i - 1]
    (tmp_path / "interactions.csv").write_text("\n".join(lines) + "\n")
    with open(tmp_path / "items.jsonl", "w") as f:
        for item, meta in used.items():
            f.write(json.dumps({"item": item, **{k: v for k, v in meta.items() if k != "asin"}}) + "\n")
    code, out, err = cli(["featurize", "--data", str(tmp_path / "interactions.csv"), "--items",
                          str(tmp_path / "items.jsonl"), "--out", str(tmp_path / "f")], capsys)
    assert code == 0, err
    manifest = json.loads((tmp_path / "f" / "manifest.json").read_text())
    assert manifest["text_template"] == DEFAULT_TEMPLATE  # Amazon-style fields keep the paper's template
    ids = load_items(tmp_path / "interactions.csv").item_ids
    matrix, _ = load_features(tmp_path / "f", ids)
    assert len(ids) == len(used) and distinct_unit_fraction(matrix) >= 0.95
    code, out, err = cli(["data", "inspect", "--data", str(tmp_path / "interactions.csv"), "--items",
                          str(tmp_path / "items.jsonl"), "--min-count", "1", "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["raw"]["users"] == 300 and report["catalogue"]["missing"] == 0
    assert report["timestamps"]["test_target_tied"] == 0 and report["texts"]["distinct"] >= 0.95 * report["items"]


def test_catalogue_image_field_is_relative_to_the_catalogue(tmp_path, capsys, tiny_default_encoder):
    from PIL import Image


    data, items = write_public_shaped(tmp_path / "d", users=12, items=12)
    (tmp_path / "d" / "img").mkdir()
    rows = [json.loads(line) for line in items.read_text().splitlines()]
    for n, row in enumerate(rows[:5]):
        Image.new("RGB", (40, 30), (40 * n, 20, 200 - 30 * n)).save(tmp_path / "d" / "img" / f"{n}.png")
        row["image"] = f"img/{n}.png"
    rows[5]["image"] = "img/missing.png"
    items.write_text("".join(json.dumps(r) + "\n" for r in rows))
    clip = save_tiny_clip(tmp_path / "clip")
    code, out, err = cli(["featurize", "--data", str(data), "--items", str(items), "--out", str(tmp_path / "f")],
                         capsys)
    assert code == 0 and "pass --image-encoder DIR to use them" in out, err
    code, out, err = cli(["featurize", "--data", str(data), "--items", str(items), "--out", str(tmp_path / "f"),
                          "--image-encoder", str(clip)], capsys)
    assert code == 0, err
    manifest = json.loads((tmp_path / "f" / "manifest.json").read_text())
    image = next(m for m in manifest["modalities"] if m["name"] == "image")
    assert image["map_kind"] == "catalogue" and image["counts"] == {"ok": 5, "unmapped": 6, "url": 0,
                                                                   "missing": 1, "corrupt": 0}
