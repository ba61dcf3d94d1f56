"""The map kernel's direct 3x3 convolution against its Winograd F(2x2,3x3) variant, one target, one process.

Accuracy against a float64 convolution for every supported head count and a few odd sizes,
then the two operators (``fused_map``, ``fused_map_winograd``) timed in alternating blocks at
PGNet's grids, 8 heads, 1 and 2 threads: medians of 15 rounds and of the per-round ratio.

    python scripts/winograd_kernel_race.py --target x86-64-v3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from impls import kernels


def worst_errors(ops) -> dict[str, float]:
    worst = {"direct": 0.0, "winograd": 0.0}
    for heads in (1, 2, 4, 8, 16):
        for n in (5, 33, 70, 130):
            attn = torch.softmax(torch.randn(2, heads, n, n), dim=-1)
            weight, bias = torch.randn(heads, heads, 3, 3), torch.rand(heads)  # a positive bias: the map is not all zero
            wide = (attn + attn.transpose(-1, -2)).double()
            want = torch.relu(torch.nn.functional.conv2d(wide, weight.double(), bias.double(), padding=1))
            for name, operator in (("direct", ops.fused_map), ("winograd", ops.fused_map_winograd)):
                got = operator(attn, weight, bias).double()
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
                worst[name] = max(worst[name], ((got - want).norm() / want.norm()).item())
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default=kernels.best_target(), choices=list(kernels.TARGETS))
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    ops, _ = kernels.load(args.target)
    print(f"{args.target}: worst relative error against float64 {worst_errors(ops)}")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for side in (11, 28, 48):
            n = side * side
            attn = torch.softmax(torch.randn(1, 8, n, n), dim=-1)
            weight, bias = torch.randn(8, 8, 3, 3), torch.rand(8)
            reps = max(1, 20_000 // n)
            times = {"direct": [], "winograd": []}
            for _ in range(args.rounds):
                for name, operator in (("direct", ops.fused_map), ("winograd", ops.fused_map_winograd)):
                    started = time.perf_counter()
                    for _ in range(reps):
                        operator(attn, weight, bias)
                    times[name].append((time.perf_counter() - started) / reps)
            ratio = statistics.median(w / d for w, d in zip(times["winograd"], times["direct"]))
            print(f"threads {threads}  {side}x{side}  direct {1e3 * statistics.median(times['direct']):8.3f} ms  "
                  f"winograd {1e3 * statistics.median(times['winograd']):8.3f} ms  ratio {ratio:.3f}", flush=True)


if __name__ == "__main__":
    main()
