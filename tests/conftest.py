"""The suite's fixtures; the helpers tests import are in ``tests/helpers.py``."""

import gc
import os
import subprocess
import sys

import pytest
import torch

from cmgm_bench.config.settings import DEFAULTS


@pytest.fixture(scope="session", autouse=True)
def _private_export_cache(tmp_path_factory):
    """Exports made by this test session only: never a developer's cached file, never written to their home."""
    previous = os.environ.get("CMGM_BENCH_CACHE")
    os.environ["CMGM_BENCH_CACHE"] = str(tmp_path_factory.mktemp("export-cache"))
    yield
    if previous is None:
        del os.environ["CMGM_BENCH_CACHE"]
    else:
        os.environ["CMGM_BENCH_CACHE"] = previous


@pytest.fixture(scope="session", autouse=True)
def _compile_caches_keyed_by_library_isa():
    """The session's compiles keyed by the libraries' instruction-set caps, as a timing process keys them
    (``process_setup.key_compile_caches_by_library_isa``): a graph that Inductor cached in a session without
    ``DNNL_MAX_CPU_ISA=AVX2`` and its kin computed NaN when a session with them loaded it from the same cache."""
    from cmgm_bench.machine import process_setup
    from torch.compiler import config

    previous = os.environ.get(process_setup.CACHE_KEY_TAG_ENV), config.cache_key_tag
    process_setup.key_compile_caches_by_library_isa()
    yield
    if previous[0] is None:
        os.environ.pop(process_setup.CACHE_KEY_TAG_ENV, None)
    else:
        os.environ[process_setup.CACHE_KEY_TAG_ENV] = previous[0]
    config.cache_key_tag = previous[1]


@pytest.fixture(scope="session", autouse=True)
def _frozen_import_heap():
    """What the imports built (torch, the runtimes: ~300k objects) lives for the whole session, as in a run
    (``measure.heap.frozen``): frozen, each case's garbage collection scans only newer objects
    (0.13 s -> ~0.01 s a case, a few hundred cases in the suite)."""
    from cmgm_bench.measure import heap

    gc.collect()
    with heap.frozen():
        yield


@pytest.fixture(autouse=True)
def _machine_share(request, tmp_path_factory):
    """Tests marked ``quiet`` have the machine to themselves; the others share it (``helpers.machine_share``)."""
    from tests.helpers import machine_share

    with machine_share(tmp_path_factory, alone=request.node.get_closest_marker("quiet") is not None):
        yield


@pytest.fixture(scope="session")
def _pristine_registry():
    """The registered implementations before any test loaded a file."""
    from cmgm_bench import registry

    registry.load_entry_points()
    return dict(registry._REGISTRY)


@pytest.fixture(autouse=True)
def _isolated_global_state(_pristine_registry):
    """Keep each test's threads and registered implementations independent of the others.

    `--impl-file` may replace a built-in (a slower `eager`, say); without this the
    replacement would leak into every later test of the session. The registry is
    restored to the session's start, not to the test's, because a module-scoped
    fixture may load files before a test's own set-up.
    """
    from cmgm_bench import registry

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    registry._REGISTRY.clear()
    registry._REGISTRY.update(_pristine_registry)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _ceilings_measured_once(tmp_path_factory, _private_export_cache):
    """The machine's ceilings measured once, with the machine to this worker alone, for one and for all threads and
    every dtype: the session's runs reuse them (``measure/ceilings_cache.py``) as a developer's runs reuse those of
    their first, instead of each measuring them anew beside the other worker's tests (and never keeping that)."""
    from cmgm_bench.measure import ceilings_cache
    from tests.helpers import machine_share

    before = torch.get_num_threads()
    with machine_share(tmp_path_factory, alone=True):
        for threads in sorted({1, len(os.sched_getaffinity(0))}):
            torch.set_num_threads(threads)
            ceilings_cache.reuse_or_measure("cpu", ["bfloat16", "float16", "float32"], ceilings_cache.this_machine("cpu"),
                                            max_age_s=DEFAULTS["ceilings_max_age"])
    torch.set_num_threads(before)


@pytest.fixture
def two_threads():
    torch.set_num_threads(2)  # _isolated_global_state restores the threads after the test


@pytest.fixture
def busy_neighbour():
    """A real process spinning on the first core this process may use, for the test's duration."""
    core = min(os.sched_getaffinity(0))
    spin = subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{core}}})\nwhile True: pass"])
    yield spin
    spin.kill()
    spin.wait()
