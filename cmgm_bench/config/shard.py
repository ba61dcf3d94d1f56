"""Split a sweep into N deterministic shards balanced by expected cost.

The cost of a case is its closed-form FLOPs (times three in ``train`` mode),
the best predictor of its run time we have before running it. Cases are
dealt largest first to the shard with the least cost so far (ties to the
lowest shard), which keeps shards within one case of each other.
"""

from __future__ import annotations

import re

from cmgm_bench.workload import flops
from cmgm_bench.config.cases import Case
from cmgm_bench.errors import UsageError


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/3"`` -> ``(2, 3)``; 1-based, K in 1..N."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not match:
        raise UsageError(f"--shard: {text!r} is not K/N")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or not 1 <= index <= count:
        raise UsageError(f"--shard {text}: K must be between 1 and N")
    return index, count


def expected_cost(case: Case) -> int:
    return flops.flops(case.mode, case.batch, case.tokens, case.dim, case.heads) + 1


def assign(cases: list[Case], count: int) -> list[int]:
    """The 0-based shard of each case."""
    loads = [0] * count
    shard_of = [0] * len(cases)
    order = sorted(range(len(cases)), key=lambda i: (-expected_cost(cases[i]), cases[i].key))
    for i in order:
        target = min(range(count), key=lambda s: (loads[s], s))
        shard_of[i] = target
        loads[target] += expected_cost(cases[i])
    return shard_of


def select(cases: list[Case], shard: str | None) -> list[Case]:
    if not shard:
        return cases
    index, count = parse_shard(shard)
    shard_of = assign(cases, count)
    return [case for case, s in zip(cases, shard_of) if s == index - 1]
