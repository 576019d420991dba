"""Device profiles (devices/*.toml) and the rule that picks the granularity a device gets.

A profile states what the recommender may use on a device class: memory (bytes), per-event latency
(ms), compute speed relative to the reference CPU (the 2-core x86 machine the SDK's latencies are
measured on), allowed weight precisions, threads and backend. Files are validated strictly: an
unknown, missing or ill-typed field is a one-line FmrlError naming the file and the field.

Choice rule (`choose`): among every trained size x allowed precision whose memory need fits the
budget and whose estimated latency (measured p50 on the reference CPU / speed_factor) fits the
latency budget, take the best validation NDCG@10; ties go to the smaller bundle.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import FmrlError
from ..fileio import package_data_dir, read_toml

DEVICES_DIR = package_data_dir("devices")  # the packaged copies of the checkout's devices/*.toml
PRECISIONS = ("fp32", "int8")
BACKENDS = ("xnnpack",)


@dataclass
class Profile:
    name: str
    description: str
    memory_budget_bytes: int      # RAM the recommender may use: bundle + state + runtime buffers
    latency_budget_ms: float      # per-event (one interaction -> new top-k) budget
    speed_factor: float           # device speed / reference CPU speed (2 x86 cores); 0.25 = 4x slower
    precisions: list[str]         # allowed weight precisions, from fp32 / int8
    threads: int                  # threads the runtime should give XNNPACK on the device
    backend: str                  # ExecuTorch backend ("xnnpack")
    source: str = ""

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items()}


MAX_MEMORY_BUDGET = 2**63 - 1   # bytes: a signed 64-bit count
# threads the runtime is given: the runtimes name no bound of their own (a C int in fmrl_open_options, any
# positive integer in Recommender.open), and no device class has more than a thousand cores
MAX_THREADS = 1024


def _positive_finite(value) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return 0 < float(value) < math.inf
    except OverflowError:   # an integer beyond a float's range
        return False


def _integer_in(least: int, most: int):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and least <= v <= most


# field -> (type and range check, description for error messages)
_FIELDS = {
    "name": (lambda v: isinstance(v, str) and v.strip() != "", "a non-empty string"),
    "description": (lambda v: isinstance(v, str), "a string"),
    "memory_budget_bytes": (_integer_in(1, MAX_MEMORY_BUDGET), f"an integer from 1 to {MAX_MEMORY_BUDGET:,} (bytes)"),
    "latency_budget_ms": (_positive_finite, "a positive finite number (milliseconds)"),
    "speed_factor": (_positive_finite, "a positive finite number (1.0 = the reference CPU)"),
    "precisions": (lambda v: isinstance(v, list) and len(v) > 0 and all(p in PRECISIONS for p in v)
                   and len(set(v)) == len(v), f"a non-empty list of distinct values from {list(PRECISIONS)}"),
    "threads": (_integer_in(1, MAX_THREADS), f"an integer from 1 to {MAX_THREADS:,}"),
    "backend": (lambda v: v in BACKENDS, f"one of {list(BACKENDS)}"),
}


def parse_profile(raw: dict, source: str) -> Profile:
    if not isinstance(raw, dict):
        raise FmrlError(f"{source}: expected a TOML table of profile fields")
    for key in raw:
        if key not in _FIELDS:
            raise FmrlError(f"{source}: unknown field {key!r} (known: {', '.join(_FIELDS)})")
    for key, (ok, what) in _FIELDS.items():
        if key not in raw:
            raise FmrlError(f"{source}: missing field {key!r} ({what})")
        if not ok(raw[key]):
            raise FmrlError(f"{source}: field {key!r} = {raw[key]!r} should be {what}")
    values = dict(raw)
    values["latency_budget_ms"] = float(values["latency_budget_ms"])
    values["speed_factor"] = float(values["speed_factor"])
    return Profile(**values, source=source)


def load_profile_file(path: str | Path) -> Profile:
    return parse_profile(read_toml(path, "profile file"), str(path))


def builtin_names(devices_dir: Path = DEVICES_DIR) -> list[str]:
    return sorted(p.stem for p in devices_dir.glob("*.toml"))


def resolve_profile(name_or_path: str, devices_dir: Path = DEVICES_DIR) -> Profile:
    """A built-in profile name (devices/<name>.toml) or the path of the user's own .toml file."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists() or "/" in name_or_path:
        return load_profile_file(path)
    builtin = devices_dir / f"{name_or_path}.toml"
    if builtin.is_file():
        return load_profile_file(builtin)
    raise FmrlError(f"unknown profile {name_or_path!r} (built-in: {', '.join(builtin_names(devices_dir))}; "
                    "or pass a .toml file)")


