"""cmgm-bench: benchmark and profile implementations of PGNet's Cross-Model Grafting Module.

The Python API (:mod:`cmgm_bench.api`) is importable from here: ``RunConfig``,
``run``, ``resume``, ``compare``, ``race``, ``load_run``. They load on first
use, so that importing a submodule (a plug-in importing ``cmgm_bench.registry``)
does not import the whole harness.
"""

__version__ = "0.1.0"

_API = {
    "RunConfig": "cmgm_bench.config.run_config",
    "run": "cmgm_bench.api",
    "resume": "cmgm_bench.api",
    "compare": "cmgm_bench.api",
    "race": "cmgm_bench.api",
    "load_run": "cmgm_bench.results.store",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'cmgm_bench' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_API[name]), name)
