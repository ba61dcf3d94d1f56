"""Statistics over raw latency samples, as pure functions.

Summary numbers (median, IQR), the adaptive stopping rule used while timing,
bootstrap confidence intervals of a ratio of medians, the blocked sign-test
interval of a paired race's median ratio, and the verdict that
``compare`` and ``ab`` give. Everything here is tested on synthetic data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Summary:
    median: float
    iqr: float
    minimum: float
    count: int

    @property
    def rel_iqr(self) -> float:
        return self.iqr / self.median if self.median > 0 else math.inf


def summarize(samples) -> Summary:
    values = np.asarray(samples, dtype=float)
    if values.size == 0:
        raise ValueError("no samples")
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return Summary(median=float(median), iqr=float(q3 - q1), minimum=float(values.min()), count=int(values.size))


@dataclass(frozen=True)
class StopRule:
    """When to stop collecting samples.

    Stop once at least ``min_samples`` were taken over at least ``min_time_s``
    and the relative IQR is below ``target_rel_iqr``; or once ``max_time_s``
    is spent (with at least ``floor_samples``); or at ``max_samples``.
    """

    min_samples: int = 10
    min_time_s: float = 0.2
    max_time_s: float = 2.0
    max_samples: int = 5000
    target_rel_iqr: float = 0.03
    floor_samples: int = 3

    def should_stop(self, samples, elapsed_s: float) -> bool:
        n = len(samples)
        if n >= self.max_samples:
            return True
        if elapsed_s >= self.max_time_s and n >= self.floor_samples:
            return True
        if n >= self.min_samples and elapsed_s >= self.min_time_s:
            return summarize(samples).rel_iqr <= self.target_rel_iqr
        return False


def geometric_mean(values) -> float:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values) & (values > 0)]
    return float(np.exp(np.log(values).mean())) if values.size else math.nan


def bootstrap_ratio_of_medians(base, cand, *, confidence=0.95, resamples=2000, seed=0) -> tuple[float, float, float]:
    """``median(cand) / median(base)`` with a percentile-bootstrap interval."""
    base = np.asarray(base, dtype=float)
    cand = np.asarray(cand, dtype=float)
    rng = np.random.default_rng(seed)
    base_medians = np.median(base[rng.integers(0, base.size, (resamples, base.size))], axis=1)
    cand_medians = np.median(cand[rng.integers(0, cand.size, (resamples, cand.size))], axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(cand_medians / base_medians, [alpha, 1 - alpha])
    return float(np.median(cand) / np.median(base)), float(low), float(high)


def replicate_ratio_interval(base_groups, cand_groups, *, confidence=0.95) -> tuple[float, float, float]:
    """Ratio of two runs' latencies from their replicates (``run --repeats``), with Welch's t interval.

    Each replicate contributes its median; the ratio is ``exp(mean log cand - mean log base)`` and the
    interval Welch's t on those logs, so the spread between replicates (the machine's fast and slow
    periods, separate processes) is in it. With 3 replicates a side it covered the true ratio in
    96-97 % of simulated A/A pairs where a two-level bootstrap covered 89-91 %
    (``scripts/studies/replicate_interval_coverage.py``, docs/performance.md#replicates).
    """
    base_logs = np.log([np.median(g) for g in base_groups if len(g)])
    cand_logs = np.log([np.median(g) for g in cand_groups if len(g)])
    difference = float(cand_logs.mean() - base_logs.mean())
    base_var, cand_var = base_logs.var(ddof=1) / base_logs.size, cand_logs.var(ddof=1) / cand_logs.size
    error = math.sqrt(base_var + cand_var)
    if error == 0:
        return math.exp(difference), math.exp(difference), math.exp(difference)
    from scipy.stats import t as student_t  # here: scipy.stats takes half a second to import, and a sweep never needs it

    dof = error**4 / (base_var**2 / (base_logs.size - 1) + cand_var**2 / (cand_logs.size - 1))
    half = float(student_t.ppf(0.5 + confidence / 2, dof)) * error
    return math.exp(difference), math.exp(difference - half), math.exp(difference + half)


def blocked_median_interval(values, *, confidence: float = 0.95, per_block: int = 5,
                            min_blocks: int = 8, max_blocks: int = 32) -> tuple[float, float, float]:
    """Median of ``values`` (per-quad ratios, in time order) with a distribution-free interval.

    The series is cut into consecutive blocks (8 to 32, at least ``per_block``
    values each; a shorter series gets its whole range) and the interval is a pair of order statistics of the block
    medians: ``[m_(k), m_(B-k+1)]`` with the largest ``k`` whose sign-test
    (binomial) coverage of the median is still ``confidence``. Blocks absorb
    the machine's time-correlated fast and slow periods; order statistics make
    no assumption about their shape. On synthetic races with 3x speed swings
    and rare spikes this covers the true ratio in 98-99% of races, where a
    percentile block bootstrap of the median covered 88% (docs/performance.md;
    ``tests/test_stats.py`` checks it).
    """
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        raise ValueError("no values")
    if values.size < min_blocks * per_block:  # too short a race to tell: the whole range, so never a wrong direction
        return float(np.median(values)), float(values.min()), float(values.max())
    count = min(max_blocks, values.size // per_block)
    medians = np.sort([np.median(block) for block in np.array_split(values, count)])
    alpha = 1 - confidence
    if 2 * 0.5**count > alpha:  # even the extreme block medians fall short of the confidence asked for
        return float(np.median(values)), float(values.min()), float(values.max())
    k = 1  # [m_(k), m_(B-k+1)] misses the median with probability 2 * P(Bin(B, 1/2) <= k - 1)
    while k < count // 2 and 2 * _half_binomial_cdf(k, count) <= alpha:
        k += 1
    return float(np.median(values)), float(medians[k - 1]), float(medians[count - k])


def _half_binomial_cdf(k: int, count: int) -> float:
    """P(Bin(count, 1/2) <= k), exactly."""
    return sum(math.comb(count, i) for i in range(k + 1)) / 2**count


FIRST_LOOK_QUADS = 40  # the shortest race whose blocked interval can tell anything


def sequential_confidence(look: int, confidence: float = 0.95) -> float:
    """Confidence of interim look ``look`` (0, 1, 2, ... at 40, 80, 160, ... quads) of a race that stops
    once decided: the error rate is spent as 1/2, 1/4, 1/8, ... of ``1 - confidence``, so however many
    looks a race takes, together they keep ``confidence`` (a Bonferroni alpha-spending rule)."""
    return 1 - (1 - confidence) / 2 ** (look + 1)


def interim_look(ratios, look: int, threshold: float) -> tuple[tuple[float, float, float], str]:
    """The interval and verdict of look ``look`` of a race that stops once decided (``ab --until-decided``)."""
    interval = blocked_median_interval(ratios, confidence=sequential_confidence(look))
    return interval, verdict(*interval, threshold)


def paired_ratios(base_times, cand_times) -> np.ndarray:
    """Per-quad ratios of an A B B A timing sequence.

    Pair ``i`` ran base first when ``i`` is even and cand first when odd; the
    geometric mean of the two ratios of each (even, odd) pair cancels any
    advantage of running first or second. An odd last pair is dropped.
    """
    ratios = np.asarray(cand_times, dtype=float) / np.asarray(base_times, dtype=float)
    quads = ratios.size // 2
    return np.sqrt(ratios[0 : 2 * quads : 2] * ratios[1 : 2 * quads : 2])


def verdict(ratio: float, low: float, high: float, threshold: float) -> str:
    """Judge ``ratio = cand / base`` (lower is faster) with interval ``[low, high]``.

    ``slower``/``faster`` need the point estimate past the threshold *and* the
    interval to exclude 1; ``same`` needs the whole interval inside the
    threshold band; anything else is ``inconclusive``.
    """
    upper_band, lower_band = 1 + threshold, 1 / (1 + threshold)
    if ratio > upper_band and low > 1:
        return "slower"
    if ratio < lower_band and high < 1:
        return "faster"
    if lower_band <= low and high <= upper_band:
        return "same"
    return "inconclusive"
