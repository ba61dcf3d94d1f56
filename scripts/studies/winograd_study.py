"""Winograd minimal filtering for the map's 3x3 convolution: is it float32-accurate, and what would it save?

The map branch computes ReLU(conv3x3(A + Aᵀ)) over an h-channel N x N image
(h in, h out: 8 x 8 filters at PGNet's shape). Winograd's F(m x m, 3 x 3)
computes an m x m output tile from an (m+2) x (m+2) input tile with (m+2)²
multiplications per input/output channel pair instead of 9 m²: F(2x2, 3x3)
2.25x fewer, F(4x4, 3x3) 4x fewer, at the price of input and output transforms
(additions, and for F(4x4) multiplications by small constants) whose cost does
not shrink with the channel count, and of rounding error that grows with m.

This script computes the convolution three ways in float32 on the shape's map
(random softmax attention, the reference module's map weights with BatchNorm
folded, as ``fused`` uses them): ATen's direct ``conv2d``, and F(2x2,3x3) and
F(4x4,3x3) written with tensor operations (the transforms as small matrix
products over all tiles, the channel mixing as one batched matmul per
Winograd point). It prints each one's relative error against a float64 direct
convolution, its multiplication count, and its median time over interleaved
rounds in one process. The tensor-level prototypes materialise every tile's
transform in memory, so their times bound what a transform costs when it is
not fused into a kernel; they are not what a register-blocked kernel would take.

    python scripts/studies/winograd_study.py --res 28 --heads 8 --threads 1 [--rounds 9]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from cmgm_bench.measure import allocator
from cmgm_bench.workload.reference import reference_module
from cmgm_bench_impls.fused import FusedCMGM

# Lavin & Gray's transforms, for correlation (what conv2d computes): Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A.
F2 = {
    "BT": [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
    "G": [[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]],
    "AT": [[1, 1, 1, 0], [0, 1, -1, -1]],
}
F4 = {
    "BT": [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
           [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
    "G": [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
          [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
    "AT": [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
}


class Winograd:
    """F(m x m, 3 x 3) for a (1, C, N, N) image and (K, C, 3, 3) filters, padding 1, in the filters' dtype."""

    def __init__(self, transforms: dict, weight: torch.Tensor, bias: torch.Tensor):
        dtype = weight.dtype
        self.BT, self.AT = (torch.tensor(transforms[key], dtype=dtype) for key in ("BT", "AT"))
        G = torch.tensor(transforms["G"], dtype=dtype)
        self.tile = self.BT.shape[0]
        self.m = self.AT.shape[0]
        # U[ξ, ν, k, c] = (G g Gᵀ)[ξ, ν] for filter (k, c): one K x C matrix per Winograd point.
        self.U = torch.einsum("xi,kcij,yj->xykc", G, weight, G).contiguous()
        self.bias = bias

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        _, C, N, _ = image.shape
        m, tile = self.m, self.tile
        tiles = -(-N // m)
        padded = F.pad(image[0], (1, tiles * m + 1 - N, 1, tiles * m + 1 - N))
        d = padded.unfold(1, tile, m).unfold(2, tile, m)  # C, T, T, tile, tile
        V = torch.einsum("xi,ctsij,yj->xycts", self.BT, d, self.BT).reshape(tile, tile, C, -1)
        M = torch.matmul(self.U, V)  # tile, tile, K, T*T: one K x C by C x T² product per point
        Y = torch.einsum("ax,xykt,by->ktab", self.AT, M, self.AT)  # K, T*T, m, m
        K = Y.shape[0]
        out = Y.reshape(K, tiles, tiles, m, m).permute(0, 1, 3, 2, 4).reshape(K, tiles * m, tiles * m)
        return (out[:, :N, :N] + self.bias[:, None, None]).unsqueeze(0)


def relative_error(value: torch.Tensor, truth: torch.Tensor) -> float:
    return float((value.double() - truth).norm() / truth.norm())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--res", type=int, default=28, help="square token grid side")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    allocator.pin_for_timing()
    torch.manual_seed(0)

    h, n = args.heads, args.res * args.res
    fused = FusedCMGM(reference_module(args.dim, h, 0, args.res, args.res).eval(), torch.float32)
    weight, bias = fused.map_w, fused.map_b
    q, k = (torch.randn(1, h, n, args.dim // h) for _ in range(2))
    attn = torch.softmax(q @ k.transpose(-1, -2) / (args.dim // h) ** 0.5, dim=-1)
    image = attn + attn.transpose(-1, -2)
    truth = F.conv2d(image.double(), weight.double(), bias.double(), padding=1)

    direct_multiplications = 9 * h * h * n * n
    winograd_2x2, winograd_4x4 = Winograd(F2, weight, bias), Winograd(F4, weight, bias)
    methods = {
        "direct (ATen conv2d)": (lambda: F.conv2d(image, weight, bias, padding=1), direct_multiplications),
        "F(2x2,3x3)": (lambda: winograd_2x2(image), 16 * h * h * (-(-n // 2)) ** 2),
        "F(4x4,3x3)": (lambda: winograd_4x4(image), 36 * h * h * (-(-n // 4)) ** 2),
    }
    times = {name: [] for name in methods}
    with torch.inference_mode():
        errors = {name: relative_error(call(), truth) for name, (call, _) in methods.items()}
        for _ in range(args.rounds):
            for name, (call, _) in methods.items():
                started = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - started)
    print(f"map conv3x3: {h} -> {h} channels, {n} x {n} image, {args.threads} thread(s), {args.rounds} interleaved rounds")
    print(f"{'method':22s} {'rel. error vs float64':>22s} {'multiplications':>16s} {'vs direct':>9s} {'median ms':>10s}")
    for name, (_, multiplications) in methods.items():
        print(f"{name:22s} {errors[name]:22.2e} {multiplications:16,d} {direct_multiplications / multiplications:8.2f}x "
              f"{1e3 * statistics.median(times[name]):10.1f}")


if __name__ == "__main__":
    main()
