"""Where the ``fused`` implementation's time goes, next to this machine's ceilings.

Times, interleaved round by round in one process (this host's speed drifts
by up to 2x within seconds, so only numbers from the same rounds are
compared): the whole ``eager`` and ``fused`` calls (the latter with its N x N
matrices written through the cache and, where the target has them, with
streaming stores), each fused kernel alone,
ATen's equivalents, and two ceilings (an MKL float32 matmul and a 20 MB fill).
Prints median and minimum per item, with GFLOP/s and GB/s where they apply.

    python scripts/studies/fused_breakdown.py --threads 1 --res 28 --heads 8 [--target x86-64-v3]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from cmgm_bench.measure import allocator
from cmgm_bench.workload.reference import make_inputs, reference_module
from cmgm_bench_impls.builders import kernels as kernel_builds
from cmgm_bench_impls.fused import FusedCMGM


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--res", type=int, default=28, help="square token grid side")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--target", default=kernel_builds.best_target(), help="kernel build target (x86-64-v3: the AVX2 path)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    allocator.pin_for_timing()  # as `cmgm-bench run` times

    C, h, n = args.dim, args.heads, args.res * args.res
    d = C // h
    module = reference_module(C, h, 0, args.res, args.res).eval()
    x, y = make_inputs(1, C, args.res, args.res, 0)
    fused = FusedCMGM(module, torch.float32)
    kernels = kernel_builds.load(args.target)[0]
    fused.use_kernels(kernels, {"attention": "kernel", "map": "kernel"})
    q, k, v = (torch.randn(1, h, n, d) for _ in range(3))
    attn = torch.softmax(q @ k.transpose(-1, -2), dim=-1)
    weight, bias = fused.map_w, fused.map_b
    square = torch.randn(1024, 1024)
    buffer = torch.empty(h, n, n)

    map_macs = h * h * 9 * n * n
    attn_macs = 2 * h * n * n * d
    matrix_bytes = 4 * h * n * n
    items = {  # name: (call, FLOPs, bytes moved at least)
        "eager fwd (whole call)": (lambda: module(x, y), None, None),
        "fused fwd (whole call)": (lambda: fused(x, y, True), None, None),
        "fused feature (whole call)": (lambda: fused(x, y, False), None, None),
        "map kernel: ReLU(conv3x3(A+A^T))": (lambda: kernels.fused_map(attn, weight, bias), 2 * map_macs, 2 * matrix_bytes),
        "ATen: A+A^T, conv2d, relu": (lambda: F.relu(F.conv2d(attn + attn.transpose(-1, -2), weight, bias, padding=1)), 2 * map_macs, None),
        "attention kernel, A written": (lambda: kernels.softmax_attention(q, k, v, True, torch.float32), 2 * attn_macs, matrix_bytes),
        "attention kernel, no A": (lambda: kernels.softmax_attention(q, k, v, False, torch.float32), 2 * attn_macs, None),
        "ATen: softmax(q k^T) v": (lambda: torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v, 2 * attn_macs, None),
        "ATen: SDPA (flash, CPU)": (lambda: F.scaled_dot_product_attention(q, k, v), 2 * attn_macs, None),
        "ceiling: MKL matmul 1024^3": (lambda: square @ square, 2 * 1024**3, None),
        "ceiling: fill one N x N matrix": (lambda: buffer.fill_(1.0), None, matrix_bytes),
    }
    if kernel_builds.TARGETS[args.target].streaming_stores:
        streamed = FusedCMGM(module, torch.float32)
        streamed.use_kernels(kernels, {"attention": "kernel", "map": "kernel", "stores": "streaming"})
        items["fused fwd, streaming stores"] = (lambda: streamed(x, y, True), None, None)
        items["map kernel, streaming stores"] = (lambda: kernels.fused_map(attn, weight, bias, True), 2 * map_macs, 2 * matrix_bytes)
    times = {name: [] for name in items}
    with torch.inference_mode():
        for call, _, _ in items.values():
            call()
        for _ in range(args.rounds):
            for name, (call, _, _) in items.items():
                started = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - started)

    print(f"B=1, {C}x{args.res}x{args.res}, {h} heads, {args.threads} thread(s), {args.rounds} interleaved rounds")
    print(f"{'item':36s} {'median ms':>10s} {'min ms':>8s} {'GFLOP/s':>8s} {'GB/s':>6s}")
    for name, (_, flops, moved) in items.items():
        median = sorted(times[name])[len(times[name]) // 2]
        best = min(times[name])
        rate = f"{flops / median / 1e9:8.1f}" if flops else f"{'':8s}"
        bandwidth = f"{moved / median / 1e9:6.1f}" if moved else ""
        print(f"{name:36s} {median * 1e3:10.2f} {best * 1e3:8.2f} {rate} {bandwidth}")


if __name__ == "__main__":
    main()
