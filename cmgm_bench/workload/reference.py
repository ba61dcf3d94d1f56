"""Seeded weights and inputs shared by every implementation of a case.

One reference module per (dim, heads, seed), with non-trivial BatchNorm
running statistics and affine parameters so that a mistake in folding or in
train/eval handling shows in the numbers; inputs are standard normal draws
from a seed derived from the shape, never zeros.
"""

from __future__ import annotations

import functools

import torch

from cmgm_bench.workload.model import CMGM


def _derived_seed(*parts: int) -> int:
    seed = 0x9E3779B9
    for part in parts:
        seed = (seed * 1_000_003 + int(part)) % (2**63 - 1)
    return seed


def randomize_batchnorm(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Give every BatchNorm random running mean/var and affine parameters."""
    for bn in module.modules():
        if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
            n = bn.num_features
            with torch.no_grad():
                bn.running_mean.copy_(torch.randn(n, generator=generator) * 0.5)
                bn.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
                bn.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                bn.bias.copy_(torch.randn(n, generator=generator) * 0.2)


def calibrate_map_batchnorm(module: CMGM, height: int, width: int, generator: torch.Generator) -> None:
    """Set the map branch's BatchNorm statistics from data, as training would.

    ``conv(attn + attnᵀ)`` is its bias plus terms of order 1/N, so statistics
    drawn like the feature branch's would send whole channels below zero and
    the ReLU would return an all-zero map. Here the running mean and variance
    come from the conv output on a seeded calibration batch at this grid, then
    are perturbed (mean lowered by half a standard deviation, variance scaled
    by 0.5-2x) so the map is non-zero, cut by the ReLU in places, and an
    implementation that confuses batch and running statistics shows.

    That variance falls with N, below BatchNorm's ``eps`` from about 11x11
    tokens (1-2 % of it at 28x28, 0.1-0.3 % at 48x48), where ``eps`` would
    flatten each channel to ReLU(its bias): all zero or nearly constant, which
    hides a wrong map. The affine weight is therefore scaled by
    ``sqrt((running_var + eps) / running_var)``, keeping the normalised spread
    of order one at every grid.
    """
    x = torch.randn(2, module.dim, height, width, generator=generator)
    y = torch.randn(2, module.dim, height, width, generator=generator)
    with torch.no_grad():
        _, attn = module.fuse(x, y)
        pre_norm = module.conv(attn + attn.transpose(-1, -2))
        mean = pre_norm.mean(dim=(0, 2, 3))
        var = pre_norm.var(dim=(0, 2, 3))
        h = module.num_heads
        module.bn.running_mean.copy_(mean - 0.5 * var.sqrt())
        module.bn.running_var.copy_(var * (torch.rand(h, generator=generator) * 1.5 + 0.5))
        module.bn.weight.mul_(torch.sqrt((module.bn.running_var + module.bn.eps) / module.bn.running_var))


@functools.lru_cache(maxsize=8)
def reference_module(dim: int, heads: int, seed: int, height: int, width: int) -> CMGM:
    """The float32 CPU reference for one case. Callers must copy it before changing it.

    Weights depend on (dim, heads, seed) only; the map branch's BatchNorm
    statistics are calibrated for the (height, width) grid.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_derived_seed(seed, dim, heads))
        module = CMGM(dim=dim, num_heads=heads)
    generator = torch.Generator().manual_seed(_derived_seed(seed, dim, heads, 1))
    randomize_batchnorm(module, generator)
    calibrate_map_batchnorm(module.eval(), height, width, generator)
    return module


def make_inputs(batch: int, dim: int, height: int, width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(_derived_seed(seed, batch, dim, height, width))
    x = torch.randn(batch, dim, height, width, generator=generator)
    y = torch.randn(batch, dim, height, width, generator=generator)
    return x, y
