"""The machine's measured ceilings: matmul throughput per dtype and copy bandwidth.

Measured once at the start of a run with the threads the run uses, and stored
in ``results.json`` so that ``pct_peak`` and ``floor_ms`` can be recomputed.
"""

from __future__ import annotations

import torch

from cmgm_bench.stats import StopRule, summarize
from cmgm_bench.timing import clock_for, collect_samples, warm_up

_RULE = StopRule(min_samples=5, min_time_s=0.1, max_time_s=0.5, target_rel_iqr=0.05)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _median_seconds(fn, device: str) -> float:
    clock = clock_for(device)
    warm_up(fn, clock)
    return summarize(collect_samples(fn, clock, _RULE)).median


def matmul_gflops(device: str, dtype: str) -> float | None:
    """Best-case GFLOP/s of a square matmul; ``None`` if the dtype has no matmul here."""
    n = 4096 if device.startswith("cuda") else 1024
    try:
        a = torch.randn(n, n, device=device).to(_DTYPES[dtype])
        b = torch.randn(n, n, device=device).to(_DTYPES[dtype])
        seconds = _median_seconds(lambda: torch.mm(a, b), device)
    except RuntimeError:
        return None
    return 2 * n**3 / seconds / 1e9


def copy_gbytes_per_s(device: str) -> float:
    """Read+write bandwidth of a large device-to-device copy."""
    nbytes = (1024 if device.startswith("cuda") else 256) * 2**20
    src = torch.ones(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    seconds = _median_seconds(lambda: dst.copy_(src), device)
    return 2 * nbytes / seconds / 1e9


def measure(device: str, dtypes) -> dict:
    """``{"matmul_gflops": {dtype: value}, "copy_gbytes_per_s": value}`` for ``device``."""
    return {
        "matmul_gflops": {dtype: matmul_gflops(device, dtype) for dtype in sorted(set(dtypes))},
        "copy_gbytes_per_s": copy_gbytes_per_s(device),
    }