def all_profiles(devices_dir: Path = DEVICES_DIR) -> list[Profile]:
    return [load_profile_file(devices_dir / f"{n}.toml") for n in builtin_names(devices_dir)]


# ----------------------------------------------------------------------------------------------
# The choice


@dataclass
class Candidate:
    """One exportable variant of a run, with what it costs (from deploy_cache.json) and is worth."""

    size: int
    precision: str
    bundle_bytes: int
    state_bytes: int
    runtime_bytes: int          # measured RSS growth to load and run the .pte (XNNPACK packed weights...)
    step_p50_us: float          # measured on the reference CPU, ExecuTorch runtime
    val_ndcg10: float           # validation NDCG@10 at this size (and precision)

    @property
    def memory_bytes(self) -> int:
        return self.bundle_bytes + self.state_bytes + self.runtime_bytes

    def latency_ms(self, profile: Profile) -> float:
        return self.step_p50_us / 1000.0 / profile.speed_factor


@dataclass
class Choice:
    profile: Profile
    chosen: Candidate | None
    rows: list[dict] = field(default_factory=list)   # every candidate with fits/why
    reason: str = ""


def choose(profile: Profile, candidates: list[Candidate]) -> Choice:
    rows, fitting = [], []
    for c in sorted(candidates, key=lambda c: (c.size, c.precision)):
        allowed = c.precision in profile.precisions
        mem_ok = c.memory_bytes <= profile.memory_budget_bytes
        lat_ok = c.latency_ms(profile) <= profile.latency_budget_ms
        why = []
        if not allowed:
            why.append(f"{c.precision} not allowed")
        if not mem_ok:
            why.append(f"memory {c.memory_bytes:,} > {profile.memory_budget_bytes:,} B")
        if not lat_ok:
            why.append(f"latency {c.latency_ms(profile):.3f} > {profile.latency_budget_ms:g} ms")
        row = {"size": c.size, "precision": c.precision, "bundle_bytes": c.bundle_bytes,
               "state_bytes": c.state_bytes, "runtime_bytes": c.runtime_bytes, "memory_bytes": c.memory_bytes,
               "latency_ms": round(c.latency_ms(profile), 4), "val_NDCG@10": c.val_ndcg10,
               "fits": allowed and mem_ok and lat_ok, "why_not": "; ".join(why)}
        rows.append(row)
        if row["fits"]:
            fitting.append(c)
    if not fitting:
        allowed = [c for c in candidates if c.precision in profile.precisions]
        if not allowed:
            raise FmrlError(f"profile {profile.name}: no candidate in an allowed precision "
                            f"({', '.join(profile.precisions)})")
        small = min(allowed, key=lambda c: c.memory_bytes)
        fast = min(allowed, key=lambda c: c.step_p50_us)
        return Choice(profile, None, rows,
                      f"nothing fits: smallest memory need {small.memory_bytes:,} B (size {small.size} "
                      f"{small.precision}) vs budget {profile.memory_budget_bytes:,} B; fastest "
                      f"{fast.latency_ms(profile):.3f} ms (size {fast.size} {fast.precision}) vs budget "
                      f"{profile.latency_budget_ms:g} ms")
    best = min(fitting, key=lambda c: (-c.val_ndcg10, c.bundle_bytes))
    reason = (f"best validation NDCG@10 ({best.val_ndcg10:.4f}) of {len(fitting)} fitting candidate(s); "
              f"memory {best.memory_bytes:,}/{profile.memory_budget_bytes:,} B, "
              f"latency {best.latency_ms(profile):.3f}/{profile.latency_budget_ms:g} ms")
    return Choice(profile, best, rows, reason)


def require_choice(choice: Choice) -> Candidate:
    if choice.chosen is None:
        raise FmrlError(f"profile {choice.profile.name}: {choice.reason}")
    return choice.chosen
