"""Shared fixtures: small, fast settings for CLI runs."""

import pytest
import torch

FAST = ["--max-time", "0.05", "--min-samples", "3"]


@pytest.fixture(autouse=True)
def _isolated_global_state():
    """Keep each test's threads and registered implementations independent of the others.

    `--impl-file` may replace a built-in (a slower `eager`, say); without this the
    replacement would leak into every later test of the session.
    """
    from cmgm_bench import registry

    registry.load_entry_points()
    threads = torch.get_num_threads()
    implementations = dict(registry._REGISTRY)
    yield
    torch.set_num_threads(threads)
    registry._REGISTRY.clear()
    registry._REGISTRY.update(implementations)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
