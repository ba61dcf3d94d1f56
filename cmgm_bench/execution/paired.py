"""Paired A/B timing in one process: the wall-clock gate that survives a noisy machine.

Two implementations of the same case are called alternately (A B B A A B ...)
so that drifts of the machine's speed hit both alike. The verdict rests on
the median of per-quad ratios ``t_cand / t_base`` (the geometric mean of an
A-first and a B-first pair, which cancels any advantage of position) with a
sign-test interval over the medians of consecutive blocks of quads (the
machine's noise is correlated in time; :func:`stats.blocked_median_interval`).
A race run while other work took more than a set share of the cores ends
``inconclusive (contended)`` (:mod:`cmgm_bench.measure.contention`): a
neighbour that slows one side's thread pool more than the other's decides
nothing about the code. Two separately built instances of identical
code can still differ slightly (memory placement), which long races
resolve: read "same" as the verdict, not "the interval contains 1". Interleaving
is what makes the ratio trustworthy where separate processes are not
(docs/performance.md#gates).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from cmgm_bench import registry
from cmgm_bench.measure import allocator, contention
from cmgm_bench.config.cases import Case
from cmgm_bench.config.race_config import RaceConfig
from cmgm_bench.workload.modes import autograd_context
from cmgm_bench.measure.prepare import prepare_case
from cmgm_bench.stats import FIRST_LOOK_QUADS, blocked_median_interval, interim_look, paired_ratios, sequential_confidence, verdict
from cmgm_bench.measure.timing import calls_per_sample, clock_for, warm_up


@dataclass
class PairedResult:
    base: Case
    cand: Case
    base_ms: float
    cand_ms: float
    ratio: float
    low: float
    high: float
    verdict: str
    pairs: int  # calls of each side timed (as --min-pairs counts them); the interval is over their quads
    seconds: float  # how long the interleaved timing took
    contention: float | None = None  # other work on the cores while the race ran (measure.contention)
    calls_per_sample: tuple[int, int] = (1, 1)  # base's, candidate's: each timed sample is a block of back-to-back calls


def race(base_case: Case, cand_case: Case, config: RaceConfig = RaceConfig()) -> PairedResult:
    """Time two cases of one shape interleaved, as validated by the caller (``config.run_config.single_cases``).

    ``config.gap_ms`` of idle time before each timed call lets the worker threads of the
    call before it stop spinning: two runtimes with their own thread pools
    (ONNX Runtime's, OpenMP's) otherwise time each other's spinning as much as
    their own work when they use more than one thread (docs/performance.md#thread-pools).

    The allocator is set up as ``run`` sets it up (:mod:`cmgm_bench.measure.allocator`):
    left alone, glibc faulted eager's 20 MB maps at 28x28 in afresh on every call
    (eager ``feature`` 36 ms instead of 16 ms on the CPU machine), so the two
    commands disagreed about the same implementation.

    ``config.until_decided``: look at the verdict at 40, 80, 160, ... quads, each look at the
    confidence :func:`stats.sequential_confidence` leaves it, and stop at the first
    look that decides (slower, faster or same); ``config.max_time`` is then the limit.
    """
    gap_s = config.gap_ms / 1e3
    allocator.pin_for_timing()
    base = prepare_case(base_case, registry.get(base_case.impl), config.seed)
    cand = prepare_case(cand_case, registry.get(cand_case.impl), config.seed)
    clock = clock_for(base_case.device)
    base_times, cand_times = [], []
    look, decided = 0, None
    with autograd_context(base_case.mode):
        warm_up(base.step, clock)
        warm_up(cand.step, clock)
        # On CUDA each side's sample is a block of at least a millisecond (measure.timing); one call on the CPU.
        blocks = {id(base): calls_per_sample(base.step, clock), id(cand): calls_per_sample(cand.step, clock)}
        watch = contention.Watch()
        started = time.perf_counter()
        while len(base_times) < config.min_pairs or time.perf_counter() - started < config.max_time:
            first, second = (base, cand) if len(base_times) % 2 == 0 else (cand, base)
            t_first = _after_gap(gap_s, clock, first.step, blocks[id(first)])
            t_second = _after_gap(gap_s, clock, second.step, blocks[id(second)])
            base_times.append(t_first if first is base else t_second)
            cand_times.append(t_second if first is base else t_first)
            if config.until_decided and len(base_times) == 2 * FIRST_LOOK_QUADS * 2**look:
                interval, judged = interim_look(paired_ratios(base_times, cand_times), look, config.threshold)
                look += 1
                if judged != "inconclusive":
                    decided = interval
                    break
        seconds = time.perf_counter() - started
        reading = watch.reading()
    ratios = paired_ratios(base_times, cand_times)
    # a race that may stop early reports the interval of the confidence its looks left it
    ratio, low, high = decided or blocked_median_interval(
        ratios, confidence=sequential_confidence(look) if config.until_decided else 0.95
    )
    base_times.sort()
    cand_times.sort()
    middle = len(base_times) // 2
    share = None if reading is None else reading.share
    judged = contention.CONTENDED if contention.is_contended(share) else verdict(ratio, low, high, config.threshold)
    return PairedResult(
        base_case, cand_case, base_times[middle] * 1e3, cand_times[middle] * 1e3,
        ratio, low, high, judged, len(base_times), seconds, share, (blocks[id(base)], blocks[id(cand)]),
    )


def _after_gap(gap_s: float, clock, step, calls: int) -> float:
    """Seconds per call of a block of ``calls`` calls of ``step`` after ``gap_s`` of idle time (none when zero)."""
    if gap_s:
        time.sleep(gap_s)
    return clock.time_calls(step, calls)
