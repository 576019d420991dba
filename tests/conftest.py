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
    from tests.test_runtime import shared_artifacts

    return shared_artifacts(tmp_path_factory.getbasetemp() / "fmrl-runtime-shared")


@pytest.fixture(scope="module")
def rec(art):
    from fmrl_sdk.runtime import Recommender

    r = Recommender.open(art.bundle)
    yield r
    r.close()
