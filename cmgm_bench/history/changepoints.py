"""Steps in a series over commits: where the level of a metric changed, how much, how sure.

Detection is ruptures' PELT on the log of the values (a step is a ratio, the
same whatever the level), scaled by the series' own noise: a robust estimate
from successive differences (median absolute deviation), floored at
``NOISE_FLOOR`` so a deterministic metric (instructions) does not turn its last
digit into steps. The penalty is ``PENALTY_PER_LOG_N * log(n)`` in those units
(docs/performance.md#history measures the choice). A candidate is
kept when a two-sided Mann-Whitney test between the points before and after it
(up to ``WINDOW`` each side, not past the next candidate) gives p < ``ALPHA``;
each step is reported with the ratio of those medians and the test's confidence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import ruptures
from scipy.stats import mannwhitneyu

NOISE_FLOOR = 1e-4  # 0.01 %: below it, a series is taken as noiseless
PENALTY_PER_LOG_N = 6.0
MIN_SEGMENT = 2
WINDOW = 10
ALPHA = 0.01
MIN_POINTS = 2 * MIN_SEGMENT


@dataclass(frozen=True)
class Step:
    """A change of level before point ``index`` (the first point of the new level)."""

    index: int
    ratio: float  # median after / median before
    confidence: float  # 1 - p of the Mann-Whitney test between the two segments


def noise_scale(log_values: np.ndarray) -> float:
    """The noise of one point, in log units: the median absolute successive difference / sqrt(2) (scaled to a
    standard deviation), at least :data:`NOISE_FLOOR`. A step moves one difference, so it barely moves this."""
    differences = np.diff(log_values)
    if differences.size == 0:
        return NOISE_FLOOR
    return max(1.4826 * float(np.median(np.abs(differences))) / math.sqrt(2), NOISE_FLOOR)


def find_steps(values) -> list[Step]:
    """Steps of a series of positive values, oldest first; ``[]`` for fewer than :data:`MIN_POINTS` points."""
    values = np.asarray(values, dtype=float)
    if values.size < MIN_POINTS or not np.all(values > 0):
        return []
    logs = np.log(values)
    scaled = (logs / noise_scale(logs)).reshape(-1, 1)
    penalty = PENALTY_PER_LOG_N * math.log(values.size)
    ends = ruptures.Pelt(model="l2", min_size=MIN_SEGMENT, jump=1).fit(scaled).predict(pen=penalty)
    steps = []
    bounds = [0, *ends]
    for start, index, end in zip(bounds[:-2], bounds[1:-1], bounds[2:]):
        before, after = values[max(start, index - WINDOW):index], values[index:min(end, index + WINDOW)]
        p_value = mannwhitneyu(before, after, alternative="two-sided").pvalue
        if p_value < ALPHA:
            steps.append(Step(index=index, ratio=float(np.median(after) / np.median(before)), confidence=float(1 - p_value)))
    return steps
