import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
os.environ.setdefault("MALLOC_MMAP_MAX_", "0")
os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", "100000000000")
torch.set_num_threads(min(2, os.cpu_count() or 1))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/toy_method.py
# The repository root reaches this process through pytest's `pythonpath = ["."]` (pyproject.toml);
# child processes (`python -c ...`, torchrun tests/toy_method.py) get it here, since nothing is installed.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """One data root per test session, so the embedded `shapes` set is generated once."""
    root = os.environ.get("SSL_TEST_DATA_ROOT")
    if root:
        return Path(root)
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def shared_data():
    if not SHARED_DATA.exists():
        pytest.skip(f"{SHARED_DATA} is absent (the shared sample datasets sit beside the repository)")
    return SHARED_DATA


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: a second intra-op thread only adds synchronisation (and, on a busy 2-core
    machine, contention). Modules opt in with pytestmark = pytest.mark.usefixtures("one_thread")."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
