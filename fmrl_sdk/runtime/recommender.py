"""Recommender (one opened bundle) and Session (one user's constant-size state).

    rec = Recommender.open("bundles/phone-lowmem")   # or "bundles/phone-lowmem.fmrlb", open_fd, open_bytes
    session = rec.new_session()
    session.observe("B0030HKJ8I")                  # external item id
    session.recommend(k=10)                         # [(item_id, score), ...], best first
    blob = session.to_bytes(); session = rec.restore(blob)
    blob = session.to_bytes(key=app_key); session = rec.restore(blob, key=app_key)   # tamper-proof

Thread safety: a Recommender may be shared by any number of threads. ExecuTorch method execution is
serialised by a lock inside the engine, and `add_items` swaps in a new immutable catalogue (sessions
read one consistent snapshot per call). A Session is NOT thread-safe: use one session per user and
never call the same session from two threads at once (or guard it yourself).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import FmrlError
from ..ids import id_problem, id_text
from . import seen
from .bundle import Bundle, load_bundle, load_bundle_bytes, load_bundle_fd

STATE_MAGIC = b"FMRS"
STATE_VERSION = 2   # 2: the last counter counts observed items added after export (was: seen-only events)
# magic, version, rows, size, k_max, bloom hashes, flags, bloom bytes, bundle fingerprint,
# observed, unknown, added
_HEADER = struct.Struct("<4sHHHHHHI16sQII")
_CRC = struct.Struct("<I")
UNKNOWN_POLICIES = ("skip", "raise")
FLAG_SIGNED = 1          # header flag: an HMAC-SHA256 tag (MAC_BYTES) follows the crc32
MAC_BYTES = 32
MIN_KEY_BYTES = 16
# Largest |value| accepted in a restored state or hidden vector. States of real models stay small (the
# test bundle: max |state| 2.3, |hidden| 9.3 over 5000 random events); a state of 1e30 makes the next
# step's scores NaN. Anything above this bound was not written by the runtime.
MAX_ABS_STATE = 1e8
# Largest |value| add_items accepts in an item vector (the test bundle's table: max 9.2; 1e4 everywhere
# still gives finite states and scores, 1e30 gives NaN). runtime.cpp's kMaxAbsVector is the same.
MAX_ABS_VECTOR = 1e4


def session_bytes(rows: int, size: int, k_max: int, bloom_bits: int = seen.DEFAULT_BITS) -> int:
    """Bytes of one saved session (`Recommender.state_bytes`, unsigned): header, LRU state [rows, size],
    hidden [size], cached top-k (k_max scores + indices), Bloom filter, crc32."""
    return _HEADER.size + 4 * (rows * size + size + 2 * k_max) + bloom_bits // 8 + _CRC.size


def _session_key(key) -> bytes:
    """The app's MAC key as bytes (at least MIN_KEY_BYTES), or FmrlError."""
    if not isinstance(key, (bytes, bytearray, memoryview)):
        raise FmrlError(f"a session key is bytes, got {type(key).__name__}")
    key = bytes(key)
    if len(key) < MIN_KEY_BYTES:
        raise FmrlError(f"a session key needs at least {MIN_KEY_BYTES} bytes (random, kept by the app), got {len(key)}")
    return key


def _mac(key: bytes, signed_part: bytes) -> bytes:
    return hmac.new(key, b"fmrl-session\0" + signed_part, hashlib.sha256).digest()


def _saturated(value, bits: int, name: str) -> int:
    """A counter for the state header: counters saturate at 2^bits - 1 instead of failing to save."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
        raise FmrlError(f"session counter {name} must be a non-negative integer, got {value!r}")
    return min(int(value), (1 << bits) - 1)


@dataclass(frozen=True)
class _Catalog:
    """Immutable snapshot of the item catalogue: the bundle's items, then items added after export."""

    ids: list                    # external id of internal index i at ids[i - 1]
    index: dict                  # external id -> internal index
    positions: np.ndarray        # [1 + N + M, hashes] Bloom bit positions (row 0 unused)
    added_vectors: np.ndarray | None   # [M, s] float32 or None
    added_indices: np.ndarray | None   # [M] int64: N + 1 .. N + M


