"""Atomic file and directory writes, hashing, paths inside a folder, TOML (no pickle anywhere). JSON is
read by fmrl_sdk.jsonio (read_json and read_jsonl_objects are re-exported here for older imports)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import threading
from pathlib import Path
from typing import Any, Iterator

from .jsonio import read_json, read_jsonl_objects  # noqa: F401 (re-exported)


def package_data_dir(name: str) -> Path:
    """A data folder shipped inside the fmrl_sdk package ("recipes", "devices"), found through
    importlib.resources so that it works from a wheel install as well as from a checkout."""
    from importlib.resources import files

    return Path(str(files("fmrl_sdk").joinpath(name)))


_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process umask (read from /proc where possible: setting it to read it races other threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _mode_like_open(path: Path, base: int = 0o666) -> int:
    """Permission bits a plain open()/mkdir() would give `path`: an existing file keeps its own, a new
    one gets `base` less the umask (mkstemp/mkdtemp alone would give 0600/0700)."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return base & ~current_umask()


def check_outputs_are_not_inputs(outputs: dict, inputs: dict) -> None:
    """FmrlError when an output path is one of the inputs or another output (same path, through a
    symbolic link, or a hard link to the same file), before anything is written. outputs/inputs:
    {label: path or None}, labels as the user knows them (e.g. "--out", "the stream")."""
    from .errors import FmrlError

    def same(a: Path, b: Path) -> bool:
        if a.resolve() == b.resolve():
            return True
        try:
            return os.path.samefile(a, b)
        except OSError:  # one of them does not exist yet
            return False

    written = list(outputs.items())
    for position, (out_label, out) in enumerate(written):
        if out is None:
            continue
        for in_label, source in [*written[position + 1:], *inputs.items()]:
            if source is not None and same(Path(out), Path(source)):
                raise FmrlError(f"{out}: {out_label} is {in_label} ({source}); writing it would destroy the "
                                "input: choose another path")


def check_writable(outputs: dict, folders: dict | None = None) -> None:
    """FmrlError when an output cannot be written, before any work: for each {label: path or None} of
    `outputs` (files), the path must not be a folder and the nearest existing folder above it must be
    writable (missing folders between are created later); `folders` ({label: path or None}, e.g. a state
    dir) the same, except that the path, when it exists, must be a writable folder itself."""
    from .errors import FmrlError

    def nearest_folder(path: Path) -> Path:
        parent = path.parent
        while not os.path.lexists(parent) and parent != parent.parent:
            parent = parent.parent
        return parent

    for label, path, is_folder in [*((k, v, False) for k, v in outputs.items()),
                                   *((k, v, True) for k, v in (folders or {}).items())]:
        if path is None:
            continue
        path = Path(path)
        if is_folder and path.exists():
            folder = path
            if not path.is_dir():
                raise FmrlError(f"{path}: {label} cannot be written (it is not a folder)")
        else:
            if not is_folder and path.is_dir():
                raise FmrlError(f"{path}: {label} cannot be written (it is a folder)")
            folder = nearest_folder(path)
        if not folder.is_dir():
            raise FmrlError(f"{path}: {label} cannot be written ({folder} is not a folder)")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise FmrlError(f"{path}: {label} cannot be written (folder {folder} is not writable)")


def contained_path(root: str | Path, name, where) -> Path:
    """`root/name` for a file name read from a manifest, or FmrlError (naming `where`) when `name` is not
    a plain relative path, when any part of it is a symbolic link, or when it resolves outside `root`.
    Existence is not checked."""
    from .errors import FmrlError

    root = Path(root)
    if not isinstance(name, str) or not name or "\0" in name or "\\" in name:
        raise FmrlError(f"{where}: file name {str(name)[:80]!r} is not a plain relative path")
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts:
        raise FmrlError(f"{where}: file name {name[:80]!r} points outside {root}")
    current = root
    for part in rel.parts:
        current = current / part
        if current.is_symlink():
            raise FmrlError(f"{current}: is a symbolic link; refusing to follow it (files must lie inside {root})")
    if not current.resolve().is_relative_to(root.resolve()):
        raise FmrlError(f"{where}: file name {name[:80]!r} points outside {root}")
    return current


