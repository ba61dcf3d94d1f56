"""Timing one callable: clocks, cache flushing and the adaptive sampling loop.

We keep one sample per call where the clock resolves one call.
``torch.utils.benchmark.Timer.blocked_autorange`` averages blocks of calls,
which hides the per-call distribution that the IQR, the bootstrap in
``compare`` and the paired A/B mode need, and it cannot flush a cache
between calls; so the loop is ours, and ``Timer`` is used to check it
(docs/performance.md#timing-loop). CPU and CUDA share the loop and the statistics; only
the clock differs. On CUDA a call shorter than a millisecond is timed in
blocks of back-to-back calls (``calls_per_sample``), recorded per case.
With ``--cold-cache`` the cache is flushed before every call, so each sample is
one call with the events around that call only (the flush before them): a call
under ~50 us is then bound by the host's launch, which the cold-cache figure
includes; compare cold and warm on calls the GPU takes longer than that.
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from cmgm_bench.stats import StopRule


class _Clock:
    """What every clock shares: timing one call is timing a block of one."""

    def time_call(self, fn: Callable[[], object]) -> float:
        """Seconds of one call."""
        return self.time_calls(fn, 1)


class WallClock(_Clock):
    """``time.perf_counter`` around the calls (CPU work is synchronous)."""

    name = "perf_counter"
    min_block_s = 0.0  # one call per sample: the clock resolves sub-millisecond calls

    def time_calls(self, fn: Callable[[], object], calls: int = 1) -> float:
        """Seconds per call over ``calls`` back-to-back calls."""
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - start) / calls


class CudaEventClock(_Clock):
    """CUDA events recorded on the current stream around the calls, after synchronising.

    A synchronise before every event pair makes a sub-millisecond call measure
    the host's launch overhead rather than the GPU, so short calls are timed in
    blocks of back-to-back calls lasting at least ``min_block_s`` (as
    ``triton.testing.do_bench`` does); a sample is then a block's mean.
    """

    name = "cuda_event"
    min_block_s = 1e-3

    def __init__(self):
        self.start = torch.cuda.Event(enable_timing=True)
        self.end = torch.cuda.Event(enable_timing=True)

    def time_calls(self, fn: Callable[[], object], calls: int = 1) -> float:
        torch.cuda.synchronize()
        self.start.record()
        for _ in range(calls):
            fn()
        self.end.record()
        self.end.synchronize()
        return self.start.elapsed_time(self.end) / 1e3 / calls


MAX_CALLS_PER_SAMPLE = 2**16  # a call of under 15 ns: the block is then as long as we will wait for
CALIBRATION_TRIES = 3


def calls_per_sample(fn: Callable[[], object], clock) -> int:
    """Back-to-back calls per sample so that a sample lasts at least the clock's ``min_block_s``.

    The block doubles from one call until a measured block of back-to-back calls lasts
    ``min_block_s``, as ``triton.testing.do_bench`` sizes its repeats: a size computed from
    one synchronised call would divide by the host's launch-and-wait time, not the GPU's,
    and leave blocks shorter than the clock can time. Each size is timed ``CALIBRATION_TRIES``
    times and judged by its fastest: one slow block (a GPU whose clocks are still rising from
    idle) would otherwise stop the doubling at a block that later samples time shorter.
    """
    if clock.min_block_s <= 0:
        return 1
    calls = 1
    while calls < MAX_CALLS_PER_SAMPLE and min(clock.time_calls(fn, calls) for _ in range(CALIBRATION_TRIES)) * calls < clock.min_block_s:
        calls *= 2
    return calls


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
    calls: int = 1,
) -> list[float]:
    """Time ``fn`` until ``rule`` says stop; each sample is the mean of ``calls`` back-to-back
    calls (seconds per call), and ``before_each`` runs before each sample."""
    samples: list[float] = []
    start = time.perf_counter()
    while not rule.should_stop(samples, time.perf_counter() - start):
        if before_each is not None:
            before_each()
        samples.append(clock.time_calls(fn, calls))
    return samples


def sync(device: str) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
