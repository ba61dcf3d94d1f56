"""Where cmgm-bench keeps what it can rebuild (exports, AOTInductor packages, ``list``'s rows):
``$CMGM_BENCH_CACHE``, or ``cmgm-bench`` under ``$XDG_CACHE_HOME`` (default ``~/.cache``)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    root = os.environ.get("CMGM_BENCH_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cmgm-bench"
    return Path(root)
