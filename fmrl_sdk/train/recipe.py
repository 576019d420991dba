"""Training recipes: TOML files with [data], [model] and [train] tables, validated strictly.

Unknown tables or keys, wrong types and values out of range (INT_RANGES, FLOAT_RANGES; a path holding NUL)
are one-line FmrlErrors naming the file, the key, its value and what it should be.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import FmrlError
from ..fileio import package_data_dir, read_toml
from ..data.split import SplitSpec
from ..model.model import DEFAULT_SIZES, ITEM_EMBEDDINGS

CUT_KEYS = ("test_from", "val_from")  # a number or a string (see data/split.py)
PATH_KEYS = (("data", "path"), ("data", "features"), ("data", "items"), ("train", "init_from"))

# Ranges of the numbers (docs/training.md's tables state them). Counts and sizes stay within a C int, which
# every torch size argument takes; the seed within what numpy's generators (>= 0) and torch.manual_seed
# (< 2**64, after the trainer adds the rank and 7919 x epoch) accept.
MAX_COUNT = 2**31 - 1
MAX_SEED = 2**63 - 1
MAX_SIZE = 65_536          # [model] sizes: the largest granularity (d_max)
MAX_LEN = 100_000          # [data] max_len: events of history a training row holds
MAX_THREADS = 1_024        # [train] threads: torch threads per process
# (table, key) -> (least, most); `most` as a key's name: that key's value in the same table
INT_RANGES = {
    ("data", "max_len"): (1, MAX_LEN), ("data", "min_count"): (1, MAX_COUNT), ("data", "stride"): (0, "max_len"),
    ("model", "num_blocks"): (1, 1_024),
    ("train", "epochs"): (1, MAX_COUNT), ("train", "batch_size"): (1, MAX_COUNT),
    ("train", "eval_batch_size"): (1, MAX_COUNT), ("train", "warmup_steps"): (0, MAX_COUNT),
    ("train", "patience"): (1, MAX_COUNT),   # 0 would stop before the first epoch (trainer._epochs)
    ("train", "length_buckets"): (0, MAX_COUNT), ("train", "seed"): (0, MAX_SEED),
    ("train", "item_chunk"): (1, MAX_COUNT), ("train", "num_negatives"): (1, MAX_COUNT),
    ("train", "threads"): (0, MAX_THREADS), ("train", "val_users"): (0, MAX_COUNT),
}
# (table, key) -> (check of a finite value, the range in words); r_min < r_max is checked besides
FLOAT_RANGES = {
    ("model", "dropout"): (lambda v: 0 <= v < 1, "in [0, 1)"),
    ("model", "lru_dropout"): (lambda v: 0 <= v < 1, "in [0, 1)"),
    ("model", "r_min"): (lambda v: 0 <= v < 1, "in [0, 1)"),
    ("model", "r_max"): (lambda v: 0 < v <= 1, "in (0, 1]"),
    ("train", "lr"): (lambda v: v > 0, "> 0"),
    ("train", "weight_decay"): (lambda v: v >= 0, ">= 0"),
    ("train", "grad_clip"): (lambda v: v > 0, "> 0"),
    ("train", "label_smoothing"): (lambda v: 0 <= v < 1, "in [0, 1)"),
}


@dataclass
class DataSection:
    path: str = "demo"               # P5 folder, CSV/JSONL file, or "demo" (packaged set)
    features: str = ""               # folder written by `fmrl-sdk featurize` ("" = none)
    max_len: int = 50                # history length the model sees in training and evaluation
    min_count: int = 5               # k-core for CSV/JSONL interaction files
    items: str = ""                  # item catalogue (JSONL/CSV keyed by item) for the data report ("" = none)
    stride: int = 0                  # 0: train each user's last max_len targets; S: every window, S apart
    split: str = "leave-one-out"     # leave-one-out | time (data/split.py)
    test_from: str | float = ""      # time: unix timestamp, ISO date or fraction of events (0.8)
    val_from: str | float = ""       # time: as test_from; "" = as many events before test_from as after it

    def split_spec(self) -> SplitSpec:
        return SplitSpec(self.split, self.test_from, self.val_from)


@dataclass
class ModelSection:
    sizes: list[int] = field(default_factory=lambda: list(DEFAULT_SIZES))
    item_embedding: str = "content"  # content | id | hybrid
    whiten_features: bool = False    # content features centred and whitened before the projector
    id_dims: int = 0                 # hybrid: the learned id vector fills the first id_dims dims (0: all)
    num_blocks: int = 1
    dropout: float = 0.1
    lru_dropout: float = 0.1
    r_min: float = 0.0
    r_max: float = 0.1


@dataclass
class TrainSection:
    epochs: int = 200                # also the horizon of the cosine schedule
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float = 5.0
    patience: int = 10               # early stopping: epochs without a better validation score
    select_on: str = "mean"          # validation score: mean of NDCG@10 over sizes | largest (size's NDCG@10)
    length_buckets: int = 0          # >0: rows sorted by length within runs of this many batches (less padding)
    seed: int = 42
    size_weights: list[float] = field(default_factory=list)  # loss weight per size ([] = equal)
    label_smoothing: float = 0.0     # targets (1 - e) one-hot + e uniform over the catalogue, every size
    loss_method: str = "fused"       # fused | running_sum | masked (same loss, different arithmetic)
    loss: str = "full"               # full | chunked (exact, item blocks) | sampled (shared negatives, log-Q)
    item_chunk: int = 8192           # chunked: items per score block (memory ~ 3 x targets x item_chunk floats)
    num_negatives: int = 1000        # sampled: negatives drawn per batch, shared by every target
    negative_sampler: str = "popularity"  # sampled: proposal Q, uniform | popularity (training count + 1)
    eval_batch_size: int = 256
    threads: int = 0                 # torch threads per process (0 = cores / processes on this node)
    init_from: str = ""              # warm start: a run directory whose weights the run starts from ("" = none)
    val_users: int = 0               # validation during training on a fixed seeded sample of users (0 = all)


@dataclass
class Recipe:
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    train: TrainSection = field(default_factory=TrainSection)
    source: str = ""

    def to_dict(self) -> dict:
        return {"data": dataclasses.asdict(self.data), "model": dataclasses.asdict(self.model),
                "train": dataclasses.asdict(self.train)}

    @classmethod
    def from_dict(cls, raw: dict, source: str = "<recipe>") -> "Recipe":
        sections = {"data": DataSection, "model": ModelSection, "train": TrainSection}
        unknown = set(raw) - set(sections)
        if unknown:
            raise FmrlError(f"{source}: unknown table [{sorted(unknown)[0]}] (expected {', '.join(sections)})")
        built = {name: _section(section_cls, raw.get(name, {}), f"{source} [{name}]")
                 for name, section_cls in sections.items()}
        recipe = cls(**built, source=source)
        recipe.validate()
        return recipe

    def override(self, section: str, key: str, value) -> None:
        if value is not None:
            setattr(getattr(self, section), key, value)
            self.validate()

    def override_split(self, kind: str | None, test_from: str | None, val_from: str | None) -> None:
        """--split / --test-from / --val-from together (one alone may not be valid); a cut implies 'time'."""
        given = {"split": kind, "test_from": test_from, "val_from": val_from}
        if any(v is not None for v in given.values()):
            if kind is None:
                given["split"] = "time" if (test_from or val_from) else self.data.split
            for key, value in given.items():
                if value is not None:
                    setattr(self.data, key, value)
            if self.data.split == "leave-one-out":
                self.data.test_from = self.data.val_from = ""
            self.validate()

    def validate(self) -> None:
        src, m, t = self.source, self.model, self.train
        sizes = m.sizes
        if not sizes or any(b <= a for a, b in zip(sizes, sizes[1:])) or not 1 <= sizes[0] <= sizes[-1] <= MAX_SIZE:
            raise FmrlError(f"{src}: [model] sizes must be strictly increasing integers from 1 to {MAX_SIZE:,}, "
                            f"got {sizes}")
        if m.item_embedding not in ITEM_EMBEDDINGS:
            raise FmrlError(f"{src}: [model] item_embedding must be one of {', '.join(ITEM_EMBEDDINGS)}")
        if m.id_dims and (m.item_embedding != "hybrid" or not 1 <= m.id_dims <= sizes[-1]):
            raise FmrlError(f"{src}: [model] id_dims = {m.id_dims} needs item_embedding = 'hybrid' and "
                            f"1 <= id_dims <= the largest size ({sizes[-1]}); 0 means all")
        if t.size_weights and (len(t.size_weights) != len(sizes) or min(t.size_weights) < 0
                               or sum(t.size_weights) <= 0):
            raise FmrlError(f"{src}: [train] size_weights = {t.size_weights} needs {len(sizes)} non-negative "
                            "numbers, not all 0")
        if t.loss_method not in ("fused", "masked", "running_sum"):
            raise FmrlError(f"{src}: [train] loss_method must be 'fused', 'masked' or 'running_sum'")
        if t.loss not in ("full", "chunked", "sampled"):
            raise FmrlError(f"{src}: [train] loss must be 'full', 'chunked' or 'sampled', got {t.loss!r}")
        if t.select_on not in ("mean", "largest"):
            raise FmrlError(f"{src}: [train] select_on must be 'mean' or 'largest', got {t.select_on!r}")
        if t.negative_sampler not in ("uniform", "popularity"):
            raise FmrlError(f"{src}: [train] negative_sampler must be 'uniform' or 'popularity'")
        self._check_paths()
        self._check_ranges()
        self.data.split_spec().check(f"{src} [data]")

    def _check_paths(self) -> None:
        for table, key in PATH_KEYS:
            value = getattr(getattr(self, table), key)
            if "\0" in value:
                raise FmrlError(f"{self.source}: [{table}] {key} = {value!r:.200}: a path must not contain NUL "
                                "characters")
        if self.train.init_from and not self.train.init_from.strip():
            raise FmrlError(f"{self.source}: [train] init_from must be a run directory, or \"\" for none")

    def _check_ranges(self) -> None:
        """Every number within its range (INT_RANGES, FLOAT_RANGES), named with its value and the range."""
        for (table, key), (least, most) in INT_RANGES.items():
            section = getattr(self, table)
            value = getattr(section, key)
            top = getattr(section, most) if isinstance(most, str) else most
            if not least <= value <= top:
                upto = f"{most} ({top:,})" if isinstance(most, str) else f"{top:,}"
                raise FmrlError(f"{self.source}: [{table}] {key} = {value!r} should be an integer from {least:,} "
                                f"to {upto}")
        for (table, key), (ok, what) in FLOAT_RANGES.items():
            value = getattr(getattr(self, table), key)
            if not (math.isfinite(value) and ok(value)):
                raise FmrlError(f"{self.source}: [{table}] {key} = {value!r} should be a finite number {what}")
        if self.model.r_min >= self.model.r_max:
            raise FmrlError(f"{self.source}: [model] r_min = {self.model.r_min!r} should be below "
                            f"r_max = {self.model.r_max!r}")


def _section(section_cls, raw, where: str):
    if not isinstance(raw, dict):
        raise FmrlError(f"{where}: expected a table")
    fields = {f.name: f for f in dataclasses.fields(section_cls)}
    for key, value in raw.items():
        if key not in fields:
            raise FmrlError(f"{where}: unknown key {key!r} (known: {', '.join(fields)})")
        default = getattr(section_cls(), key)
        if key in CUT_KEYS:
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise FmrlError(f"{where}: {key} = {value!r} should be a unix timestamp, an ISO date string "
                                "or a fraction of events")
            continue
        if not _type_ok(default, value):
            raise FmrlError(f"{where}: {key} = {value!r} should be {_expected(default)}")
    values = {k: (float(v) if isinstance(getattr(section_cls(), k), float) and k not in CUT_KEYS else v)
              for k, v in raw.items()}
    return section_cls(**values)


def _expected(default) -> str:
    """What a key with this default accepts, in words (for error messages)."""
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, list):
        return "a list of integers" if _int_list(default) else "a list of finite numbers"
    return {int: "an integer", float: "a finite number", str: "a string"}.get(type(default), type(default).__name__)


def _int_list(default: list) -> bool:
    """A list key whose default holds integers (sizes) takes integers only."""
    return bool(default) and all(isinstance(v, int) for v in default)


def _type_ok(default, value) -> bool:
    if isinstance(value, bool) or isinstance(default, bool):  # true/false only where a bool is expected
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return _number(value)
    if isinstance(default, list):
        each = (lambda v: isinstance(v, int) and not isinstance(v, bool)) if _int_list(default) else _number
        return isinstance(value, list) and all(each(v) for v in value)
    return isinstance(value, type(default))


def _number(value) -> bool:
    """What a float key takes: a finite number, not a bool, and no integer beyond a float's range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


