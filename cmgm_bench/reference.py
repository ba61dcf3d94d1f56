"""Seeded weights and inputs shared by every implementation of a case.

One reference module per (dim, heads, seed), with non-trivial BatchNorm
running statistics and affine parameters so that a mistake in folding or in
train/eval handling shows in the numbers; inputs are standard normal draws
from a seed derived from the shape, never zeros.
"""

from __future__ import annotations

import functools

import torch

from impls.eager import CMGM


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


def scale_map_batchnorm(module: CMGM, generator: torch.Generator) -> None:
    """Put the map branch's BatchNorm on the scale of what it normalises.

    Softmax rows sum to 1, so ``conv(attn + attnᵀ)`` is its bias plus terms of
    order 1/N. Statistics drawn like the feature branch's would send whole
    channels below zero and the ReLU would return an all-zero map; here the
    running mean sits a little below the conv bias and the running variance is
    small, so the map is non-zero and still cut by the ReLU in places.
    """
    h = module.num_heads
    with torch.no_grad():
        module.bn.running_mean.copy_(module.conv.bias - torch.rand(h, generator=generator) * 2e-3)
        module.bn.running_var.copy_((torch.rand(h, generator=generator) + 0.5) * 1e-4)
        module.bn.bias.copy_(torch.rand(h, generator=generator) * 0.2)


@functools.lru_cache(maxsize=8)
def reference_module(dim: int, heads: int, seed: int) -> CMGM:
    """The float32 CPU reference for (dim, heads, seed). Callers must copy it before changing it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_derived_seed(seed, dim, heads))
        module = CMGM(dim=dim, num_heads=heads)
    generator = torch.Generator().manual_seed(_derived_seed(seed, dim, heads, 1))
    randomize_batchnorm(module, generator)
    scale_map_batchnorm(module, generator)
    return module.eval()


def make_inputs(batch: int, dim: int, height: int, width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(_derived_seed(seed, batch, dim, height, width))
    x = torch.randn(batch, dim, height, width, generator=generator)
    y = torch.randn(batch, dim, height, width, generator=generator)
    return x, y