# errno values that mean "the file system cannot take this write" (as opposed to a bad input file)
WRITE_ERRNOS = frozenset(getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EFBIG", "EROFS", "EACCES", "EPERM",
                                                            "EIO") if hasattr(errno, name))


def write_error_reason(exc: BaseException) -> str | None:
    """strerror of a failed write (OSError with a WRITE_ERRNOS errno, or a safetensors SafetensorError that
    wraps one, e.g. "I/O error: No space left on device (os error 28)"); None for anything else."""
    if isinstance(exc, OSError):
        return (exc.strerror or os.strerror(exc.errno)) if exc.errno in WRITE_ERRNOS else None
    if type(exc).__name__ == "SafetensorError":
        match = re.search(r"\(os error (\d+)\)", str(exc))
        if match and int(match.group(1)) in WRITE_ERRNOS:
            return os.strerror(int(match.group(1)))
    return None


def cannot_write(path, exc: BaseException, inside: str | Path | None = None):
    """The WriteError `PATH: cannot write (REASON)` for a failed write of `path`, or None when `exc` is not one
    (write_error_reason). inside: an OSError naming a file elsewhere (an input that could not be read) is not
    one. A WriteError about a file written inside `inside` is renamed to `path`."""
    from .errors import WriteError

    if isinstance(exc, WriteError):
        within = inside is not None and str(exc.path).startswith(str(inside))
        return WriteError(path, exc.reason) if within else None
    if isinstance(exc, OSError) and exc.filename is not None and inside is not None \
            and not str(exc.filename).startswith(str(inside)):
        return None
    reason = write_error_reason(exc)
    return None if reason is None else WriteError(path, reason)