RECIPES_DIR = package_data_dir("recipes")  # the packaged copies of the checkout's recipes/*.toml


def builtin_recipes() -> dict[str, Path]:
    """Recipe name -> packaged .toml file."""
    return {p.stem: p for p in sorted(RECIPES_DIR.glob("*.toml"))}


def find_recipe(name_or_path: str) -> tuple[Path, Path]:
    """(recipe file, folder its relative paths start from) for a .toml path or a built-in name.

    A file given by path resolves relative paths from its own folder. A built-in name reads the packaged
    copy and resolves them from ./recipes/ of the working directory, as if the file were there: from a
    checkout's root `--recipe beauty` and `--recipe recipes/beauty.toml` mean the same data."""
    path = Path(name_or_path)
    if path.is_file():
        return path, path.parent
    builtin = builtin_recipes().get(name_or_path)
    if builtin is not None:
        return builtin, Path.cwd() / "recipes"
    raise FmrlError(f"{name_or_path}: recipe not found (a .toml path, or one of: {', '.join(builtin_recipes())}; "
                    "`fmrl-sdk recipes` lists them)")


def load_recipe(path: str | Path, base: str | Path | None = None) -> Recipe:
    """Read and validate a recipe; relative data/features/items and [train] init_from paths start from
    `base` (default: the file's folder)."""
    path = Path(path)
    base = Path(base) if base is not None else path.parent
    recipe = Recipe.from_dict(read_toml(path, "recipe"), source=str(path))
    for key in ("path", "features", "items"):
        value = getattr(recipe.data, key)
        if value and value != "demo" and not Path(value).is_absolute():
            setattr(recipe.data, key, str((base / value).resolve()))
    if recipe.train.init_from and not Path(recipe.train.init_from).expanduser().is_absolute():
        recipe.train.init_from = str((base / recipe.train.init_from).resolve())
    return recipe
