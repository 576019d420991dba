import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED_BEAUTY = ROOT.parent / "shared" / "data" / "amazon-beauty"


def write_small_interactions(path: Path) -> Path:
    """300 users, 120 items as user,item,timestamp CSV, learnable: each next item is 1-3 items after the last."""
    import numpy as np

    rng = np.random.default_rng(0)
    lines = ["user,item,timestamp"]
    for user in range(300):
        item = int(rng.integers(120))
        for ts in range(int(rng.integers(6, 16))):
            lines.append(f"u{user},i{item},{ts}")
            item = (item + int(rng.integers(1, 4))) % 120
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def shared_beauty():
    if not (SHARED_BEAUTY / "sequential_data.txt").exists():
        pytest.skip(f"shared Beauty data not found at {SHARED_BEAUTY}")
    return SHARED_BEAUTY


@pytest.fixture(scope="session")
def art(tmp_path_factory):
    """A trained-shape run and its exported bundle, shared by the runtime and simulate tests."""
    from tests.helpers import shared_artifacts

    return shared_artifacts(tmp_path_factory.getbasetemp() / "fmrl-runtime-shared")


@pytest.fixture(scope="module")
def rec(art):
    from fmrl_sdk.runtime import Recommender

    r = Recommender.open(art.bundle)
    yield r
    r.close()


@pytest.fixture(scope="module")
def dataset():
    """The packaged demo data set."""
    from fmrl_sdk.data.dataset import load_dataset

    return load_dataset("demo")


@pytest.fixture(scope="session")
def cpp_build(tmp_path_factory):
    """The C/C++ runtime (fmrl_sdk/runtime/cpp) built once per session in a temporary folder; skipped only when
    cmake or a C++ compiler is missing."""
    from fmrl_sdk.runtime.cpp import cpp_dir

    cmake = shutil.which("cmake")
    cxx = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if not cmake or not cxx:
        pytest.skip(f"needs cmake and a C++ compiler (cmake: {cmake}, compiler: {cxx})")
    import executorch

    prefix = list(executorch.__path__)[0]
    build = tmp_path_factory.mktemp("fmrl-cpp")
    configure = subprocess.run([cmake, "-S", str(cpp_dir()), "-B", str(build), f"-DCMAKE_PREFIX_PATH={prefix}",
                                "-DCMAKE_BUILD_TYPE=Release"], capture_output=True, text=True)
    assert configure.returncode == 0, configure.stdout + configure.stderr
    built = subprocess.run([cmake, "--build", str(build), "-j2"], capture_output=True, text=True)
    assert built.returncode == 0, built.stdout + built.stderr
    return build


@pytest.fixture(scope="session")
def jni_runtime(cpp_build):
    """cpp_build reconfigured with -DFMRL_WITH_JNI=ON and the Java binding built in it (libfmrl_jni.so,
    fmrl.jar); skipped, with the reason, only when javac or java cannot be found."""
    from fmrl_sdk.runtime.cpp import cpp_dir

    javac, java = shutil.which("javac"), shutil.which("java")
    if not javac or not java:
        pytest.skip(f"needs a JDK: javac {javac}, java {java} (apt-get install openjdk-17-jdk-headless)")
    cmake = shutil.which("cmake")
    configure = subprocess.run([cmake, "-S", str(cpp_dir()), "-B", str(cpp_build), "-DFMRL_WITH_JNI=ON"],
                               capture_output=True, text=True)
    assert configure.returncode == 0, configure.stdout + configure.stderr
    built = subprocess.run([cmake, "--build", str(cpp_build), "-j2", "--target", "fmrl_jni", "fmrl_java"],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stdout + built.stderr
    jar = cpp_build / "fmrl.jar"
    assert jar.exists() and (cpp_build / "libfmrl_jni.so").exists()
    return {"javac": javac, "java": java, "build": cpp_build, "jar": jar}
