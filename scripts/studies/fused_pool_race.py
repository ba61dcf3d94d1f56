"""``fused`` fwd on the kernels' pool against the same call as torch operators on PyTorch's OpenMP pool, paired.

One process; each round runs every variant in a shuffled order: five calls back to back (their median), then
``--gap-ms`` of sleep and one call (the after-idle time). Variants: the call as one operator on the kernels' pool
(``FusedCMGM.on_pool``) with the attention stage on the kernel or on ATen's matmuls, and the attention kernel with
the map recomputing its matrix (with the N x N matrices written through the cache and, on targets with streaming
stores, with streaming stores); and the call as a sequence of torch operators (``FusedCMGM.by_operators``, the kernels
for both stages). Prints each variant's medians over the rounds. Start a busy neighbour beside it to see what a descheduled worker costs:

    python scripts/studies/fused_pool_race.py --res 11 --threads 2 --rounds 60
    taskset -c 0 python -c "while True: pass" &   # then the same command; kill the neighbour after
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from cmgm_bench.machine.process_setup import prepare_process
from cmgm_bench.workload.reference import make_inputs, reference_module
from cmgm_bench_impls.builders import kernels
from cmgm_bench_impls.fused import FusedCMGM


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--res", type=int, default=11)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gap-ms", type=float, default=50.0)
    parser.add_argument("--rounds", type=int, default=60)
    args = parser.parse_args()
    prepare_process(args.threads)
    extension, _ = kernels.load(kernels.best_target())
    module = reference_module(64, 8, 0, args.res, args.res).eval()
    x, y = make_inputs(1, 64, args.res, args.res, 0)
    variants = {}
    on_pool = [("pool, attention kernel", "kernel", "kernel", "cached"), ("pool, attention ATen", "aten", "kernel", "cached"),
               ("pool, map recomputed", "kernel", "recompute", "cached")]
    if kernels.TARGETS[kernels.best_target()].streaming_stores:
        on_pool += [("pool, kernel, streaming stores", "kernel", "kernel", "streaming"),
                    ("pool, recomputed, streaming", "kernel", "recompute", "streaming")]
    for name, attention, attention_map, stores in on_pool:
        fused = FusedCMGM(module, torch.float32)
        fused.use_kernels(extension, {"attention": attention, "map": attention_map, "stores": stores})
        variants[name] = fused.on_pool
    operators = FusedCMGM(module, torch.float32)
    operators.use_kernels(extension, {"attention": "kernel", "map": "kernel"})
    variants["torch operators, kernels"] = lambda x, y: operators.by_operators(x, y, True)
    back_to_back = {name: [] for name in variants}
    after_idle = {name: [] for name in variants}
    with torch.inference_mode():
        for _ in range(args.rounds):
            for name in random.sample(list(variants), len(variants)):
                call = variants[name]
                times = []
                for _ in range(6):
                    started = time.perf_counter()
                    call(x, y)
                    times.append(time.perf_counter() - started)
                back_to_back[name].append(statistics.median(times[1:]))
                time.sleep(args.gap_ms / 1e3)
                started = time.perf_counter()
                call(x, y)
                after_idle[name].append(time.perf_counter() - started)
    print(f"fused fwd {args.res}x{args.res}, {args.threads} threads, medians of {args.rounds} rounds")
    for name in variants:
        print(f"{name:>30}: back to back {1e3 * statistics.median(back_to_back[name]):8.3f} ms, "
              f"after {args.gap_ms:g} ms idle {1e3 * statistics.median(after_idle[name]):8.3f} ms")


if __name__ == "__main__":
    main()
