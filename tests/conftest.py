import os
import shutil
from pathlib import Path

import pytest
import torch

#: ``make test`` runs the suite in parallel processes (pytest-xdist, ``-n``): the cores are shared among them, so
#: each process, and every kernel or command it starts ($APEM_THREADS, $OMP_NUM_THREADS), computes with
#: ``cores / processes`` torch threads (2 at most). Two processes of 2 threads on 2 cores would slow torch 10-100x.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, min(2, (os.cpu_count() or 1) // WORKERS))
if WORKERS > 1:
    os.environ.setdefault("APEM_THREADS", str(THREADS))
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
torch.set_num_threads(THREADS)

SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "imagenet-samples"


def samples_dir() -> Path | None:
    env = os.environ.get("APEM_DATA")
    if env and Path(env).is_dir():
        return Path(env)
    return SAMPLES if SAMPLES.is_dir() else None


@pytest.fixture(scope="session")
def sample_dir():
    d = samples_dir()
    if d is None:
        pytest.skip("the ImageNet sample set is not here (set APEM_DATA)")
    return d


@pytest.fixture
def few_samples(tmp_path, sample_dir):
    """A tmp copy of 4 sample images."""
    out = tmp_path / "few"
    out.mkdir()
    for p in sorted(sample_dir.iterdir())[:4]:
        shutil.copy(p, out / p.name)
    return out


@pytest.fixture(scope="session")
def effnet():
    from apem.models import load_model

    return load_model("efficientnet_lite0", device="cpu")


@pytest.fixture(scope="module")
def one_thread():
    """Hundreds of tiny forward passes: one thread avoids OpenMP barrier stalls on a shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tf32_on():
    """TF32 switched on (PyTorch's cuDNN default) for the test, restored after it."""
    import torch

    from apem import numerics

    old = numerics.tf32_flags()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.fixture(scope="session")
def smoke_results(tmp_path_factory, sample_dir):
    """A results store with the smoke configuration computed, shared by the tests that execute chapters.

    The smoke book (tests/test_book.py) and the exercises' commands (tests/test_exercises.py)
    read the same run, so the session computes it once and the developer's results/ is left alone.
    Parallel test processes (``make test``) each compute their own: a chapter executed by one process
    while another extends the same store once waited for the other's lock, and the wait's message
    landed on the page.
    """
    from apem.config import load_config
    from apem.run import run

    root = tmp_path_factory.mktemp("smoke-results")
    run(load_config("smoke"), progress=False, root=root)
    return root


# ----------------------------------------------------------------------------- make test-fast

#: fixtures that read the ImageNet samples, load a model or execute chapters: `--fast` leaves their tests out
SLOW_FIXTURES = {"sample_dir", "few_samples", "smoke_results", "effnet"}


def pytest_addoption(parser):
    parser.addoption("--fast", action="store_true",
                     help="only the tests that need no images, no model weights and no chapter execution and take under 3 s "
                          "(`make test-fast`, the edit loop)")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: reads images, loads a model, executes chapters or takes over 3 s (left out by --fast)")


#: the modules that take longest, started first (``make test`` runs ``--no-loadscope-reorder``, so xdist hands out
#: modules in this order): a long module started last keeps one process busy while the others idle
LONGEST_FIRST = ("test_exercises.py", "test_book.py", "test_ray.py", "test_chapters_09_12.py",
                 "test_chapters_05_08.py", "test_chapters_01_04.py", "test_cells.py", "test_runner.py")


def _longest_first(items) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each module keeps its own order


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--fast"):
        _longest_first(items)
        return
    keep, drop = [], []
    for item in items:
        slow = SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) or item.get_closest_marker("slow")
        (drop if slow else keep).append(item)
    items[:] = keep
    config.hook.pytest_deselected(items=drop)
