"""Shared fixtures: the seed, the markers that skip cleanly, and the single tolerance table."""
import importlib.util
import os

import pytest
import torch

# One tolerance table for float comparisons (integers always compare exactly).
TOLERANCES = {
    torch.float64: dict(rtol=1e-9, atol=1e-12),
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2),
}


def tol(dtype: torch.dtype) -> dict:
    return TOLERANCES[dtype]


@pytest.fixture
def seed() -> int:
    torch.manual_seed(0)
    return 0


def _has_sglang() -> bool:
    return importlib.util.find_spec("sglang") is not None


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="no CUDA device")
    skip_sglang = pytest.mark.skip(reason="sglang is not installed (run scripts/setup.sh)")
    run_slow = os.environ.get("JETSPEC_RUN_SLOW") == "1"
    skip_slow = pytest.mark.skip(reason="slow/server test: set JETSPEC_RUN_SLOW=1 (.ci/run does)")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        if ("sglang" in item.keywords or "server" in item.keywords) and not _has_sglang():
            item.add_marker(skip_sglang)
        if ("slow" in item.keywords or "server" in item.keywords) and not run_slow:
            item.add_marker(skip_slow)
