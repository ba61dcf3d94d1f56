"""The rows of ``cmgm-bench list``, without importing the implementations when nothing they depend on changed.

Listing the implementations means importing them, and they import torch: seconds on a busy
2-vCPU machine for a table that changes only when the code or the environment does. The rows
are kept in the cache folder (:func:`cmgm_bench.cache.cache_dir`) under a key of everything
they are computed from: the interpreter, the source files of this package and of every
entry point's package (path, size, modification time), the installed distributions (their
``*.dist-info`` names carry the versions), ``PATH`` and the compiler it finds (``$CXX`` or
``c++``), and every ``CMGM_*`` variable. ``--impl-file`` lists without the cache.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Callable

from cmgm_bench import registry
from cmgm_bench.cache import cache_dir

FIELDS = ("name", "baseline", "in_default_sweep", "description", "devices", "modes", "dtype", "missing", "source")


def computed_rows() -> list[dict]:
    """Every registered implementation as a row (importing them)."""
    return [
        {"name": impl.name, "baseline": impl.baseline, "in_default_sweep": impl.in_default_sweep, "description": impl.description,
         "devices": list(impl.devices), "modes": list(impl.modes), "dtype": impl.dtype, "missing": impl.missing(),
         "source": impl.source}
        for impl in registry.all_implementations().values()
    ]


def cache_key() -> str:
    """A digest of everything the rows depend on (this module's docstring lists it)."""
    packages = {Path(__file__).parent}
    for ep in entry_points(group=registry.ENTRY_POINT_GROUP):
        spec = importlib.util.find_spec(ep.value.split(":")[0].split(".")[0])
        if spec is not None and spec.origin:
            packages.add(Path(spec.origin).parent)
    files = sorted(f for package in packages for f in package.rglob("*.py"))
    parts = [sys.executable, *(f"{f}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)]
    for entry in sys.path:
        if os.path.isdir(entry):
            parts += sorted(name for name in os.listdir(entry) if name.endswith((".dist-info", ".egg-info")))
    compiler = shutil.which(os.environ.get("CXX", "c++"))
    parts += [os.environ.get("PATH", ""), str(compiler), *(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("CMGM_"))]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def rows(compute: Callable[[], list[dict]] = computed_rows) -> list[dict]:
    """The rows, from the cache when its key matches, else computed and kept (a cache that cannot be written is
    skipped: listing never fails for it)."""
    path = cache_dir() / f"list-{cache_key()}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    found = compute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + f".{os.getpid()}.partial")
        partial.write_text(json.dumps(found))
        os.replace(partial, path)
    except OSError:
        pass
    return found
