import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

from hypothesis import settings  # noqa: E402

settings.register_profile("ci", deadline=None, max_examples=40, derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one pytest-xdist worker per core already: torch's own threads in each would oversubscribe
    # the cores (on 2 cores, 2 workers of 2 threads each took 2.3x as long as 1 thread each)
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def odd_threads():
    """torch at 3 threads during the test, restored after: a count no configuration declares
    and no xdist worker runs at (they run at 1, the configurations' default), so a test of
    "the declared count is applied", "the caller's is restored" or "the record holds the real
    count" cannot pass by coincidence."""
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    yield 3
    torch.set_num_threads(before)


@pytest.fixture
def outside_git(tmp_path, monkeypatch):
    """``tmp_path`` as a folder no git repository encloses, wherever the machine puts it (a
    TMPDIR inside a checkout, a GIT_DIR set by a hook): for the checks that the experiment's
    test stage refuses a variants file git does not track."""
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    for name in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path
