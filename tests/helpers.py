"""Shared test helpers: a configuration for measuring single cases quickly."""

from __future__ import annotations

import dataclasses

from cmgm_bench.stats import StopRule
from cmgm_bench.config.run_config import RunConfig

ONE_SAMPLE = StopRule(min_samples=1, max_time_s=0.0, floor_samples=1)


def measure_config(stop_rule: StopRule = ONE_SAMPLE, **changes) -> RunConfig:
    """A :class:`RunConfig` for a :class:`CaseRunner` in a test: ``stop_rule`` and the measuring fields given."""
    return dataclasses.replace(RunConfig.build(impl="eager"), stop_rule=stop_rule, **changes)
