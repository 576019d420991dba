#!/usr/bin/env bash
# Cross-build fmrl_runtime + fmrl_replay for aarch64 (the CPU phones have) against the manylinux aarch64
# executorch wheel, replay an x86-exported bundle under qemu user-mode emulation, and compare every event's
# top-10 ids (and scores) with the x86 build of the same code.
#
#   scripts/cross_aarch64.sh BUNDLE STREAM.jsonl [WORKDIR]        (WORKDIR default: build/aarch64)
#
# Needs: the project's venv active (python, pip, executorch), cmake, a native C++ compiler, and Debian's
#   apt-get install g++-aarch64-linux-gnu qemu-user
# When a JDK is present (javac on PATH) it also cross-builds the Java binding, WORKDIR/arm/libfmrl_jni.so
# (-DFMRL_WITH_JNI=ON; JNI headers are the same for every CPU, the host JDK's are used); not run under qemu.
# Writes WORKDIR/parity.json: events with identical top-10 ids and order, max |score diff| and the relative
# tolerance (max |diff| / max |score|). Exit 0 only when every event's top-10 ids agree, in order, except
# swaps of items whose scores differ by no more than that tolerance (ties). Emulated timings mean nothing.
set -euo pipefail

if [[ $# -lt 2 ]]; then
  echo "usage: $0 BUNDLE STREAM.jsonl [WORKDIR]" >&2
  exit 2
fi
BUNDLE=$(realpath "$1")
STREAM=$(realpath "$2")
WORK=$(realpath -m "${3:-build/aarch64}")
HERE=$(cd "$(dirname "$0")/.." && pwd)
SRC="$HERE/fmrl_sdk/runtime/cpp"
SYSROOT=/usr/aarch64-linux-gnu
ET_VERSION=$(python -c "from importlib.metadata import version; print(version('executorch').split('+')[0])")
PYVER=$(python -c "import sys; print(f'{sys.version_info.major}.{sys.version_info.minor}')")

for tool in aarch64-linux-gnu-g++ qemu-aarch64 cmake; do
  command -v "$tool" >/dev/null || { echo "error: $tool not found (apt-get install g++-aarch64-linux-gnu qemu-user cmake)" >&2; exit 2; }
done
mkdir -p "$WORK"

# 1. the aarch64 executorch wheel (same version as the venv's), unpacked
if [[ ! -f "$WORK/et-aarch64/executorch/lib/libexecutorch.so" ]]; then
  rm -rf "$WORK/wheel" "$WORK/et-aarch64"
  pip download --no-deps --only-binary=:all: --python-version "$PYVER" \
      --platform manylinux2014_aarch64 --platform manylinux_2_28_aarch64 \
      "executorch==$ET_VERSION" -d "$WORK/wheel" >/dev/null
  python -m zipfile -e "$WORK"/wheel/executorch-*.whl "$WORK/et-aarch64"
fi
ET_ARM="$WORK/et-aarch64/executorch"

# 2. cross toolchain file and build
cat > "$WORK/toolchain.cmake" <<EOF
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_FIND_ROOT_PATH $SYSROOT)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
EOF
JNI_FLAG=-DFMRL_WITH_JNI=OFF
if command -v javac >/dev/null; then
  JNI_FLAG=-DFMRL_WITH_JNI=ON
fi
cmake -S "$SRC" -B "$WORK/arm" -DCMAKE_TOOLCHAIN_FILE="$WORK/toolchain.cmake" -DCMAKE_BUILD_TYPE=Release \
      -Dexecutorch_DIR="$ET_ARM/lib/cmake/executorch" "$JNI_FLAG" >"$WORK/arm-configure.log"
cmake --build "$WORK/arm" -j2 >"$WORK/arm-build.log"
ET_X86=$(python -c "import executorch; print(executorch.__path__[0])")
cmake -S "$SRC" -B "$WORK/x86" -DCMAKE_PREFIX_PATH="$ET_X86" -DCMAKE_BUILD_TYPE=Release >"$WORK/x86-configure.log"
cmake --build "$WORK/x86" -j2 >"$WORK/x86-build.log"
file "$WORK/arm/fmrl_replay" "$WORK/arm/libfmrl_runtime.so" | sed "s|$WORK/||"
if [[ $JNI_FLAG == -DFMRL_WITH_JNI=ON ]]; then
  file "$WORK/arm/libfmrl_jni.so" | sed "s|$WORK/||"
else
  echo "javac not found: the Java binding (libfmrl_jni) was not cross-built" >&2
fi

# 3. the same replay on both; aarch64 under qemu (its libraries from the cross sysroot)
"$WORK/x86/fmrl_replay" --bundle "$BUNDLE" --stream "$STREAM" --report "$WORK/x86-report.json" \
    --out "$WORK/x86-recs.jsonl" --threads 1 2>/dev/null
QEMU_LD_PREFIX=$SYSROOT qemu-aarch64 "$WORK/arm/fmrl_replay" --bundle "$BUNDLE" --stream "$STREAM" \
    --report "$WORK/arm-report.json" --out "$WORK/arm-recs.jsonl" --threads 1 2>/dev/null

# 4. compare every event: the same top-10 ids in the same order; an order difference counts as a tie only
#    when the swapped items' scores differ by no more than the measured score tolerance
python - "$WORK" <<'EOF'
import json, sys
from pathlib import Path

work = Path(sys.argv[1])
x86 = [json.loads(line) for line in open(work / "x86-recs.jsonl")]
arm = [json.loads(line) for line in open(work / "arm-recs.jsonl")]
assert len(x86) == len(arm), (len(x86), len(arm))
diff = max((abs(p - q) for a, b in zip(x86, arm) for p, q in zip(a["scores"], b["scores"])), default=0.0)
scale = max((abs(p) for a in x86 for p in a["scores"]), default=1.0)
same_order = [a["recs"] == b["recs"] for a, b in zip(x86, arm)]
same_set = [set(a["recs"]) == set(b["recs"]) for a, b in zip(x86, arm)]


def tie_only(a, b) -> bool:
    """Every position where the orders differ holds x86 scores within `diff` of the ARM score there."""
    return set(a["recs"]) == set(b["recs"]) and all(
        abs(a["scores"][a["recs"].index(item)] - b["scores"][r]) <= diff
        for r, item in enumerate(b["recs"]) if a["recs"][r] != item)


ties = [i for i, ok in enumerate(same_order) if not ok and tie_only(x86[i], arm[i])]
rx, ra = (json.loads((work / f"{n}-report.json").read_text()) for n in ("x86", "arm"))
result = {"events": len(x86), "events_same_top10_ids_and_order": sum(same_order),
          "events_same_top10_id_sets": sum(same_set), "order_differences_that_are_ties": len(ties),
          "tie_events": [{"event": i, "x86": x86[i]["recs"], "aarch64": arm[i]["recs"],
                          "x86_scores": x86[i]["scores"], "aarch64_scores": arm[i]["scores"]} for i in ties[:5]],
          "max_abs_score_diff": diff, "max_abs_score": scale, "relative_tolerance": diff / scale if scale else 0.0,
          "online_x86": rx["online"], "online_aarch64": ra["online"],
          "bad_lines_equal": rx["bad_lines"] == ra["bad_lines"]}
(work / "parity.json").write_text(json.dumps(result, indent=2) + "\n")
print(json.dumps({k: v for k, v in result.items() if k != "tie_events"}, indent=2))
passed = sum(same_order) + len(ties) == len(x86) and result["bad_lines_equal"]
print("PASS" if passed else "FAIL", file=sys.stderr)
sys.exit(0 if passed else 1)
EOF
