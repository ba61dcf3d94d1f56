"""What a call costs after its thread pool sat idle: back to back against after a gap, per OpenMP wait policy.

Times one implementation's step at one shape with 2 threads, alternating a call right after the previous one
and a call after ``--gap-ms`` of sleep, in this process, and reads the CPU time the process spends while its
calling thread sleeps through each gap: what the implementation's pool threads do while idle (about the gap
itself: they spin through it; near zero: they sleep). Run it once per environment to compare OpenMP's wait
policies (``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT`` must be set before the runtime loads, so each its own process).

    python scripts/studies/after_idle_study.py --impl fused --res 11 --threads 2 --gap-ms 50 --pairs 300 [--burst 1] [--idle spin]
    OMP_WAIT_POLICY=active python scripts/studies/after_idle_study.py ...
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from cmgm_bench import registry
from cmgm_bench.config.cases import Case
from cmgm_bench.machine.process_setup import prepare_process
from cmgm_bench.measure.prepare import prepare_case
from cmgm_bench.workload.modes import autograd_context


GAP_WORK = {"vector": torch.randn(1024), "stream": torch.randn(4 << 20)}  # 4 KB, 16 MB


def wait_through_gap(seconds: float, idle: str) -> None:
    if idle == "sleep":
        time.sleep(seconds)
        return
    work = GAP_WORK.get(idle)
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        if work is not None:
            work.mul_(1.0000001)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", default="fused")
    parser.add_argument("--mode", default="fwd")
    parser.add_argument("--res", type=int, default=11)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gap-ms", type=float, default=50.0)
    parser.add_argument("--pairs", type=int, default=300)
    parser.add_argument("--burst", type=int, default=2, help=(
        "Calls after each gap: the first is timed as after idle, the rest as back to back; 1 times calls that each "
        "follow a gap (as ab --gap-ms does), 2 or more calls that come in bursts."))
    parser.add_argument("--idle", choices=("sleep", "spin", "vector", "stream"), default="sleep", help=(
        "How the calling thread spends each gap: sleep (its core may halt, as a server's does between requests); "
        "spin on the clock (its core stays busy), which separates what a halted core costs from what the pool does; "
        "vector: small vector operations (a 4 KB tensor, the vector units busy, little memory); stream: the same over "
        "16 MB (the caches refilled with other data)."))
    args = parser.parse_args()
    prepare_process(args.threads)
    case = Case(args.impl, "cpu", registry.get(args.impl).dtype, args.mode, 1, args.res, args.res, 8, 64)
    step = prepare_case(case, registry.get(args.impl), seed=0).step
    back_to_back, after_gap, idle_cpu = [], [], []
    with autograd_context(args.mode):
        for _ in range(20):
            step()
        for _ in range(args.pairs):
            cpu_before = time.process_time()
            wait_through_gap(args.gap_ms / 1e3, args.idle)
            idle_cpu.append(time.process_time() - cpu_before)
            for index in range(args.burst):
                started = time.perf_counter()
                step()
                (after_gap if index == 0 else back_to_back).append(time.perf_counter() - started)
        if not back_to_back:  # bursts of one call: the back-to-back figure from a burst of its own
            for _ in range(args.pairs):
                started = time.perf_counter()
                step()
                back_to_back.append(time.perf_counter() - started)
    quiet, idle = statistics.median(back_to_back) * 1e3, statistics.median(after_gap) * 1e3
    policy = ", ".join(f"{k}={os.environ[k]}" for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if k in os.environ) or "default"
    print(f"{args.impl} {args.mode} {args.res}x{args.res}, {torch.get_num_threads()} threads, {policy}, "
          f"bursts of {args.burst}, gaps {args.idle}: back to back {quiet:.3f} ms, "
          f"after {args.gap_ms:g} ms idle {idle:.3f} ms ({idle / quiet:.2f}x), "
          f"CPU while idle {1e3 * statistics.median(idle_cpu):.2f} ms per gap; medians of {args.pairs}")


if __name__ == "__main__":
    main()
