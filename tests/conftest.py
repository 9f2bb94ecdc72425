"""Shared test setup.

* Without a GPU, Triton kernels run under the interpreter: TRITON_INTERPRET=1 is set here,
  before adaptkern (and so Triton) decorates any kernel.
* Every test gets fresh random inputs: a session seed (printed in the header; set
  ADAPTKERN_TEST_SEED to replay a run) combined with the test's id seeds torch, numpy and
  random before each test.
* Markers: ``gpu`` (skipped without CUDA), ``interpret`` (runs Triton kernels), ``slow``.
  The run fails if it collected Triton kernel tests and skipped every one of them.
"""

import os
import random
import sys
import zlib
from pathlib import Path

# `python -m pytest` puts the repository root on sys.path, where kernels/ (installed as
# adaptkern.kernels) would shadow the `kernels` package transformers imports; adaptkern
# itself comes from its (editable) install.
_ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _ROOT]

import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from adaptkern import _backend  # noqa: E402

SESSION_SEED = int(os.environ.get("ADAPTKERN_TEST_SEED", random.SystemRandom().randrange(2**31)))
_kernel_tests = {"skipped": 0, "ran": 0}


def pytest_report_header(config):
    return [
        f"adaptkern: test seed {SESSION_SEED} (replay with ADAPTKERN_TEST_SEED={SESSION_SEED}); "
        f"cuda={torch.cuda.is_available()} triton_interpreter={_backend.triton_interpreting()}"
    ]


@pytest.fixture(autouse=True)
def _seed_everything(request):
    seed = (SESSION_SEED + zlib.crc32(request.node.nodeid.encode())) % 2**31
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    return seed


@pytest.fixture
def seed(_seed_everything):
    """This test's seed (already applied to torch, numpy and random)."""
    return _seed_everything


@pytest.fixture
def device():
    """Where kernel tests run: the GPU when there is one, else the CPU (interpreted Triton)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pytest_collection_modifyitems(config, items):
    no_gpu = pytest.mark.skip(reason="needs a CUDA device")
    no_triton = pytest.mark.skip(reason="Triton kernels need a CUDA device or TRITON_INTERPRET=1")
    triton_ok = _backend.triton_available() and (torch.cuda.is_available() or _backend.triton_interpreting())
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_gpu)
        if "interpret" in item.keywords and not triton_ok:
            item.add_marker(no_triton)


def pytest_runtest_logreport(report):
    if "interpret" not in report.keywords:
        return
    if report.skipped:
        _kernel_tests["skipped"] += 1
    elif report.when == "call":
        _kernel_tests["ran"] += 1


def pytest_sessionfinish(session, exitstatus):
    # A run that skipped every Triton kernel test it selected proves nothing: fail it.
    if _kernel_tests["skipped"] and not _kernel_tests["ran"] and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        print(f"\nERROR: all {_kernel_tests['skipped']} selected Triton kernel tests were skipped")
