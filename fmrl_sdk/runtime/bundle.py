"""Reading and verifying a bundle (docs/bundle-format.md, format 3): a directory, a one-file `.fmrlb`
(opened by path, by fd + offset + length, or from a buffer; memory-mapped, the item table is a view into
the mapping). No torch, no ExecuTorch here: numpy and the standard library only."""

from __future__ import annotations

import hashlib
import mmap
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import FmrlError
from ..fileio import contained_path
from ..ids import MAX_ID_BYTES, holds_surrogate, id_problem, id_text
from ..jsonio import read_json_bytes  # the JSON rules of every file the SDK reads

FORMAT_VERSION = 3
SUPPORTED_FORMAT_VERSIONS = (FORMAT_VERSION,)
PROGRAM_FILE = "model.pte"
REQUIRED_FILES = (PROGRAM_FILE, "items.json", "cold_start.json")
MANIFEST = "manifest.json"
FINGERPRINT_PREFIX = b"fmrl-bundle-v3\0"

# ---- Limits: the one place in this runtime. The C runtime has the same values, and the same messages, in
# fmrl_sdk/runtime/cpp/src/bundle.cpp (namespace `limits`); tests/test_bundle_format.py checks that both
# accept and refuse tests/golden/edge_manifests.json identically. The session header (recommender.py
# _HEADER) stores rows (2 * num_blocks), granularity and k_max as uint16 and item indices as int32.
MAX_GRANULARITY = 65535
MAX_K_MAX = 65535
MAX_BLOCKS = 1024                 # 2 * MAX_BLOCKS <= 65535 state rows
MAX_NUM_ITEMS = (1 << 31) - 1

# ---- One-file bundle (NAME.fmrlb), container version 1: magic, u32 LE version, u32 LE entry count, then
# count entries of 64 bytes (u64 LE offset, u64 LE size, 48-byte NUL-padded UTF-8 name), then the parts,
# each at a multiple of 64 bytes. Same layout and checks in cpp/src/bundle.cpp.
FILE_SUFFIX = ".fmrlb"
FILE_MAGIC = b"FMRLBNDL"
FILE_VERSION = 1
FILE_ALIGN = 64
FILE_MAX_ENTRIES = 64
FILE_NAME_BYTES = 48
_FILE_HEAD = struct.Struct("<8sII")
_FILE_ENTRY = struct.Struct("<QQ48s")


@dataclass
class Bundle:
    """A verified bundle: manifest, item ids, cold-start output, the program bytes and the item table
    (views into the bundle's bytes)."""

    path: Path
    manifest: dict
    item_ids: list[str]
    cold_start: dict
    program: bytes | memoryview = field(repr=False)   # a view into a one-file bundle's bytes
    item_table: ItemTable | None = field(default=None, repr=False)
    fingerprint: bytes = b""           # 16 bytes, identifies the bundle's files (see `bundle_fingerprint`)
    mapping: object = field(default=None, repr=False)   # the mmap a one-file bundle's views point into

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


def bundle_fingerprint(manifest_bytes) -> bytes:
    """16 bytes: sha256(b"fmrl-bundle-v3\\0" + manifest.json's bytes as stored)[:16]. The manifest lists the
    sha256 of every other file, so a session state saved with one bundle is refused by any bundle whose
    files or manifest fields differ. The C runtime computes it from the same bytes (cpp/src/bundle.cpp)."""
    return hashlib.sha256(FINGERPRINT_PREFIX + bytes(manifest_bytes)).digest()[:16]


# A release "1.5.1", optionally a PEP 440 pre/post/dev suffix ("1.5.1rc1", "1.5.1.dev20260101") and a
# local part ("+cpu"). Anything else ("v99.0.0", "latest", "") is refused, never read as ().
_VERSION = re.compile(r"(\d+(?:\.\d+)*)(?:(?:a|b|rc|\.post|\.dev)\d*)*(?:\+[0-9A-Za-z.]+)?")
_SHA256 = re.compile(r"[0-9a-f]{64}")


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
    """Schema of a version-3 manifest (docs/bundle-format.md): every value the runtime uses has the
    right type and range before any of it is used (the item table's offsets are checked against the
    files in `read_item_table`). Unknown extra keys are allowed."""
    if not isinstance(manifest, dict):
        raise FmrlError(f"{where}: expected a JSON object")
    version = manifest.get("format_version")
    if _is_int(version) and 1 <= version < FORMAT_VERSION:
        raise FmrlError(f"{where}: format_version {version}: written by an older fmrl-sdk; re-export the bundle "
                        f"with fmrl-sdk export (format {FORMAT_VERSION})")
    if not _is_int(version) or version not in SUPPORTED_FORMAT_VERSIONS:
        raise FmrlError(f"{where}: unsupported format_version {version!r} "
                        f"(this runtime reads {', '.join(map(str, SUPPORTED_FORMAT_VERSIONS))}); "
                        "upgrade fmrl-sdk or re-export the bundle")
    for key in ("granularity", "num_blocks", "k_max", "state", "files", "item_table"):
        if key not in manifest:
            raise FmrlError(f"{where}: missing key {key!r}")
    granularity = _check_int(manifest, "granularity", 1, MAX_GRANULARITY, where)
    blocks = _check_int(manifest, "num_blocks", 1, MAX_BLOCKS, where)
    _check_int(manifest, "k_max", 1, MAX_K_MAX, where)
    if "num_items" in manifest:
        _check_int(manifest, "num_items", 1, MAX_NUM_ITEMS, where)
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