class Recommender:
    """An opened, verified bundle plus its step engine. See the module docstring for thread safety."""

    def __init__(self, bundle: Bundle, engine, *, on_unknown: str = "skip", exclude_seen: bool = False,
                 bloom_bits: int = seen.DEFAULT_BITS, bloom_hashes: int = seen.DEFAULT_HASHES):
        _check_options(on_unknown, exclude_seen, bloom_bits, bloom_hashes)
        self.bundle, self.engine = bundle, engine
        self.on_unknown, self.exclude_seen = on_unknown, bool(exclude_seen)
        self.bloom_bits, self.bloom_hashes = bloom_bits, bloom_hashes
        self.state_shape = bundle.state_shape
        self.k_max = bundle.k_max
        cold = bundle.cold_start
        if len(cold["indices"]) != self.k_max:
            raise FmrlError(f"{bundle.path}/cold_start.json: {len(cold['indices'])} entries, manifest k_max {self.k_max}")
        self._cold_scores = np.asarray(cold["scores"], dtype=np.float32)
        self._cold_indices = np.asarray(cold["indices"], dtype=np.int64)
        self._cold_hidden = np.asarray(cold["hidden"], dtype=np.float32)
        ids = list(bundle.item_ids)
        positions = np.zeros((1 + len(ids), bloom_hashes), dtype=np.int64)
        positions[1:] = seen.item_positions(ids, bloom_bits, bloom_hashes)
        self._catalog = _Catalog(ids, {item: i + 1 for i, item in enumerate(ids)}, positions, None, None)
        self._add_lock = threading.Lock()
        rows, size = self.state_shape
        self.state_bytes = session_bytes(rows, size, self.k_max, bloom_bits)

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, *, on_unknown: str = "skip", exclude_seen: bool = False,
             bloom_bits: int = seen.DEFAULT_BITS, bloom_hashes: int = seen.DEFAULT_HASHES,
             engine=None, check_executorch_version: bool = True, threads: int | None = None) -> "Recommender":
        """Verify the bundle at `path`, a bundle directory or a one-file .fmrlb (format version, sha256 of
        every file), and load its program. A .fmrlb is memory-mapped (the item table is read in place).

        on_unknown: what `Session.observe` does with an item id the bundle does not know:
        'skip' (count it in `session.unknown`) or 'raise' (FmrlError).
        exclude_seen: default of `Session.recommend(exclude_seen=None)`.
        A bad option (on_unknown not one of UNKNOWN_POLICIES, exclude_seen not a bool, bloom_bits /
        bloom_hashes / threads not integers in range) is an FmrlError naming it (still a ValueError).
        engine: any object with the engine step signature (fmrl_sdk.runtime.engine) instead of the .pte.
        threads: size of ExecuTorch's CPU threadpool (process-wide; None keeps its default, one thread
        per core). One event is small: 1 thread is as fast at the median and has far shorter tails
        on a busy CPU (docs/runtime.md).
        """
        bundle = load_bundle(path, check_executorch_version=check_executorch_version)
        return cls._opened(bundle, engine, threads, on_unknown=on_unknown, exclude_seen=exclude_seen,
                           bloom_bits=bloom_bits, bloom_hashes=bloom_hashes)

    @classmethod
    def open_fd(cls, fd: int, offset: int, length: int, *, on_unknown: str = "skip", exclude_seen: bool = False,
                bloom_bits: int = seen.DEFAULT_BITS, bloom_hashes: int = seen.DEFAULT_HASHES, engine=None,
                check_executorch_version: bool = True, threads: int | None = None) -> "Recommender":
        """A one-file bundle (.fmrlb) stored at [offset, offset + length) of the open file `fd`, as Android's
        asset manager hands it out (AssetFileDescriptor). The pages holding it are memory-mapped read-only;
        `fd` may be closed afterwards. Other arguments as `open`."""
        bundle = load_bundle_fd(fd, offset, length, check_executorch_version)
        return cls._opened(bundle, engine, threads, on_unknown=on_unknown, exclude_seen=exclude_seen,
                           bloom_bits=bloom_bits, bloom_hashes=bloom_hashes)

    @classmethod
    def open_bytes(cls, buffer, *, on_unknown: str = "skip", exclude_seen: bool = False,
                   bloom_bits: int = seen.DEFAULT_BITS, bloom_hashes: int = seen.DEFAULT_HASHES, engine=None,
                   check_executorch_version: bool = True, threads: int | None = None) -> "Recommender":
        """A one-file bundle (.fmrlb) held in memory (bytes, bytearray, memoryview). A contiguous buffer is
        used in place (the item table is a view into it): keep it unchanged while the Recommender lives.
        Other arguments as `open`."""
        bundle = load_bundle_bytes(buffer, check_executorch_version)
        return cls._opened(bundle, engine, threads, on_unknown=on_unknown, exclude_seen=exclude_seen,
                           bloom_bits=bloom_bits, bloom_hashes=bloom_hashes)

    @classmethod
    def _opened(cls, bundle: Bundle, engine, threads, **options) -> "Recommender":
        _check_options(**options)   # before the program is loaded
        if threads is not None:
            _integer(threads, "threads")   # its range: program.set_threads
        if engine is None:
            from .engine import PteEngine

            engine = PteEngine(bundle.program, bundle.method, bundle.state_shape, bundle.k_max,
                               bundle.num_items, threads=threads)
        return cls(bundle, engine, **options)

    def close(self) -> None:
        if hasattr(self.engine, "close"):
            self.engine.close()

    def __enter__(self) -> "Recommender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- properties ----------------------------------------------------------------------------
    @property
    def manifest(self) -> dict:
        return self.bundle.manifest

    @property
    def granularity(self) -> int:
        return self.bundle.granularity

    @property
    def fingerprint(self) -> str:
        """Hex id of the bundle's files; a saved session state carries it."""
        return self.bundle.fingerprint.hex()

    @property
    def num_items(self) -> int:
        """Items inside the program (export time); added items come on top."""
        return self.bundle.num_items

    @property
    def item_ids(self) -> list[str]:
        """External ids of every recommendable item, in internal order (export-time items first)."""
        return list(self._catalog.ids)

    def item_index(self, item_id) -> int | None:
        """Internal index (1-based) of an external id, or None."""
        return self._catalog.index.get(item_id if type(item_id) is str else str(item_id))

    def resolve(self, item_id) -> int | None:
        """`item_index` under the unknown-item policy: None for an unknown id with on_unknown='skip',
        FmrlError with on_unknown='raise'. What `Session.observe` uses; callers that stream events
        (simulate) resolve ids here and pass the index to `Session.observe_index`."""
        index = self.item_index(item_id)
        if index is None and self.on_unknown == "raise":
            raise FmrlError(f"unknown item {item_id!r}: not in the bundle nor added with add_items")
        return index

    def item_vector(self, item_id) -> np.ndarray:
        """float32 [s] vector (a copy) of a known item: an export-time item's row of the bundle's item
        table (int8 bundles: row x scale), or the vector an added item was given. FmrlError if unknown."""
        index = self.item_index(item_id)
        if index is None:
            raise FmrlError(f"unknown item {item_id!r}: not in the bundle nor added with add_items")
        return self._vector(index, self._catalog)

    def _vector(self, index: int, catalog: _Catalog) -> np.ndarray:
        """Vector of internal index 1..N (item table) or N+1.. (`catalog`'s added items)."""
        n = self.bundle.num_items
        if index <= n:
            return self.bundle.item_table.vector(index)
        return catalog.added_vectors[index - n - 1].copy()

    def cold_start(self, k: int = 10) -> list[tuple[str, float]]:
        """The recommendation before any interaction (cold_start.json, merged with added items)."""
        return self.new_session().recommend(k, exclude_seen=False)

    # -- sessions ------------------------------------------------------------------------------
    def new_session(self) -> "Session":
        return Session(self, np.zeros(self.state_shape, dtype=np.float32), self._cold_hidden,
                       self._cold_scores, self._cold_indices, bytearray(self.bloom_bits // 8))

    def restore(self, data: bytes, key: bytes | None = None) -> "Session":
        """A session from `Session.to_bytes()`; refuses (FmrlError) anything but an intact state of this
        bundle: wrong type, bad magic or version, crc32 mismatch, another bundle's fingerprint, another
        shape or seen filter, and values the runtime never writes (NaN, infinity, |x| > MAX_ABS_STATE in
        the state or hidden vector, NaN scores, cached item indices outside [1, N] or repeated).

        key: the app's secret (bytes, >= 16) when states are stored where users can edit them. The crc32
        only catches accidents; with a key the state must carry a matching HMAC-SHA256
        (`to_bytes(key=...)`), so an edited or forged state is refused. A signed state needs the key, and
        a key refuses an unsigned state (stripping the tag is not a way around it).
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise FmrlError(f"a session state is bytes from Session.to_bytes(), got {type(data).__name__}")
        data = bytes(data)
        if len(data) < _HEADER.size + _CRC.size or data[:4] != STATE_MAGIC:
            raise FmrlError("not an fmrl-sdk session state (bad magic or too short)")
        (_, version, rows, size, k_max, hashes, flags, bloom_bytes, fingerprint,
         observed, unknown, added) = _HEADER.unpack_from(data)
        if version != STATE_VERSION:
            raise FmrlError(f"session state version {version}; this runtime reads {STATE_VERSION}")
        if flags & ~FLAG_SIGNED:
            raise FmrlError(f"session state has unknown flags {flags:#x}")
        if key is not None:
            key = _session_key(key)
            if not flags & FLAG_SIGNED:
                raise FmrlError("session state is not signed but a key was given (replaced or edited?); "
                                "start a new session")
            if len(data) < _HEADER.size + _CRC.size + MAC_BYTES or not hmac.compare_digest(
                    _mac(key, data[:-MAC_BYTES]), data[-MAC_BYTES:]):
                raise FmrlError("session state signature does not match the key (edited, or signed with "
                                "another key); start a new session")
            data = data[:-MAC_BYTES]
        elif flags & FLAG_SIGNED:
            raise FmrlError("session state is signed: pass the app's key to restore(data, key=...)")
        (crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
        if zlib.crc32(data[:-_CRC.size]) != crc:
            raise FmrlError("session state is corrupt (checksum mismatch)")
        if fingerprint != self.bundle.fingerprint:
            raise FmrlError(f"session state belongs to another bundle (fingerprint {fingerprint.hex()}, "
                            f"this bundle {self.fingerprint}); start a new session")
        if (rows, size) != tuple(self.state_shape) or k_max != self.k_max:
            raise FmrlError(f"session state shape {rows}x{size}/k_max {k_max} does not match the bundle")
        if bloom_bytes * 8 != self.bloom_bits or hashes != self.bloom_hashes:
            raise FmrlError(f"session state uses a {bloom_bytes * 8}-bit/{hashes}-hash seen filter; this "
                            f"Recommender was opened with {self.bloom_bits}/{self.bloom_hashes}")
        if len(data) != self.state_bytes:
            raise FmrlError(f"session state has {len(data)} bytes, expected {self.state_bytes} (truncated?)")
        offset = _HEADER.size

        def take(dtype, count):
            nonlocal offset
            arr = np.frombuffer(data, dtype=dtype, count=count, offset=offset).copy()
            offset += arr.nbytes
            return arr

        state = take("<f4", rows * size).reshape(rows, size).astype(np.float32)
        hidden = take("<f4", size).astype(np.float32)
        scores = take("<f4", k_max).astype(np.float32)
        indices = take("<i4", k_max).astype(np.int64)
        bloom = bytearray(data[offset:offset + bloom_bytes])
        self._check_state_values(state, hidden, scores, indices)
        session = Session(self, state, hidden, scores, indices, bloom)
        session.observed, session.unknown, session.added = observed, unknown, added
        return session

    def _check_state_values(self, state, hidden, scores, indices) -> None:
        """FmrlError unless the arrays hold values the runtime itself could have written."""
        for name, values in (("state", state), ("hidden vector", hidden)):
            if not np.isfinite(values).all() or np.abs(values).max() > MAX_ABS_STATE:
                raise FmrlError(f"session state: its {name} holds NaN, infinity or |values| above "
                                f"{MAX_ABS_STATE:g}; start a new session")
        if not np.isfinite(scores).all():
            raise FmrlError("session state: cached scores hold NaN or infinity; start a new session")
        n = self.bundle.num_items
        if indices.min() < 1 or indices.max() > n or len(np.unique(indices)) != len(indices):
            raise FmrlError(f"session state: cached item indices outside [1, {n}] or repeated; start a new session")

    # -- items added after export --------------------------------------------------------------
    def add_items(self, ids, vectors) -> int:
        """Make items created after export recommendable: `vectors` [M, >= s] (first s dims are used,
        the nested model's size-s item vector is the prefix of the full one), from `fmrl-sdk item-vectors`.

        An added item is a new row of the item table: observing it feeds its vector to the program, so the
        state advances exactly as for an export-time item with the same vector (`session.added` counts
        such events), and it is scored as hidden @ vector against the step's `hidden` output, merged into
        the program's top-k. Adding an id again replaces its vector. Returns the number of new ids.

        Refused (FmrlError), before anything changes: an id that breaks fmrl_sdk/ids.py's rule (not a str
        or an int, empty, holding NUL, longer than MAX_ID_BYTES UTF-8 bytes); vectors that are not finite
        numbers or hold a value with |x| > MAX_ABS_VECTOR (real item vectors are far smaller; a 1e30 one
        turns states and scores to NaN). The C runtime's fmrl_add_items refuses the same, in the same words.
        """
        ids = [_checked_id(item, f"add_items: ids[{n}]") for n, item in enumerate(ids)]
        try:
            vectors = np.asarray(vectors, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise FmrlError(f"add_items: vectors must be numbers ({e})") from None
        size = self.granularity
        if vectors.ndim != 2 or vectors.shape[0] != len(ids):
            raise FmrlError(f"add_items: expected vectors [{len(ids)}, {size}], got {list(vectors.shape)}")
        if vectors.shape[1] < size:
            raise FmrlError(f"add_items: vectors have {vectors.shape[1]} dims, the bundle needs {size}")
        if not np.isfinite(vectors).all():
            raise FmrlError("add_items: vectors contain NaN or infinity")
        if vectors.size and np.abs(vectors[:, :size]).max() > MAX_ABS_VECTOR:
            raise FmrlError(f"add_items: vectors hold values with |x| above {MAX_ABS_VECTOR:g} (item vectors of "
                            "real models are far smaller)")
        vectors = vectors.astype(np.float32)
        if len(set(ids)) != len(ids):
            raise FmrlError("add_items: duplicate ids")
        vectors = np.ascontiguousarray(vectors[:, :size])
        with self._add_lock:
            old = self._catalog
            n = self.num_items
            clash = [i for i in ids if old.index.get(i, n + 1) <= n]
            if clash:
                raise FmrlError(f"add_items: {clash[0]!r} is already in the bundle ({len(clash)} such ids); "
                                "export-time items cannot be replaced")
            all_ids, index = list(old.ids), dict(old.index)
            added = old.added_vectors.copy() if old.added_vectors is not None else np.zeros((0, size), np.float32)
            new_ids = [i for i in ids if i not in index]
            if new_ids:
                for i in new_ids:
                    all_ids.append(i)
                    index[i] = len(all_ids)
                added = np.concatenate([added, np.zeros((len(new_ids), size), np.float32)])
            rows = np.array([index[i] - n - 1 for i in ids], dtype=np.int64)
            added[rows] = vectors
            positions = np.concatenate(
                [old.positions, seen.item_positions(new_ids, self.bloom_bits, self.bloom_hashes)])
            self._catalog = _Catalog(all_ids, index, positions, added,
                                     np.arange(n + 1, n + 1 + added.shape[0], dtype=np.int64))
        return len(new_ids)

    def add_items_from_file(self, path: str | Path) -> int:
        """Add the items of an `fmrl-sdk item-vectors` file: .safetensors (tensor `vectors` [M, S], the ids
        as a JSON list under the metadata key `ids`) or .json ({"ids": [...], "vectors": [[...]]}).
        S must be at least the bundle's granularity (the vectors' first s dims are used)."""
        from .vectors import read_item_vectors

        return self.add_items(*read_item_vectors(path))


class _ArgumentError(FmrlError, ValueError):
    """A bad argument or option: an FmrlError (one line in the CLI), still a ValueError as before."""


def _integer(value, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise _ArgumentError(f"{name} must be an integer, got {type(value).__name__} {value!r:.80}")
    return int(value)


def _checked_id(value, name: str) -> str:
    """An id given by the caller as the runtime keys it (fmrl_sdk/ids.py: a str, or an int's digits; numpy
    strings and integers count as theirs), or _ArgumentError: `name` followed by why it is not an id."""
    if isinstance(value, (np.str_, np.integer)):
        value = value.item()
    problem = id_problem(value)
    if problem is not None:
        raise _ArgumentError(f"{name} {problem}")
    return id_text(value)


def _check_options(on_unknown, exclude_seen, bloom_bits, bloom_hashes) -> None:
    """_ArgumentError for an option of `Recommender.open` outside what it accepts."""
    if on_unknown not in UNKNOWN_POLICIES:
        raise _ArgumentError(f"on_unknown must be one of {UNKNOWN_POLICIES}, got {on_unknown!r:.80}")
    if not isinstance(exclude_seen, (bool, np.bool_)):
        raise _ArgumentError(f"exclude_seen must be True or False, got {exclude_seen!r:.80}")
    bits, hashes = _integer(bloom_bits, "bloom_bits"), _integer(bloom_hashes, "bloom_hashes")
    try:
        seen.check_params(bits, hashes)
    except ValueError as e:
        raise _ArgumentError(str(e)) from None


class Session:
    """One user's state: LRU state, the last step's top-k_max and hidden vector, a Bloom filter of seen
    items and three counters. Its size is constant (`Recommender.state_bytes`) whatever the history
    length. Not thread-safe (see the module docstring)."""

    __slots__ = ("_rec", "_state", "_hidden", "_scores", "_indices", "_bloom", "observed", "unknown", "added")

    def __init__(self, rec: Recommender, state, hidden, scores, indices, bloom):
        self._rec = rec
        self._state, self._hidden, self._scores, self._indices, self._bloom = state, hidden, scores, indices, bloom
        self.observed = 0     # events that advanced the state
        self.unknown = 0      # events skipped: item unknown to the bundle (on_unknown='skip')
        self.added = 0        # of the observed events, those of items added after export (add_items)

    def observe(self, item_id) -> bool:
        """Feed one interaction (external item id). True if the state advanced. An item_id that is not an id
        (fmrl_sdk/ids.py: not a str or an int, empty, holding NUL, too long) is an FmrlError, not an unknown item."""
        index = self._rec.resolve(_checked_id(item_id, "observe: item id"))
        if index is None:
            self.unknown += 1
            return False
        return self.observe_index(index)

    def observe_index(self, index: int) -> bool:
        """`observe` by internal index (1..N for export-time items, above N for added items)."""
        index = _integer(index, "observe_index: index")
        rec = self._rec
        catalog = rec._catalog
        positions = catalog.positions
        if not 0 < index < len(positions):
            raise FmrlError(f"internal item index {index} out of range [1, {len(positions) - 1}]")
        x = rec._vector(index, catalog)
        self._scores, self._indices, self._state, self._hidden = rec.engine.step(x, self._state)
        seen.add(self._bloom, positions[index].tolist())   # after the step: a failed step changes nothing
        self.observed += 1
        if index > rec.bundle.num_items:
            self.added += 1
        return True

    def top(self, k: int = 10, exclude_seen: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(internal indices [<= k], scores [<= k]), best first: the program's top-k_max merged with
        added items, seen items removed if asked. Fewer than k come back only when exclude_seen
        removed more than k_max - k of the candidates."""
        rec = self._rec
        k = _integer(k, "top: k")
        if not 1 <= k <= rec.k_max:
            raise _ArgumentError(f"top: k must be in [1, {rec.k_max}] (the bundle's k_max), got {k}")
        if exclude_seen is None:
            exclude_seen = rec.exclude_seen
        catalog = rec._catalog
        indices, scores = self._indices, self._scores
        if catalog.added_vectors is not None:
            indices = np.concatenate([indices, catalog.added_indices])
            scores = np.concatenate([scores, catalog.added_vectors @ self._hidden])
            order = np.argsort(-scores, kind="stable")
            indices, scores = indices[order], scores[order]
        if exclude_seen:
            keep = ~seen.contains_many(self._bloom, catalog.positions[indices])
            indices, scores = indices[keep], scores[keep]
        return indices[:k], scores[:k]

    def recommend(self, k: int = 10, exclude_seen: bool | None = None) -> list[tuple[str, float]]:
        """[(item_id, score)] best first. Before any observe this is the bundle's cold start.
        exclude_seen=None uses the Recommender's default."""
        k = _integer(k, "recommend: k")
        if not 1 <= k <= self._rec.k_max:
            raise _ArgumentError(f"recommend: k must be in [1, {self._rec.k_max}] (the bundle's k_max), got {k}")
        if exclude_seen is not None and not isinstance(exclude_seen, (bool, np.bool_)):
            raise _ArgumentError(f"recommend: exclude_seen must be True, False or None, got {exclude_seen!r:.80}")
        indices, scores = self.top(k, exclude_seen)
        ids = self._rec._catalog.ids
        return [(ids[i - 1], s) for i, s in zip(indices.tolist(), scores.tolist())]

    @property
    def hidden(self) -> np.ndarray:
        """The user vector after the last event (copy)."""
        return self._hidden.copy()

    def to_bytes(self, key: bytes | None = None) -> bytes:
        """Versioned, crc32-checked, bundle-bound serialisation (`Recommender.state_bytes` bytes).

        key: the app's secret (bytes, >= 16): appends an HMAC-SHA256 tag (MAC_BYTES more bytes), so that
        `restore(data, key=key)` refuses any edit. Counters saturate at their field's maximum
        (observed: 2^64 - 1, unknown and added: 2^32 - 1).
        """
        rec = self._rec
        rows, size = rec.state_shape
        if key is not None:
            key = _session_key(key)
        head = _HEADER.pack(STATE_MAGIC, STATE_VERSION, rows, size, rec.k_max, rec.bloom_hashes,
                            FLAG_SIGNED if key is not None else 0, len(self._bloom), rec.bundle.fingerprint,
                            _saturated(self.observed, 64, "observed"), _saturated(self.unknown, 32, "unknown"),
                            _saturated(self.added, 32, "added"))
        body = b"".join((head,
                         self._state.astype("<f4", copy=False).tobytes(),
                         self._hidden.astype("<f4", copy=False).tobytes(),
                         self._scores.astype("<f4", copy=False).tobytes(),
                         self._indices.astype("<i4").tobytes(),
                         bytes(self._bloom)))
        body += _CRC.pack(zlib.crc32(body))
        return body + _mac(key, body) if key is not None else body
