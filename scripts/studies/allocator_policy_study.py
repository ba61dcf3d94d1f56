"""How much of a case's time, and of its spread between processes, is page faults?

Runs ``--processes`` rounds; each round starts one process per allocator policy,
in an order that rotates from round to round (so a slow period of the host falls
on every policy alike). Each process times one implementation at ``--res`` (B=1,
64 channels, 8 heads, fwd, 1 thread) for ``--seconds`` after three warm-up calls,
and reports its median call time and its minor page faults per call. Policies:

* ``trim-64MiB``: glibc's own steady state, which the timing commands pinned
  before: mmap threshold 32 MiB, the heap's free top handed back to the kernel
  above 64 MiB, 4 KiB pages;
* ``never-trim``: the same threshold, the heap never trimmed, 4 KiB pages;
* ``never-trim+thp``: what :mod:`cmgm_bench.measure.allocator` sets up now: the
  heap never trimmed, and PyTorch's blocks of 2 MiB or more advised onto
  transparent huge pages (``THP_MEM_ALLOC_ENABLE=1``).

Per policy it prints the median over processes, the spread across processes
(max/min, coefficient of variation) and the median faults per call.

Usage: python scripts/studies/allocator_policy_study.py [--processes 6] [--seconds 3] [--res 28] [--impl eager]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from cmgm_bench.measure import allocator

CHILD = """
import json, resource, statistics, sys, time
import torch
from cmgm_bench import registry
from cmgm_bench.config.cases import Case
from cmgm_bench.measure import allocator
from cmgm_bench.measure.prepare import prepare_case
from cmgm_bench.workload.modes import autograd_context

impl, res, seconds, policy = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
torch.set_num_threads(1)
allocator.pin_for_timing()
if policy == "trim-64MiB":
    allocator.set_thresholds(allocator.STEADY_MMAP_THRESHOLD, 2 * allocator.STEADY_MMAP_THRESHOLD)
registry.load_entry_points()
step = prepare_case(Case(impl, "cpu", "float32", "fwd", 1, res, res, 8, 64), registry.get(impl), 0).step
times = []
with autograd_context("fwd"):
    for _ in range(3):
        step()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
print(json.dumps({"median_ms": 1e3 * statistics.median(times), "faults_per_call": faults / len(times)}))
"""

POLICIES = {"trim-64MiB": {allocator.THP_ENV: "0"}, "never-trim": {allocator.THP_ENV: "0"}, "never-trim+thp": {allocator.THP_ENV: "1"}}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--processes", type=int, default=6, help="processes per policy")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--res", type=int, default=28)
    parser.add_argument("--impl", default="eager")
    args = parser.parse_args()
    names = list(POLICIES)
    results = {name: [] for name in names}
    for round_index in range(args.processes):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            command = [sys.executable, "-c", CHILD, args.impl, str(args.res), str(args.seconds), name]
            out = subprocess.run(command, env={**os.environ, **POLICIES[name]}, capture_output=True, text=True, check=True)
            results[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"  {name:14s} {results[name][-1]}", flush=True)
    print(f"{args.impl} fwd {args.res}x{args.res}, 1 thread, {args.processes} processes per policy")
    print("policy          median ms  max/min  CV      faults/call")
    for name, rows in results.items():
        medians = [row["median_ms"] for row in rows]
        cv = 100 * statistics.stdev(medians) / statistics.mean(medians)
        faults = statistics.median(row["faults_per_call"] for row in rows)
        print(f"{name:14s}  {statistics.median(medians):9.1f}  {max(medians) / min(medians):7.3f}  {cv:4.1f} %  {faults:11.0f}")


if __name__ == "__main__":
    main()
