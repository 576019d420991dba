import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED_BEAUTY = ROOT.parent / "shared" / "data" / "amazon-beauty"


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
