"""Reading and verifying a bundle directory (docs/bundle-format.md). No torch, no ExecuTorch here."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import FmrlError

SUPPORTED_FORMAT_VERSIONS = (1,)
REQUIRED_FILES = ("model.pte", "items.json", "cold_start.json")
MANIFEST = "manifest.json"


@dataclass
class Bundle:
    """A verified bundle: manifest, item ids, cold-start output and the program bytes."""

    path: Path
    manifest: dict
    item_ids: list[str]
    cold_start: dict
    program: bytes = field(repr=False)
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


def bundle_fingerprint(manifest: dict) -> bytes:
    """16 bytes: sha256 of the manifest's file hashes (program, items, cold start), so a session state
    saved with one bundle is refused by any bundle whose files differ."""
    files = json.dumps(manifest.get("files", {}), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"fmrl-bundle\0{files}".encode()).digest()[:16]


def _version_tuple(text: str) -> tuple[int, ...]:
    """'1.5.1+cpu' -> (1, 5, 1); pre-release suffixes are ignored."""
    out = []
    for part in str(text).split("+")[0].split("."):
        m = re.match(r"\d+", part)
        if not m:
            break
        out.append(int(m.group()))
    return tuple(out)


def installed_executorch_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("executorch")
    except metadata.PackageNotFoundError:
        return None


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_bytes())
    except json.JSONDecodeError as e:
        raise FmrlError(f"{path}:{e.lineno}: invalid JSON in {what} ({e.msg})") from None
    except OSError as e:
        raise FmrlError(f"{path}: cannot read {what} ({e.strerror})") from None


def load_bundle(path: str | Path, check_executorch_version: bool = True) -> Bundle:
    """Read a bundle and refuse it unless every check passes.

    Checks: the manifest exists and its `format_version` is known; every file listed under `files`
    exists and matches its sha256 (the program is hashed from the very bytes that will be loaded, so
    a file swapped after the check cannot slip in); the required files are listed; items.json and
    cold_start.json agree with the manifest; the exporting ExecuTorch is not newer than the installed one.
    """
    path = Path(path)
    if not path.is_dir():
        raise FmrlError(f"{path}: bundle directory not found")
    manifest_path = path / MANIFEST
    if not manifest_path.exists():
        raise FmrlError(f"{path}: not a bundle (no {MANIFEST}); the export may be partial")
    manifest = _read_json(manifest_path, "the manifest")
    if not isinstance(manifest, dict):
        raise FmrlError(f"{manifest_path}: expected a JSON object")
    version = manifest.get("format_version")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise FmrlError(f"{manifest_path}: unsupported format_version {version!r} "
                        f"(this runtime reads {', '.join(map(str, SUPPORTED_FORMAT_VERSIONS))}); "
                        "upgrade fmrl-sdk or re-export the bundle")
    for key in ("granularity", "num_blocks", "k_max", "state", "files"):
        if key not in manifest:
            raise FmrlError(f"{manifest_path}: missing key {key!r}")
    files = manifest["files"]
    if not isinstance(files, dict):
        raise FmrlError(f"{manifest_path}: 'files' must map file names to sha256")
    missing = [name for name in REQUIRED_FILES if name not in files]
    if missing:
        raise FmrlError(f"{manifest_path}: 'files' does not list {', '.join(missing)}")
    contents: dict[str, bytes] = {}
    for name, expected in files.items():
        file_path = path / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise FmrlError(f"{manifest_path}: file name {name!r} escapes the bundle")
        if not file_path.is_file():
            raise FmrlError(f"{path}: {name} is listed in the manifest but missing (partial bundle?)")
        data = file_path.read_bytes()
        actual = hashlib.sha256(data).hexdigest()
        if actual != str(expected).lower():
            raise FmrlError(f"{file_path}: sha256 mismatch (manifest {str(expected)[:12]}..., file {actual[:12]}...); "
                            "the bundle was modified or is incomplete")
        contents[name] = data
    if check_executorch_version and manifest.get("executorch_version"):
        installed = installed_executorch_version()
        if installed is not None and _version_tuple(manifest["executorch_version"]) > _version_tuple(installed):
            raise FmrlError(f"{manifest_path}: exported with ExecuTorch {manifest['executorch_version']}, newer "
                            f"than the installed {installed}; upgrade executorch")
    try:
        item_ids = json.loads(contents["items.json"])
        cold = json.loads(contents["cold_start.json"])
    except json.JSONDecodeError as e:
        raise FmrlError(f"{path}: invalid JSON in items.json or cold_start.json ({e.msg})") from None
    if not isinstance(item_ids, list) or not item_ids:
        raise FmrlError(f"{path / 'items.json'}: expected a non-empty JSON list of item ids")
    item_ids = [str(i) for i in item_ids]
    if len(set(item_ids)) != len(item_ids):
        raise FmrlError(f"{path / 'items.json'}: duplicate item ids")
    if "num_items" in manifest and int(manifest["num_items"]) != len(item_ids):
        raise FmrlError(f"{manifest_path}: num_items {manifest['num_items']} but items.json lists {len(item_ids)}")
    shape = manifest["state"].get("shape") if isinstance(manifest["state"], dict) else None
    if not (isinstance(shape, list) and len(shape) == 2 and shape[1] == manifest["granularity"]
            and shape[0] == 2 * manifest["num_blocks"]):
        raise FmrlError(f"{manifest_path}: state shape {shape} does not match 2 * num_blocks x granularity")
    if not isinstance(cold, dict) or not all(k in cold for k in ("indices", "scores", "hidden")):
        raise FmrlError(f"{path / 'cold_start.json'}: expected indices, scores and hidden")
    if len(cold["hidden"]) != manifest["granularity"] or len(cold["indices"]) != len(cold["scores"]):
        raise FmrlError(f"{path / 'cold_start.json'}: shapes do not match the manifest")
    return Bundle(path=path, manifest=manifest, item_ids=item_ids, cold_start=cold,
                  program=contents["model.pte"], fingerprint=bundle_fingerprint(manifest))


def newest_bundle(root: str | Path = "bundles") -> Path:
    """The most recently written bundle under `root` (by manifest modification time)."""
    root = Path(root)
    found = [p.parent for p in root.glob(f"*/{MANIFEST}")] if root.is_dir() else []
    if (root / MANIFEST).exists():
        found.append(root)
    if not found:
        raise FmrlError(f"no bundle under {root}/ (make one with `fmrl-sdk export`, or pass --bundle)")
    return max(found, key=lambda p: (p / MANIFEST).stat().st_mtime)
