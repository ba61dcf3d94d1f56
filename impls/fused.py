"""``fused`` and ``fused-bf16``: an inference-only CMGM for the CPU with everything foldable folded.

Built from the reference module's weights at build time:

* the LayerNorm affine parameters are folded into the projections that follow
  them, and the attention scale into the query rows of ``qv``;
* each BatchNorm is folded into the convolution before it;
* in ``fwd`` mode the attention runs as one C++ kernel
  (``csrc/softmax_attention.cpp``): a few rows of ``softmax(q kᵀ)`` at a time
  in L1, multiplied by ``v`` there, the N x N matrix written once for the map;
  in ``feature`` mode it is one SDPA call (flash on the CPU, no N x N matrix),
  which measured faster than the same kernel without the matrix;
* the map branch ``ReLU(BN(conv3x3(A + Aᵀ)))`` runs as one C++ kernel
  (``csrc/fused_map.cpp``) that reads the attention matrix once, in mirrored
  pairs of cache-sized tiles, forms ``A + Aᵀ`` in the tile, and writes the map once.

``fused-bf16`` keeps the projections and the feature convolutions in bfloat16
(AMX on CPUs that have it) and stores the attention matrix in bfloat16; both
kernels compute and accumulate in float32.

The kernels are compiled on first use with ``torch.utils.cpp_extension`` (a
C++ compiler is needed; without one the cases are ``unsupported``).
"""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F

from cmgm_bench.registry import register

SOURCES = [Path(__file__).parent / "csrc" / name for name in ("fused_map.cpp", "softmax_attention.cpp", "bindings.cpp")]


@functools.lru_cache(maxsize=None)
def extension():
    from torch.utils import cpp_extension

    return cpp_extension.load(
        name="cmgm_fused_kernels",
        sources=[str(path) for path in SOURCES],
        extra_cflags=["-O3", "-march=native", "-fopenmp"],
        extra_ldflags=["-fopenmp"],
        verbose=False,
    )


def compiler_problem() -> str | None:
    """Why no C++ compiler is at hand to build the kernels, or ``None``."""
    compiler = os.environ.get("CXX", "c++")
    return None if shutil.which(compiler) else f"no C++ compiler ({compiler}) to build the fused kernels"


@functools.lru_cache(maxsize=None)
def extension_problem() -> str | None:
    """Why the fused kernels cannot be used here, or ``None``."""
    missing = compiler_problem()
    if missing:
        return missing
    try:
        extension()
    except Exception as exc:  # any build failure means: not here
        return f"the fused kernels failed to build: {str(exc).strip().splitlines()[-1][:200]}"
    return None


KERNEL_HEADS = (1, 2, 4, 8, 16)


def map_kernel_problem(case) -> str | None:
    """Why the map kernel cannot run ``case`` (it is compiled for 1, 2, 4, 8 and 16 heads)."""
    if case.heads not in KERNEL_HEADS:
        return f"the fused map kernel is compiled for {', '.join(map(str, KERNEL_HEADS))} heads, not {case.heads}"
    return extension_problem()


def fold_batchnorm(conv: torch.nn.Conv2d, bn: torch.nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``bn(conv(x))`` as one convolution (inference statistics)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    weight = conv.weight * scale.view(-1, 1, 1, 1)
    bias = (conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)) - bn.running_mean
    return weight, bias * scale + bn.bias


