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
