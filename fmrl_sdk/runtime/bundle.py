"""Reading and verifying a bundle directory (docs/bundle-format.md). No torch, no ExecuTorch here: numpy
and the standard library only."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import FmrlError
from ..fileio import contained_path

SUPPORTED_FORMAT_VERSIONS = (2,)
PROGRAM_FILE = "model.pte"
REQUIRED_FILES = (PROGRAM_FILE, "items.json", "cold_start.json")
MANIFEST = "manifest.json"


@dataclass
class Bundle:
    """A verified bundle: manifest, item ids, cold-start output, the program bytes and the item table
    (views into the bundle's bytes)."""

    path: Path
    manifest: dict
    item_ids: list[str]
    cold_start: dict
    program: bytes = field(repr=False)
    item_table: ItemTable | None = field(default=None, repr=False)
    fingerprint: bytes = b""           # 16 bytes, identifies the bundle's files (see `bundle_fingerprint`)

    @property
    def granularity(self) -> int:
        return int(self.manifest["granularity"])

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def num_blocks(self) -> int:
        return int(self.manifest["num_blocks"])

    @property
    def state_shape(self) -> tuple[int, int]:
        rows, size = self.manifest["state"]["shape"]
        return int(rows), int(size)

    @property
    def k_max(self) -> int:
        return int(self.manifest["k_max"])

    @property
    def method(self) -> str:
        return str(self.manifest.get("method", "forward"))


ITEM_TABLE_DTYPES = {"float32": np.dtype("<f4"), "int8": np.dtype("i1")}


@dataclass(frozen=True)
class ItemTable:
    """The vectors of the export-time items, viewed (not copied) in the bundle's bytes: `rows` [N, s]
    float32, or int8 with per-row float32 `scales` [N] (vector = row * scale)."""

    rows: np.ndarray
    scales: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        return self.rows.nbytes + (0 if self.scales is None else self.scales.nbytes)

    def vector(self, index: int) -> np.ndarray:
        """float32 [s] vector (a new array) of internal index 1..N."""
        row = self.rows[index - 1].astype(np.float32)
        return row if self.scales is None else row * self.scales[index - 1]

    def dense(self) -> np.ndarray:
        """Every vector, float32 [N, s] (a new array)."""
        rows = self.rows.astype(np.float32)
        return rows if self.scales is None else rows * self.scales[:, None]


def _table_part(entry, what: str, count: int, contents: dict, where) -> np.ndarray:
    """View of `count` values described by {"file", "offset", "dtype"}, checked against the file."""
    if not isinstance(entry, dict) or not all(k in entry for k in ("file", "offset", "dtype")):
        raise FmrlError(f"{where}: {what} must be an object with file, offset and dtype")
    name, offset, dtype = entry["file"], entry["offset"], entry["dtype"]
    if not isinstance(name, str) or name not in contents:
        raise FmrlError(f"{where}: {what} file {name!r} is not listed under files")
    if dtype not in ITEM_TABLE_DTYPES:
        raise FmrlError(f"{where}: {what} dtype {dtype!r} (expected {' or '.join(ITEM_TABLE_DTYPES)})")
    size = len(contents[name])
    nbytes = count * ITEM_TABLE_DTYPES[dtype].itemsize
    if not _is_int(offset) or offset < 0 or offset + nbytes > size:
        raise FmrlError(f"{where}: {what} at offset {offset!r} + {nbytes} bytes does not fit in {name} "
                        f"({size} bytes)")
    return np.frombuffer(contents[name], dtype=ITEM_TABLE_DTYPES[dtype], count=count, offset=offset)


def read_item_table(entry, contents: dict, num_items: int, granularity: int, where) -> ItemTable:
    """The manifest's `item_table` entry (docs/bundle-format.md), validated against the bundle's files
    `contents` {name: bytes} and read as views: row i-1 at offset + (i-1) * cols * itemsize."""
    if not isinstance(entry, dict) or not all(k in entry for k in ("rows", "cols", "scales")):
        raise FmrlError(f"{where}: item_table must be an object with file, offset, dtype, rows, cols, scales")
    if entry["rows"] != num_items or entry["cols"] != granularity or not (_is_int(entry["rows"])
                                                                          and _is_int(entry["cols"])):
        raise FmrlError(f"{where}: item_table is {entry['rows']!r} x {entry['cols']!r}; the bundle has "
                        f"{num_items} items of granularity {granularity}")
    flat = _table_part(entry, "item_table", num_items * granularity, contents, where)
    if entry["dtype"] == "float32":
        if entry["scales"] is not None:
            raise FmrlError(f"{where}: a float32 item_table has no scales (got {entry['scales']!r})")
        return ItemTable(flat.reshape(num_items, granularity))
    scales = _table_part(entry["scales"], "item_table scales", num_items, contents, where)
    if entry["scales"]["dtype"] != "float32":
        raise FmrlError(f"{where}: item_table scales must be float32")
    if not np.isfinite(scales).all():
        raise FmrlError(f"{where}: item_table scales hold NaN or infinity")
    return ItemTable(flat.reshape(num_items, granularity), scales)


def bundle_fingerprint(manifest: dict) -> bytes:
    """16 bytes: sha256 of the manifest's file hashes (program, items, cold start), so a session state
    saved with one bundle is refused by any bundle whose files differ."""
    files = json.dumps(manifest.get("files", {}), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"fmrl-bundle\0{files}".encode()).digest()[:16]


# A release "1.5.1", optionally a PEP 440 pre/post/dev suffix ("1.5.1rc1", "1.5.1.dev20260101") and a
# local part ("+cpu"). Anything else ("v99.0.0", "latest", "") is refused, never read as ().
_VERSION = re.compile(r"(\d+(?:\.\d+)*)(?:(?:a|b|rc|\.post|\.dev)\d*)*(?:\+[0-9A-Za-z.]+)?")
_SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_GRANULARITY = 1 << 16
MAX_BLOCKS = 1 << 10


def _version_tuple(text) -> tuple[int, ...] | None:
    """'1.5.1+cpu' -> (1, 5, 1), '1.5.1rc1' -> (1, 5, 1) (pre-release suffixes are ignored); None when
    `text` is not a version string."""
    m = _VERSION.fullmatch(text) if isinstance(text, str) else None
    return tuple(int(part) for part in m.group(1).split(".")) if m else None


def installed_executorch_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("executorch")
    except metadata.PackageNotFoundError:
        return None


def read_json_bytes(data: bytes, where: str, what: str):
    """Decode JSON bytes (UTF-8, BOM allowed); any failure, nesting too deep included, is an FmrlError."""
    try:
        return json.loads(data.decode("utf-8-sig"))
    except json.JSONDecodeError as e:
        raise FmrlError(f"{where}:{e.lineno}: invalid JSON in {what} ({e.msg})") from None
    except UnicodeDecodeError:
        raise FmrlError(f"{where}: {what} is not UTF-8") from None
    except (RecursionError, ValueError) as e:  # nesting too deep; an integer too long to convert
        reason = "nested too deeply" if isinstance(e, RecursionError) else str(e).split(";")[0]
        raise FmrlError(f"{where}: invalid JSON in {what} ({reason})") from None


def _read_contained(root: Path, name, where: Path) -> bytes:
    """The bytes of the bundle file `name`: a regular file inside `root`, no symbolic link on the way
    (fileio.contained_path); a bundle never points at other files."""
    file_path = contained_path(root, name, where)
    if not file_path.is_file():
        raise FmrlError(f"{root}: {name} is listed in the manifest but missing (partial bundle?)")
    try:  # O_NOFOLLOW: a link swapped in after the checks is refused by the OS
        fd = os.open(file_path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as e:
        raise FmrlError(f"{file_path}: cannot read ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        return f.read()


def _is_int(value) -> bool:
    return type(value) is int  # bool is an int subclass but never a count


def _check_int(manifest: dict, key: str, low: int, high: int, where: Path) -> int:
    value = manifest[key]
    if not _is_int(value) or not low <= value <= high:
        raise FmrlError(f"{where}: {key} must be an integer in [{low}, {high}], got {value!r}")
    return value


def check_manifest(manifest, where: Path) -> None:
    """Schema of a version-2 manifest (docs/bundle-format.md): every value the runtime uses has the
    right type and range before any of it is used (the item table's offsets are checked against the
    files in `read_item_table`). Unknown extra keys are allowed."""
    if not isinstance(manifest, dict):
        raise FmrlError(f"{where}: expected a JSON object")
    version = manifest.get("format_version")
    if _is_int(version) and version == 1:
        raise FmrlError(f"{where}: format_version 1: the program takes item indices, this runtime feeds item "
                        f"vectors (format 2); re-export the bundle with fmrl-sdk >= {__version__}")
    if not _is_int(version) or version not in SUPPORTED_FORMAT_VERSIONS:
        raise FmrlError(f"{where}: unsupported format_version {version!r} "
                        f"(this runtime reads {', '.join(map(str, SUPPORTED_FORMAT_VERSIONS))}); "
                        "upgrade fmrl-sdk or re-export the bundle")
    for key in ("granularity", "num_blocks", "k_max", "state", "files", "item_table"):
        if key not in manifest:
            raise FmrlError(f"{where}: missing key {key!r}")
    granularity = _check_int(manifest, "granularity", 1, MAX_GRANULARITY, where)
    blocks = _check_int(manifest, "num_blocks", 1, MAX_BLOCKS, where)
    _check_int(manifest, "k_max", 1, 1 << 31, where)
    if "num_items" in manifest:
        _check_int(manifest, "num_items", 1, (1 << 31) - 1, where)
        if manifest["k_max"] > manifest["num_items"]:
            raise FmrlError(f"{where}: k_max {manifest['k_max']} exceeds num_items {manifest['num_items']}")
    state = manifest["state"]
    shape = state.get("shape") if isinstance(state, dict) else None
    if shape != [2 * blocks, granularity] or not all(_is_int(n) for n in shape):
        raise FmrlError(f"{where}: state shape {shape!r} does not match [2 * num_blocks, granularity] = "
                        f"[{2 * blocks}, {granularity}]")
    if state.get("dtype", "float32") != "float32":
        raise FmrlError(f"{where}: state dtype {state.get('dtype')!r}; this runtime keeps float32 states")
    method = manifest.get("method", "forward")
    if not isinstance(method, str) or not method:
        raise FmrlError(f"{where}: method must be a non-empty string, got {method!r}")
    if "executorch_version" in manifest and _version_tuple(manifest["executorch_version"]) is None:
        raise FmrlError(f"{where}: executorch_version {manifest['executorch_version']!r} is not a version "
                        "(expected digits and dots, like 1.5.1)")
    files = manifest["files"]
    if not isinstance(files, dict):
        raise FmrlError(f"{where}: 'files' must map file names to sha256")
    for name, digest in files.items():
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest.lower()):
            raise FmrlError(f"{where}: sha256 of {name!r} must be 64 hex digits, got {str(digest)[:80]!r}")
    missing = [name for name in REQUIRED_FILES if name not in files]
    if missing:
        raise FmrlError(f"{where}: 'files' does not list {', '.join(missing)}")


def _finite_floats(values, count: int, what: str, where: Path) -> np.ndarray:
    """`count` finite float32 numbers from a JSON list, or FmrlError."""
    if not isinstance(values, list) or len(values) != count:
        raise FmrlError(f"{where}: {what} must be a list of {count} numbers")
    if not all(type(v) in (int, float) for v in values):
        raise FmrlError(f"{where}: {what} must hold numbers only")
    with np.errstate(over="ignore"):
        array = np.asarray(values, dtype=np.float64).astype(np.float32)
    if not np.isfinite(array).all():
        raise FmrlError(f"{where}: {what} holds NaN, infinity or a value beyond float32")
    return array


def check_cold_start(cold, num_items: int, k_max: int, granularity: int, where: Path) -> None:
    """cold_start.json: k_max distinct internal indices in [1, num_items], k_max finite scores and a
    finite hidden vector of `granularity` floats."""
    if not isinstance(cold, dict) or not all(k in cold for k in ("indices", "scores", "hidden")):
        raise FmrlError(f"{where}: expected indices, scores and hidden")
    indices = cold["indices"]
    if not isinstance(indices, list) or len(indices) != k_max:
        raise FmrlError(f"{where}: indices must be a list of k_max = {k_max} item indices")
    bad = next((i for i in indices if not _is_int(i) or not 1 <= i <= num_items), None)
    if bad is not None or len(set(indices)) != len(indices):
        what = f"index {bad!r} outside [1, {num_items}]" if bad is not None else "duplicate indices"
        raise FmrlError(f"{where}: {what}; the bundle has {num_items} items")
    _finite_floats(cold["scores"], k_max, "scores", where)
    _finite_floats(cold["hidden"], granularity, "hidden", where)


def load_bundle(path: str | Path, check_executorch_version: bool = True) -> Bundle:
    """Read a bundle and refuse it unless every check passes.

    Checks: the manifest is a JSON object whose values have the documented types and ranges
    (`check_manifest`); every file listed under `files` is a regular file inside the bundle folder (no
    symbolic links, nothing outside) and matches its sha256 (the program is hashed from the very bytes
    that will be loaded, so a file swapped after the check cannot slip in); the required files are
    listed; items.json and cold_start.json agree with the manifest and hold valid values; the exporting
    ExecuTorch is not newer than the installed one.
    """
    path = Path(path)
    if not path.is_dir():
        raise FmrlError(f"{path}: bundle directory not found")
    manifest_path = path / MANIFEST
    if not manifest_path.exists() and not manifest_path.is_symlink():
        raise FmrlError(f"{path}: not a bundle (no {MANIFEST}); the export may be partial")
    manifest = read_json_bytes(_read_contained(path, MANIFEST, manifest_path), str(manifest_path), "the manifest")
    check_manifest(manifest, manifest_path)
    contents: dict[str, bytes] = {}
    for name, expected in manifest["files"].items():
        data = _read_contained(path, name, manifest_path)
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected.lower():
            raise FmrlError(f"{path / name}: sha256 mismatch (manifest {expected[:12]}..., file {actual[:12]}...); "
                            "the bundle was modified or is incomplete")
        contents[name] = data
    if check_executorch_version and "executorch_version" in manifest:
        installed = installed_executorch_version()
        have = _version_tuple(installed)
        if have is not None and _version_tuple(manifest["executorch_version"]) > have:
            raise FmrlError(f"{manifest_path}: exported with ExecuTorch {manifest['executorch_version']}, newer "
                            f"than the installed {installed}; upgrade executorch")
    items_path, cold_path = path / "items.json", path / "cold_start.json"
    item_ids = read_json_bytes(contents["items.json"], str(items_path), "items.json")
    if not isinstance(item_ids, list) or not item_ids:
        raise FmrlError(f"{items_path}: expected a non-empty JSON list of item ids")
    if not all((type(i) is str and i != "") or _is_int(i) for i in item_ids):
        raise FmrlError(f"{items_path}: item ids must be non-empty strings or integers")
    item_ids = [str(i) for i in item_ids]
    if len(set(item_ids)) != len(item_ids):
        raise FmrlError(f"{items_path}: duplicate item ids")
    if "num_items" in manifest and manifest["num_items"] != len(item_ids):
        raise FmrlError(f"{manifest_path}: num_items {manifest['num_items']} but items.json lists {len(item_ids)}")
    if manifest["k_max"] > len(item_ids):
        raise FmrlError(f"{manifest_path}: k_max {manifest['k_max']} exceeds the {len(item_ids)} items")
    cold = read_json_bytes(contents["cold_start.json"], str(cold_path), "cold_start.json")
    check_cold_start(cold, len(item_ids), manifest["k_max"], manifest["granularity"], cold_path)
    table = read_item_table(manifest["item_table"], contents, len(item_ids), manifest["granularity"], manifest_path)
    return Bundle(path=path, manifest=manifest, item_ids=item_ids, cold_start=cold,
                  program=contents[PROGRAM_FILE], item_table=table, fingerprint=bundle_fingerprint(manifest))


def newest_bundle(root: str | Path = "bundles") -> Path:
    """The most recently written bundle under `root` (by manifest modification time)."""
    root = Path(root)
    found = [p.parent for p in root.glob(f"*/{MANIFEST}")] if root.is_dir() else []
    if (root / MANIFEST).exists():
        found.append(root)
    if not found:
        raise FmrlError(f"no bundle under {root}/ (make one with `fmrl-sdk export`, or pass --bundle)")
    return max(found, key=lambda p: (p / MANIFEST).stat().st_mtime)
