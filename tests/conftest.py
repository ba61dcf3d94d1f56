"""Shared fixtures: small, fast settings for CLI runs."""

import pytest
import torch

FAST = ["--max-time", "0.05", "--min-samples", "3"]


@pytest.fixture(autouse=True)
def _double_precision_defaults():
    """Keep each test's global torch state independent of the others."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
