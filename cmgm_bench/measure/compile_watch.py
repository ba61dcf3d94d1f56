"""What TorchDynamo and Inductor did in this process: compiled frames and FX-graph cache hits."""

from __future__ import annotations


class RecompiledDuringTiming(RuntimeError):
    """An implementation compiled again while it was being timed: the samples are invalid."""


def compile_count() -> int:
    """How many frames TorchDynamo has compiled in this process so far."""
    from torch._dynamo.utils import counters

    return counters["frames"]["total"]


def inductor_cache_counts() -> dict[str, int]:
    """Inductor's on-disk FX graph cache hits and misses in this process so far. The cache outlives
    the Dynamo reset after each case, so a shape compiled before compiles again in a fraction of the time."""
    from torch._dynamo.utils import counters

    return {"hit": counters["inductor"]["fxgraph_cache_hit"], "miss": counters["inductor"]["fxgraph_cache_miss"]}
