"""What the first allocating ATen operator costs after a stretch of tiny operations, under this process's allocator.

Alternates, on one thread, a gap of ``--gap-ms`` spent in one of three ways with one timed ``layer_norm`` over a
(121, 64) float32 tensor (an operator that allocates its result, as the fused call's operators do): spinning on
the clock; ``t.mul_(1.0000001)`` on a 4 KB tensor in a loop (each call wraps the Python scalar in a tensor: a small
aligned allocation and its free); ``t.mul_(t)`` in a loop (no scalar, no allocation). Run it once per allocator,
each its own process, with the tool's timing settings (``prepare_process``):

    python scripts/studies/allocation_churn_study.py
    GLIBC_TUNABLES=glibc.malloc.mxfast=0 python scripts/studies/allocation_churn_study.py
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 python scripts/studies/allocation_churn_study.py
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time

import torch
import torch.nn.functional as F

from cmgm_bench.machine.process_setup import prepare_process


def spend_gap(seconds: float, kind: str, small: torch.Tensor) -> None:
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        if kind == "scalar ops":
            small.mul_(1.0000001)
        elif kind == "tensor ops":
            small.mul_(small)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gap-ms", type=float, default=50.0)
    parser.add_argument("--pairs", type=int, default=40)
    args = parser.parse_args()
    prepare_process(1)
    gc.disable()  # a collection inside the timed call would be Python's cost, not the allocator's
    small, tokens = torch.randn(1024), torch.randn(121, 64)
    label = os.environ.get("LD_PRELOAD") or os.environ.get("GLIBC_TUNABLES") or "glibc, default settings"
    with torch.inference_mode():
        for _ in range(50):
            F.layer_norm(tokens, (64,))
        for kind in ("spin", "scalar ops", "tensor ops"):
            times = []
            for _ in range(args.pairs):
                small.fill_(1.0)
                spend_gap(args.gap_ms / 1e3, kind, small)
                started = time.perf_counter()
                F.layer_norm(tokens, (64,))
                times.append(time.perf_counter() - started)
            print(f"{label}: layer_norm after {args.gap_ms:g} ms of {kind}: {1e6 * statistics.median(times):.1f} us "
                  f"(median of {args.pairs})")


if __name__ == "__main__":
    main()