def fold_layernorm(norm: torch.nn.LayerNorm, linear: torch.nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``linear(norm(x))`` applied to the unscaled normalised ``x``."""
    weight = linear.weight * norm.weight.view(1, -1)
    bias = linear.weight @ norm.bias + (linear.bias if linear.bias is not None else 0)
    return weight, bias


class FusedCMGM:
    """The folded parameters and the forward pass; derived from a reference module at build time."""

    def __init__(self, module, dtype: torch.dtype):
        with torch.no_grad():
            C, h = module.dim, module.num_heads
            qv_w, qv_b = fold_layernorm(module.lnx, module.qv)
            qv_w, qv_b = qv_w.clone(), qv_b.clone()
            qv_w[:C] *= module.scale
            qv_b[:C] *= module.scale
            k_w, k_b = fold_layernorm(module.lny, module.k)
            c1_w, c1_b = fold_batchnorm(module.conv2[0], module.conv2[1])
            c2_w, c2_b = fold_batchnorm(module.conv2[3], module.conv2[4])
            self.map_w, self.map_b = (t.float().contiguous() for t in fold_batchnorm(module.conv, module.bn))
            cast = lambda t: t.to(dtype).contiguous()
            self.qv_w, self.qv_b, self.k_w, self.k_b = cast(qv_w), cast(qv_b), cast(k_w), cast(k_b)
            self.proj_w, self.proj_b = cast(module.proj.weight), cast(module.proj.bias)
            self.c1_w = c1_w.to(dtype).contiguous(memory_format=torch.channels_last)
            self.c2_w = c2_w.to(dtype).contiguous(memory_format=torch.channels_last)
            self.c1_b, self.c2_b = cast(c1_b), cast(c2_b)
        self.dim, self.heads, self.dtype = C, h, dtype
        self.eps_x, self.eps_y = module.lnx.eps, module.lny.eps

    def __call__(self, x: torch.Tensor, y: torch.Tensor, want_map: bool):
        B, C, H, W = x.shape
        h, N, d = self.heads, H * W, C // self.heads
        x_tokens = x.flatten(2).transpose(1, 2)
        xn = F.layer_norm(x_tokens, (C,), eps=self.eps_x).to(self.dtype)
        yn = F.layer_norm(y.flatten(2).transpose(1, 2), (C,), eps=self.eps_y).to(self.dtype)
        k = F.linear(yn, self.k_w, self.k_b).view(B, N, h, d).transpose(1, 2)
        q, v = F.linear(xn, self.qv_w, self.qv_b).view(B, N, 2, h, d).permute(2, 0, 3, 1, 4)
        if want_map:
            mixed, attn = extension().softmax_attention(q, k, v, True, self.dtype)  # widened to float32 inside
            mixed = mixed.to(self.dtype)
        else:  # no N x N matrix at all: ATen's flash kernel measured faster than ours without one
            mixed = F.scaled_dot_product_attention(q, k, v, scale=1.0).transpose(1, 2).reshape(B, N, C)
        fused = F.linear(mixed, self.proj_w, self.proj_b) + x_tokens.to(self.dtype)
        # (B, N, C) tokens are an NHWC image: view them as channels-last (B, C, H, W).
        fused = fused.view(B, H, W, C).permute(0, 3, 1, 2)
        g = F.relu(F.conv2d(fused, self.c1_w, self.c1_b, padding=1))
        g = F.relu(F.conv2d(g, self.c2_w, self.c2_b, padding=1))
        out = (g + fused).float()
        if not want_map:
            return out, None
        return out, extension().fused_map(attn, self.map_w, self.map_b)


def _register(name: str, dtype: torch.dtype, label: str, description: str):
    @register(
        name,
        description=description,
        devices=("cpu",),
        modes=("fwd", "feature"),
        dtype=label,
        check=lambda case: map_kernel_problem(case) if case.mode == "fwd" else None,
    )
    def build(module, case):
        fused = FusedCMGM(module, dtype)
        want_map = case.mode != "feature"
        return lambda x, y: fused(x, y, want_map)

    return build


build_fp32 = _register("fused", torch.float32, "float32", "folded LN/BN/scale, C++ row-blocked attention and one-pass map kernels; float32")
build_bf16 = _register("fused-bf16", torch.bfloat16, "bfloat16", "as fused, with projections, convs and the stored attention matrix in bfloat16; kernels accumulate in float32")
