"""Shared pytest setup: small thread counts (the CI machine has two cores) and a fixed seed."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def pytest_configure(config):
    # `pytest -m gpu` runs the checks that need CUDA (bench/gpu_check.sh); elsewhere they skip themselves.
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one); run with -m gpu")
    # `make test` runs `-m "not slow"` (under 10 minutes on 2 cores); `make test-slow` runs these, and CI runs both.
    config.addinivalue_line("markers", "slow: longer than ~20 s on 2 cores; run by `make test-slow` and by CI")