def check_item_ids(values, where: Path) -> list[str]:
    """items.json: a non-empty list of distinct ids under fmrl_sdk/ids.py's rule (that of every reader and of
    add_items), returned as the strings they are keyed by (an integer as its digits). The first entry that
    breaks the rule is named, "item K" being the K-th entry (the item's internal index)."""
    if not isinstance(values, list) or not values:
        raise FmrlError(f"{where}: expected a non-empty JSON list of item ids")
    if _distinct_text_ids(values):
        return values
    first: dict[str, int] = {}
    for k, value in enumerate(values, 1):
        problem = id_problem(value)
        if problem is not None:
            raise FmrlError(f"{where}: item {k}: id {problem}")
        j = first.setdefault(id_text(value), k)
        if j != k:
            raise FmrlError(f"{where}: item {k}: duplicate id (item {j} has it too)")
    return list(first)


def _distinct_text_ids(values: list) -> bool:
    """check_item_ids' fast path, for what export writes: distinct strings that are ids, checked in bulk. False
    when one is not (or is not a string): check_item_ids then looks entry by entry."""
    if not all(type(v) is str for v in values) or len(set(values)) != len(values):
        return False
    joined = "".join(values)
    if "" in values or "\0" in joined or holds_surrogate(joined):
        return False
    longest = MAX_ID_BYTES // 4   # no string of up to this many characters is over the limit in UTF-8
    return max(map(len, values)) <= longest or \
        all(len(v.encode("utf-8")) <= MAX_ID_BYTES for v in values if len(v) > longest)


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
    """Read a bundle, a directory or a one-file `.fmrlb`, and refuse it unless every check passes.

    Checks: the manifest is a JSON object whose values have the documented types and ranges
    (`check_manifest`); every file listed under `files` is a regular file inside the bundle folder (no
    symbolic links, nothing outside), or a part of the one-file bundle, and matches its sha256 (the program
    is hashed from the very bytes that will be loaded, so a file swapped after the check cannot slip in);
    the required files are listed; items.json and cold_start.json agree with the manifest and hold valid
    values; the exporting ExecuTorch is not newer than the installed one.
    """
    path = Path(path)
    if path.is_file():
        return load_bundle_fd(None, 0, None, check_executorch_version, where=path)
    if not path.is_dir():
        raise FmrlError(f"{path}: bundle directory not found")
    manifest_path = path / MANIFEST
    if not manifest_path.exists() and not manifest_path.is_symlink():
        raise FmrlError(f"{path}: not a bundle (no {MANIFEST}); the export may be partial")
    manifest_bytes = _read_contained(path, MANIFEST, manifest_path)
    return _verify(path, manifest_bytes, lambda name: _read_contained(path, name, manifest_path),
                   check_executorch_version)


