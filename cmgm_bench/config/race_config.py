"""How a paired race is run: one definition of its options and their defaults, for ``ab``, ``api.race``,
``execution.paired.race`` and ``gate``."""

from __future__ import annotations

import math
from dataclasses import dataclass

from cmgm_bench.errors import UsageError


@dataclass(frozen=True)
class RaceConfig:
    """The options of a race of two cases, validated when made (a :class:`UsageError` names the bad one)."""

    seed: int = 0  # of the weights and inputs both sides get
    max_time: float = 10.0  # seconds of interleaved timing per shape (the limit with until_decided)
    min_pairs: int = 20  # calls of each side to take at least
    threshold: float = 0.05  # relative change that counts
    gap_ms: float = 0.0  # idle milliseconds before each timed call (docs/performance.md#thread-pools)
    until_decided: bool = False  # stop once the sequential interval decides the verdict

    def __post_init__(self):
        if not (math.isfinite(self.max_time) and self.max_time > 0):
            raise UsageError(f"--max-time: {self.max_time} must be a positive number")
        if not (math.isfinite(self.threshold) and self.threshold > 0):
            raise UsageError(f"--threshold: {self.threshold} must be a positive number")
        if not (math.isfinite(self.gap_ms) and self.gap_ms >= 0):
            raise UsageError(f"--gap-ms: {self.gap_ms} must be a finite number, not negative")
        if self.min_pairs < 2:
            raise UsageError(f"--min-pairs: {self.min_pairs} must be at least 2")


# The pull-request gate's race: longer, and stopped as soon as its verdict is decided.
GATE_RACE = RaceConfig(max_time=20.0, until_decided=True)
