"""Does a standard workload timed alongside a case cancel this host's run-to-run speed swings?

Runs ``--processes`` separate processes one after another. Each times eager at
``--res`` (B=1, 64 channels, 8 heads, fwd, 1 thread) for ``--seconds``,
alternating each call of the case with one call of each standard workload: a
square float32 matmul (compute-bound) and a 64 MiB copy (memory-bound). Per
process it takes the median case time, the median of each workload, and the
median of the per-call ratio case / workload. Across processes it prints the
spread (max / min and the coefficient of variation) of the raw medians and of
each normalised one: a normaliser helps if the normalised spread is much
smaller than the raw one.

Usage: python scripts/studies/speed_normalisation_study.py [--processes 10] [--seconds 6] [--res 28]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = """
import json, statistics, sys, time
import torch
from cmgm_bench import registry
from cmgm_bench.config.cases import Case
from cmgm_bench.measure.prepare import prepare_case
from cmgm_bench.workload.modes import autograd_context

res, seconds = int(sys.argv[1]), float(sys.argv[2])
torch.set_num_threads(1)
registry.load_entry_points()
case = Case("eager", "cpu", "float32", "fwd", 1, res, res, 8, 64)
step = prepare_case(case, registry.get("eager"), 0).step
a, b = torch.randn(512, 512), torch.randn(512, 512)
src = torch.ones(16 * 2**20)
dst = torch.empty_like(src)
workloads = {"matmul": lambda: torch.mm(a, b), "copy": lambda: dst.copy_(src)}

def timed(fn):
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started

times = {"case": [], **{name: [] for name in workloads}}
with autograd_context("fwd"):
    for _ in range(3):
        step(); [fn() for fn in workloads.values()]
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        times["case"].append(timed(step))
        for name, fn in workloads.items():
            times[name].append(timed(fn))
result = {name: statistics.median(values) for name, values in times.items()}
for name in workloads:
    result["case/" + name] = statistics.median(c / w for c, w in zip(times["case"], times[name]))
result["case/(matmul+copy)"] = statistics.median(c / (m + p) for c, m, p in zip(times["case"], times["matmul"], times["copy"]))
print(json.dumps(result))
"""


def spread(values: list[float]) -> str:
    return f"max/min {max(values) / min(values):.3f}, CV {100 * statistics.stdev(values) / statistics.mean(values):.1f} %"


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--processes", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--res", type=int, default=28)
    args = parser.parse_args()
    results = []
    for _ in range(args.processes):
        out = subprocess.run([sys.executable, "-c", CHILD, str(args.res), str(args.seconds)], capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print("  " + ", ".join(f"{k} {v * 1e3:.2f} ms" if "/" not in k else f"{k} {v:.3f}" for k, v in results[-1].items()), flush=True)
    for key in results[0]:
        print(f"{key:22s} {spread([r[key] for r in results])}")


if __name__ == "__main__":
    main()