def raise_as_write_error(path, exc: BaseException, inside: str | Path | None = None):
    """Raise `exc` as `PATH: cannot write (REASON)` when it is a failed write of `path` (cannot_write), else
    as it is: what every writer does after removing its temporary."""
    error = cannot_write(path, exc, inside=inside)
    if error is None:
        raise exc
    raise error from None


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return True  # not a pid we wrote: keep
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists (another user's)
        return True
    return True


_PARTIAL_TAIL = re.compile(r"(\d+)(?:-\d+)?")


def remove_stale_partials(target: str | Path, suffix: str) -> list[Path]:
    """Remove `.NAME.PID.SUFFIX` / `.NAME.PID-N.SUFFIX` siblings of `target` (the temporaries of atomic writes,
    see _partial_sibling) whose PID is no longer a live process: writes cut short by a kill. A temporary of a
    live process is never touched. Returns what was removed."""
    target = Path(target)
    head = f".{target.name}."
    removed = []
    try:
        candidates = list(target.parent.glob(f"{glob_escape(head)}*{glob_escape(suffix)}"))
    except OSError:
        return removed
    for path in candidates:
        middle = path.name[len(head):len(path.name) - len(suffix)]
        match = _PARTIAL_TAIL.fullmatch(middle)
        if not match or _pid_alive(int(match.group(1))):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        removed.append(path)
    return removed


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def _partial_sibling(target: Path, suffix: str, make) -> Path:
    """Create (with `make(path)`, which must fail with FileExistsError when it exists) the hidden sibling
    `.NAME.PID.SUFFIX` of `target` (`.NAME.PID-N.SUFFIX` when this process already has one), after removing
    stale ones of dead processes."""
    remove_stale_partials(target, suffix)
    pid, n = os.getpid(), 0
    while True:
        path = target.with_name(f".{target.name}.{pid}{f'-{n}' if n else ''}{suffix}")
        try:
            make(path)
            return path
        except FileExistsError:
            n += 1


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb", **kwargs):
    """Open a temporary sibling of `path` (`.NAME.PID.tmp`) for writing; it replaces `path` only if the block
    succeeds, so readers see either the old file or the whole new one. The file ends up with the permissions
    a plain open() would give it (existing file: unchanged; new file: 0666 less the umask). A failed write
    (full disk, read-only file system, no permission, ...) removes the temporary and raises FmrlError
    `PATH: cannot write (REASON)`; temporaries left by killed processes are removed first."""
    path = Path(path)
    fd = None
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        holder = {}

        def make(candidate: Path) -> None:
            holder["fd"] = os.open(candidate, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)

        tmp = _partial_sibling(path, ".tmp", make)
        fd = holder["fd"]
        os.fchmod(fd, _mode_like_open(path))
        f = os.fdopen(fd, mode, **kwargs)
    except OSError as e:
        if fd is not None:
            os.close(fd)
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise_as_write_error(path, e)
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise_as_write_error(path, e, inside=tmp)


def atomic_save_file(path: str | Path, tmp: str | Path, save) -> None:
    """`save(tmp)` (e.g. safetensors' save_file), fsync, rename to `path`; on failure the temporary is removed
    and a failed write (full disk, ...) becomes WriteError `PATH: cannot write (REASON)`."""
    path, tmp = Path(path), Path(tmp)
    try:
        save(str(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise_as_write_error(path, e, inside=tmp)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically (see atomic_open)."""
    with atomic_open(path) as f:
        f.write(data)


def read_toml(path: str | Path, kind: str, max_bytes: int = 1 << 20) -> dict:
    """The table of a TOML file (a recipe, a device profile: `kind` names it in messages), under the rules of
    every reader: UTF-8 whatever the locale, a byte order mark at the start allowed; at most `max_bytes` (1 MiB:
    a recipe or a profile is a few hundred bytes), refused before parsing; TOML's own rules (a key or a table
    set twice is refused); a file with no keys is refused. Every failure is one FmrlError line, `FILE:LINE:
    what` where the line is known: not found, a folder, unreadable, too large, not UTF-8, invalid TOML."""
    from .errors import FmrlError

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    path = Path(path)
    try:
        if not path.exists():
            raise FmrlError(f"{path}: {kind} not found")
        if not path.is_file():
            raise FmrlError(f"{path}: {kind} is a folder, not a file" if path.is_dir() else f"{path}: {kind} is "
                            "not a regular file")
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise FmrlError(f"{path}: cannot read the {kind} ({e.strerror or e})") from None
    if len(data) > max_bytes:
        raise FmrlError(f"{path}: larger than {max_bytes:,} bytes (the most a {kind} may hold)")
    data = data.removeprefix(b"\xef\xbb\xbf")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise FmrlError(f"{path}:{line}: not UTF-8 text") from None
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:  # "MESSAGE (at line L, column C)" or "MESSAGE (at end of document)"
        where = re.fullmatch(r"(.*) \(at (?:line (\d+), column (\d+)|(end of document))\)", str(e), re.DOTALL)
        if where is None:
            raise FmrlError(f"{path}: invalid TOML ({e})") from None
        message, line, column, at_end = where.groups()
        line = text.rstrip().count("\n") + 1 if at_end else line
        place = "at the end of the file" if at_end else f"column {column}"
        raise FmrlError(f"{path}:{line}: invalid TOML ({message}, {place})") from None
    except RecursionError:
        raise FmrlError(f"{path}: invalid TOML (nested too deeply)") from None
    except ValueError as e:  # an integer with more digits than Python converts
        raise FmrlError(f"{path}: invalid TOML ({str(e).split(';')[0]})") from None
    if not table:
        raise FmrlError(f"{path}: empty {kind} (no keys)")
    return table


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


@contextlib.contextmanager
def atomic_directory(final: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory (`.NAME.PID.partial`); rename it to `final` only if the block
    succeeds.

    On any exception the temporary directory is removed and `final` is left untouched; a failed write into
    it (full disk, ...: OSError or SafetensorError) becomes FmrlError `FINAL: cannot write (REASON)`.
    Temporary directories left by killed processes are removed first. The directory gets the permissions
    mkdir() would give it (0777 less the umask; an existing one keeps its own).
    """
    final = Path(final)
    tmp = None
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = _partial_sibling(final, ".partial", lambda candidate: candidate.mkdir(mode=0o700))
        tmp.chmod(_mode_like_open(final, 0o777))
    except OSError as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise_as_write_error(final, e)
    try:
        yield tmp
        if final.exists():
            if not overwrite:
                raise FileExistsError(f"{final} already exists")
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise_as_write_error(final, e, inside=tmp)


def exclusive_lock(path: Path, what, program: str) -> int | None:
    """An exclusive flock on the file `path` (created if needed) for as long as the caller works on `what`
    (the OS drops it when the process dies, SIGKILL included); FmrlError "WHAT: in use by another PROGRAM
    (pid N)" when another process holds it. Returns the open descriptor (None where there is no flock).
    The file holds "PID PROGRAM" of its holder. Release with `release_lock`."""
    from .errors import FmrlError

    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return None
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.pread(fd, 128, 0).decode(errors="replace")
            except OSError:
                holder = ""
            os.close(fd)
            pid, _, who = holder.partition(" ")
            raise FmrlError(f"{what}: in use by another {who.strip() or program} (pid {pid.strip() or '?'})") \
                from None
        try:  # the holder before us may have removed the file between our open and our flock: lock anew
            held, named = os.fstat(fd), os.stat(path)
            if (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    with contextlib.suppress(OSError):  # who holds it is a courtesy: a full disk must not break the lock
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {program}\n".encode(), 0)
    return fd


def release_lock(path: Path, fd: int | None) -> None:
    if fd is not None:
        path.unlink(missing_ok=True)  # while still held: a waiting process then locks a fresh file
        os.close(fd)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_outputs(inputs: dict, files: dict | None = None, folders: dict | None = None,
                  replaced: dict | None = None) -> None:
    """Every check a command's outputs get before any work; FmrlError `PATH: ...` for the first that fails.
    inputs, files (outputs that are files), folders (outputs that are folders): {label: path or None}.
    replaced: {label: (path, marker)}, folders that the write replaces whole (atomic_directory with
    overwrite: a bundle, a features folder). Each output must not be an input or another output
    (check_outputs_are_not_inputs) and must be writable (check_writable); a replaced folder must not hold an
    input, and when it exists and is not empty it must hold `marker` (the file every earlier output of its
    kind has), so that a user's other folder is never replaced."""
    from .errors import FmrlError

    replaced = {label: spec for label, spec in (replaced or {}).items() if spec[0] is not None}
    folders = {**(folders or {}), **{label: path for label, (path, _) in replaced.items()}}
    check_outputs_are_not_inputs({**(files or {}), **folders}, inputs)
    check_writable(files or {}, folders)
    for label, (path, marker) in replaced.items():
        path = Path(path)
        for in_label, source in inputs.items():
            if source is not None and Path(source).resolve().is_relative_to(path.resolve()):
                raise FmrlError(f"{path}: {label} holds {in_label} ({source}); replacing it would destroy the "
                                "input: choose another path")
        if path.is_dir() and any(path.iterdir()) and not (path / marker).is_file():
            raise FmrlError(f"{path}: {label} is a folder that is not empty and holds no {marker} (not an earlier "
                            "output); it is never replaced: choose another path")


@contextlib.contextmanager
def output_lock(target: str | Path, program: str) -> Iterator[None]:
    """Hold an exclusive lock (exclusive_lock) on `.NAME.lock` beside the output `target` for the block: a second
    PROGRAM writing the same output gets FmrlError "TARGET: in use by another PROGRAM (pid N)" at once. The
    folders above `target` are created (check_outputs first) and removed again at the end when they are still
    empty (nothing written); a lock that cannot be created is WriteError `TARGET: cannot write (REASON)`. The
    lock file is removed at the end."""
    target = Path(target)
    lock = target.with_name(f".{target.name}.lock")
    created = [folder for folder in (target.parent, *target.parent.parents) if not os.path.lexists(folder)]

    def remove_created() -> None:
        for folder in created:   # deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = exclusive_lock(lock, target, program)
    except BaseException as e:
        remove_created()
        if isinstance(e, OSError):
            raise_as_write_error(target, e)
        raise
    try:
        yield
    finally:
        release_lock(lock, fd)
        remove_created()
