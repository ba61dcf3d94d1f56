"""Where ``fused`` pays for an idle gap: each stage's time back to back and right after ``--gap-ms`` of sleep.

The stages of one ``fwd`` call, timestamped in order: the projections (ATen's layer norms and linears), the
attention kernel, the feature branch (ATen's output projection and two convolutions), the map kernel. Calls
alternate between right after the previous one and after a sleep, in this process; prints each stage's median.

    python scripts/studies/fused_stages_after_idle.py --threads 2 --res 11 --gap-ms 50 --pairs 200
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from cmgm_bench.machine.process_setup import prepare_process
from cmgm_bench.workload.reference import make_inputs, reference_module
from cmgm_bench_impls.builders import kernels
from cmgm_bench_impls.fused import FusedCMGM

STAGES = ("projections", "attention kernel", "feature branch", "map kernel", "whole call")


def timed_call(fused: FusedCMGM, x, y) -> list[float]:
    """Seconds of each stage of one call, and of the whole call."""
    H, W = x.shape[-2:]
    marks = [time.perf_counter()]
    x_tokens, q, k, v = fused.projections(x, y)
    marks.append(time.perf_counter())
    mixed, attn = fused.attention(q, k, v, "kernel")
    marks.append(time.perf_counter())
    fused.feature(mixed, x_tokens, H, W)
    marks.append(time.perf_counter())
    fused.attention_map(attn, "kernel")
    marks.append(time.perf_counter())
    return [b - a for a, b in zip(marks, marks[1:])] + [marks[-1] - marks[0]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--res", type=int, default=11)
    parser.add_argument("--gap-ms", type=float, default=50.0)
    parser.add_argument("--pairs", type=int, default=200)
    args = parser.parse_args()
    prepare_process(args.threads)
    module = reference_module(64, 8, 0, args.res, args.res).eval()
    x, y = make_inputs(1, 64, args.res, args.res, 0)
    fused = FusedCMGM(module, torch.float32)
    fused.use_kernels(kernels.load(kernels.best_target())[0], {"attention": "kernel", "map": "kernel"})
    back_to_back, after_gap = [], []
    with torch.inference_mode():
        for _ in range(20):
            timed_call(fused, x, y)
        for _ in range(args.pairs):
            time.sleep(args.gap_ms / 1e3)
            after_gap.append(timed_call(fused, x, y))
            back_to_back.append(timed_call(fused, x, y))
    print(f"fused fwd B=1 64x{args.res}x{args.res}, 8 heads, {torch.get_num_threads()} thread(s), medians of {args.pairs} (ms)")
    print(f"{'stage':18s} {'back to back':>13s} {f'after {args.gap_ms:g} ms':>14s}")
    for index, stage in enumerate(STAGES):
        quiet = 1e3 * statistics.median(call[index] for call in back_to_back)
        idle = 1e3 * statistics.median(call[index] for call in after_gap)
        print(f"{stage:18s} {quiet:13.3f} {idle:14.3f}")


if __name__ == "__main__":
    main()
