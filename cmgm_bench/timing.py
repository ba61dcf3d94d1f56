"""Timing one callable: clocks, cache flushing and the adaptive sampling loop.

We keep one sample per call. ``torch.utils.benchmark.Timer.blocked_autorange``
averages blocks of calls, which hides the per-call distribution that the IQR,
the bootstrap in ``compare`` and the paired A/B mode need, and it cannot flush
a cache between calls; so the loop is ours, and ``Timer`` is used to check it
(docs/performance.md). CPU and CUDA share the loop and the statistics; only
the clock differs.
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from cmgm_bench.stats import StopRule


class WallClock:
    """``time.perf_counter`` around one call (CPU work is synchronous)."""

    name = "perf_counter"

    def time_call(self, fn: Callable[[], object]) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start


class CudaEventClock:
    """CUDA events recorded on the current stream around one call, after synchronising."""

    name = "cuda_event"

    def __init__(self):
        self.start = torch.cuda.Event(enable_timing=True)
        self.end = torch.cuda.Event(enable_timing=True)

    def time_call(self, fn: Callable[[], object]) -> float:
        torch.cuda.synchronize()
        self.start.record()
        fn()
        self.end.record()
        self.end.synchronize()
        return self.start.elapsed_time(self.end) / 1e3


def clock_for(device: str):
    return CudaEventClock() if device.startswith("cuda") else WallClock()


class CacheFlusher:
    """Overwrites a buffer larger than the last-level cache before each call (``--cold-cache``)."""

    def __init__(self, device: str, nbytes: int | None = None):
        self.nbytes = nbytes or default_flush_bytes(device)
        self.buffer = torch.empty(self.nbytes // 4, dtype=torch.int32, device=device)

    def __call__(self) -> None:
        self.buffer.zero_()


def default_flush_bytes(device: str) -> int:
    """Twice the L2 on a GPU; 256 MiB on a CPU (larger than any server's LLC slice we meet)."""
    if device.startswith("cuda"):
        return 2 * torch.cuda.get_device_properties(device).L2_cache_size
    return 256 * 2**20


def warm_up(fn: Callable[[], object], clock, *, min_calls: int = 2, min_time_s: float = 0.1) -> int:
    calls, start = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - start < min_time_s:
        clock.time_call(fn)
        calls += 1
    return calls


def collect_samples(
    fn: Callable[[], object],
    clock,
    rule: StopRule,
    before_each: Callable[[], None] | None = None,
) -> list[float]:
    """Time ``fn`` call by call until ``rule`` says stop; returns seconds per call."""
    samples: list[float] = []
    start = time.perf_counter()
    while not rule.should_stop(samples, time.perf_counter() - start):
        if before_each is not None:
            before_each()
        samples.append(clock.time_call(fn))
    return samples
