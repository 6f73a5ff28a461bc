"Shared fixtures: paths to the test data copied from ../shared/data, so a fresh clone runs offline."
from pathlib import Path
import pytest

DATA = Path(__file__).parent / 'data'

@pytest.fixture
def data_dir() -> Path:
    return DATA
