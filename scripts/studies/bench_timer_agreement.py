"""Check the harness's timing loop against torch.utils.benchmark on the same callable.

In one process: eager, B=1, 64 x 28 x 28, 8 heads, float32 inference, 1 thread.
Alternates one-second harness and Timer measurements (the machine's speed
drifts over seconds, so the two must interleave), pools each side and prints
the pooled medians and their ratio. Usage:
python scripts/studies/bench_timer_agreement.py [--rounds 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy

import torch
import torch.utils.benchmark as benchmark

from cmgm_bench.workload.reference import make_inputs, reference_module
from cmgm_bench.stats import StopRule, summarize
from cmgm_bench.measure.timing import WallClock, collect_samples, warm_up


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    module = copy.deepcopy(reference_module(64, 8, 0, 28, 28)).eval()
    x, y = make_inputs(1, 64, 28, 28, 0)

    def call():
        with torch.inference_mode():
            return module(x, y)

    clock = WallClock()
    warm_up(call, clock)
    timer = benchmark.Timer(stmt="call()", globals={"call": call}, num_threads=args.threads)
    harness_samples, timer_measurements = [], []
    for _ in range(args.rounds):
        harness_samples += collect_samples(call, clock, StopRule(min_time_s=1.0, max_time_s=1.0, target_rel_iqr=0))
        timer_measurements.append(timer.blocked_autorange(min_run_time=1.0))
    harness = summarize(harness_samples).median
    reference = benchmark.Measurement.merge(timer_measurements)[0].median
    print(f"harness median {harness * 1e3:.3f} ms ({len(harness_samples)} calls)")
    print(f"Timer.blocked_autorange median {reference * 1e3:.3f} ms ({args.rounds} rounds merged)")
    print(f"harness / Timer = {harness / reference:.3f}")


if __name__ == "__main__":
    main()
