import os
import shutil
import sys
import tempfile
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

FREE_DISK = pytest.StashKey[float]()


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """One data root per test session, so the embedded `shapes` set is generated once."""
    root = os.environ.get("SSL_TEST_DATA_ROOT")
    if root:
        return Path(root)
    return tmp_path_factory.mktemp("data")


def pytest_sessionstart(session):
    session.config.stash[FREE_DISK] = shutil.disk_usage(tempfile.gettempdir()).free / 2**30


def pytest_terminal_summary(terminalreporter, config):
    """The free disk under the temporary folder, where the training tests write their checkpoints
    (the suite peaks at 1.3 GB there): the first thing to read when many tests fail at once."""
    terminalreporter.write_line(f"free disk in {tempfile.gettempdir()} at the start: "
                                f"{config.stash[FREE_DISK]:.1f} GiB (the suite needs about 1.5)")


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory):
    """tmp_path_factory.mktemp for a module's fixtures, removed when the module's tests end. With
    tmp_path_retention_policy = "failed" (pyproject.toml) this keeps the suite's disk use at one
    module's checkpoints (at most 1.3 GB, the smoke pipeline's) rather than their sum (7.6 GB)."""
    made = []

    def mktemp(name: str) -> Path:
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield mktemp
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


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