def load_bundle_fd(fd: int | None, offset: int, length: int | None, check_executorch_version: bool = True,
                   where: str | Path | None = None) -> Bundle:
    """A one-file bundle at [offset, offset + length) of the open file `fd` (what Android's asset manager
    hands out), or the whole file `where` when fd is None. The containing pages are memory-mapped
    read-only; the item table is a view into the mapping."""
    owned = fd is None
    if owned:
        try:  # O_NOFOLLOW: the path was checked to be a file; a link swapped in is refused
            fd = os.open(where, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError as e:
            raise FmrlError(f"{where}: cannot read ({e.strerror})") from None
    try:
        try:
            size = os.fstat(fd).st_size
        except (OSError, TypeError, ValueError, OverflowError):
            raise FmrlError(f"fd {fd!r}: not an open file descriptor") from None
        if owned:
            length = size
        else:
            where = f"fd {fd} [{offset}, +{length}]"
            if not (_is_int(offset) and _is_int(length)) or offset < 0 or length < 0 or offset + length > size:
                raise FmrlError(f"{where}: offset {offset} + length {length} lies outside the file ({size} bytes)")
        if length < _FILE_HEAD.size:
            raise FmrlError(f"{where}: not a one-file bundle (bad magic or too short: {length} bytes)")
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        try:
            mapping = mmap.mmap(fd, offset - start + length, access=mmap.ACCESS_READ, offset=start)
        except (OSError, ValueError) as e:
            raise FmrlError(f"{where}: cannot map the file ({e})") from None
    finally:
        if owned:
            os.close(fd)
    view = memoryview(mapping)[offset - start:offset - start + length]
    return load_bundle_bytes(view, check_executorch_version, where=where, mapping=mapping)


def load_bundle_bytes(buffer, check_executorch_version: bool = True, where: str | Path = "<buffer>",
                      mapping=None) -> Bundle:
    """A one-file bundle held in `buffer` (bytes, bytearray, memoryview, mmap...). Used in place when it is a
    contiguous buffer (the item table is a view into it): the caller must not change it afterwards."""
    try:
        view = memoryview(buffer)
    except TypeError:
        raise FmrlError(f"{where}: expected bytes, bytearray or memoryview, got {type(buffer).__name__}") from None
    if not view.c_contiguous:
        view = memoryview(view.tobytes())
    view = view.cast("B") if view.format != "B" or view.ndim != 1 else view
    parts = read_container(view, where)
    manifest_where = Path(where) / MANIFEST
    names = set(parts) - {MANIFEST}

    def part(name: str):
        if name not in parts:
            raise FmrlError(f"{manifest_where}: {name} is listed in the manifest but not in the bundle file")
        return parts[name]

    def check_names(manifest: dict) -> None:
        extra = sorted(names - set(manifest["files"]))
        if extra:
            raise FmrlError(f"{where}: the bundle file holds {', '.join(extra)}, not listed in the manifest")

    bundle = _verify(Path(where), parts[MANIFEST], part, check_executorch_version, check_names)
    bundle.mapping = mapping if mapping is not None else buffer
    return bundle


def pack_bundle_file(manifest_bytes: bytes, files: dict) -> bytes:
    """The one-file bundle of manifest.json (`manifest_bytes`, stored as is: the fingerprint is computed
    over them) and the manifest's `files` {name: bytes}: header, index, then every part at a multiple of
    FILE_ALIGN bytes (zero padding), manifest.json first, the others in the order given."""
    parts = [(MANIFEST, bytes(manifest_bytes)), *((name, bytes(data)) for name, data in files.items())]
    if len(parts) > FILE_MAX_ENTRIES:
        raise FmrlError(f"a bundle file holds at most {FILE_MAX_ENTRIES} parts, got {len(parts)}")

    def aligned(n: int) -> int:
        return -(-n // FILE_ALIGN) * FILE_ALIGN

    offset = aligned(_FILE_HEAD.size + len(parts) * _FILE_ENTRY.size)
    index, layout = [], []
    for name, data in parts:
        encoded = name.encode("utf-8")
        if not encoded or len(encoded) > FILE_NAME_BYTES or b"\0" in encoded or "/" in name or ".." in name:
            raise FmrlError(f"bundle file part name {name!r}: 1..{FILE_NAME_BYTES} UTF-8 bytes, no NUL, '/' or '..'")
        index.append(_FILE_ENTRY.pack(offset, len(data), encoded))
        layout.append((offset, data))
        offset = aligned(offset + len(data))
    out = bytearray(layout[-1][0] + len(layout[-1][1]))
    out[:_FILE_HEAD.size] = _FILE_HEAD.pack(FILE_MAGIC, FILE_VERSION, len(parts))
    out[_FILE_HEAD.size:_FILE_HEAD.size + len(index) * _FILE_ENTRY.size] = b"".join(index)
    for at, data in layout:
        out[at:at + len(data)] = data
    return bytes(out)


def read_container(data: memoryview, where) -> dict:
    """The parts of a one-file bundle {name: memoryview}, manifest.json first, after checking the header
    and every index entry (docs/bundle-format.md). cpp/src/bundle.cpp read_container: same checks, same
    messages."""
    size = len(data)
    if size < _FILE_HEAD.size or bytes(data[:len(FILE_MAGIC)]) != FILE_MAGIC:
        raise FmrlError(f"{where}: not a one-file bundle (bad magic or too short: {size} bytes)")
    _, version, count = _FILE_HEAD.unpack_from(data, 0)
    if version != FILE_VERSION:
        raise FmrlError(f"{where}: bundle file container version {version}; this runtime reads {FILE_VERSION}")
    if not 1 <= count <= FILE_MAX_ENTRIES:
        raise FmrlError(f"{where}: the bundle file lists {count} entries (expected 1..{FILE_MAX_ENTRIES})")
    index_end = _FILE_HEAD.size + count * _FILE_ENTRY.size
    if index_end > size:
        raise FmrlError(f"{where}: truncated bundle file ({size} bytes; its index needs {index_end})")
    parts, spans = {}, []
    for i in range(count):
        offset, length, raw = _FILE_ENTRY.unpack_from(data, _FILE_HEAD.size + i * _FILE_ENTRY.size)
        name_bytes = raw.rstrip(b"\0")
        try:
            name = name_bytes.decode("utf-8")
        except UnicodeDecodeError:
            name = None
        if not name or b"\0" in name_bytes or "/" in name or ".." in name:
            raise FmrlError(f"{where}: entry {i}: bad name (expected non-empty UTF-8 without NUL, '/' or '..')")
        if name in parts:
            raise FmrlError(f"{where}: entry {i}: {name} appears twice")
        if offset % FILE_ALIGN or offset < index_end:
            raise FmrlError(f"{where}: entry {i} ({name}): offset {offset} is not a multiple of {FILE_ALIGN} "
                            f"after the index ({index_end} bytes)")
        if offset > size or length > size - offset:
            raise FmrlError(f"{where}: entry {i} ({name}): {length} bytes at offset {offset} lie outside the "
                            f"file ({size} bytes; truncated?)")
        parts[name] = data[offset:offset + length]
        spans.append((offset, length, name))
    if spans[0][2] != MANIFEST:
        raise FmrlError(f"{where}: the first entry is {spans[0][2]}, expected {MANIFEST}")
    spans.sort()
    for (a, a_len, a_name), (b, _, b_name) in zip(spans, spans[1:]):
        if a + a_len > b:
            raise FmrlError(f"{where}: parts {a_name} and {b_name} overlap")
    return parts


def _verify(path: Path, manifest_bytes, read_file, check_executorch_version: bool, check_names=None) -> Bundle:
    """The checks every form of bundle gets: `manifest_bytes` is manifest.json as stored, `read_file(name)`
    the bytes (or a buffer) of a listed file."""
    manifest_path = path / MANIFEST
    manifest = read_json_bytes(manifest_bytes, str(manifest_path), "the manifest")
    check_manifest(manifest, manifest_path)
    if check_names is not None:
        check_names(manifest)
    contents: dict = {}
    for name, expected in manifest["files"].items():
        data = read_file(name)
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
    item_ids = check_item_ids(read_json_bytes(contents["items.json"], str(items_path), "items.json"), items_path)
    if "num_items" in manifest and manifest["num_items"] != len(item_ids):
        raise FmrlError(f"{manifest_path}: num_items {manifest['num_items']} but items.json lists {len(item_ids)}")
    if manifest["k_max"] > len(item_ids):
        raise FmrlError(f"{manifest_path}: k_max {manifest['k_max']} exceeds the {len(item_ids)} items")
    cold = read_json_bytes(contents["cold_start.json"], str(cold_path), "cold_start.json")
    check_cold_start(cold, len(item_ids), manifest["k_max"], manifest["granularity"], cold_path)
    table = read_item_table(manifest["item_table"], contents, len(item_ids), manifest["granularity"], manifest_path)
    # a one-file bundle's program stays a view too, until program.load_program (the one loader) hands it
    # to ExecuTorch
    return Bundle(path=path, manifest=manifest, item_ids=item_ids, cold_start=cold, program=contents[PROGRAM_FILE],
                  item_table=table, fingerprint=bundle_fingerprint(manifest_bytes))


def newest_bundle(root: str | Path = "bundles") -> Path:
    """The most recently written bundle under `root` (by manifest modification time)."""
    root = Path(root)
    found = [p.parent for p in root.glob(f"*/{MANIFEST}")] if root.is_dir() else []
    if (root / MANIFEST).exists():
        found.append(root)
    if not found:
        raise FmrlError(f"no bundle under {root}/ (make one with `fmrl-sdk export`, or pass --bundle)")
    return max(found, key=lambda p: (p / MANIFEST).stat().st_mtime)
