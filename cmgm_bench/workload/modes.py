"""What each mode means: the module state, the autograd context and the step that is timed.

``fwd`` and ``feature`` run under ``torch.inference_mode`` with the module in
``eval()``; ``train`` runs forward and backward of :func:`training_loss` with
the module in ``train()`` and gradients for the inputs and the parameters.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch

INFERENCE_MODES = ("fwd", "feature")


def training_loss(out: torch.Tensor, attn_map: torch.Tensor | None) -> torch.Tensor:
    """The fixed scalar function of both outputs whose gradients ``train`` mode computes."""
    loss = out.float().square().mean()
    if attn_map is not None:
        loss = loss + attn_map.float().square().mean()
    return loss


def set_module_mode(module: torch.nn.Module, mode: str) -> torch.nn.Module:
    return module.train() if mode == "train" else module.eval()


def autograd_context(mode: str):
    return contextlib.nullcontext() if mode == "train" else torch.inference_mode()


def make_step(fn: Callable, mode: str, module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable:
    """The zero-argument callable that is timed; it returns ``(out, attn_map)``."""
    if mode != "train":
        return lambda: fn(x, y)
    x.requires_grad_(True)
    y.requires_grad_(True)
    params = list(module.parameters())

    def step():
        for tensor in (x, y, *params):
            tensor.grad = None
        out, attn_map = fn(x, y)
        training_loss(out, attn_map).backward()
        return out, attn_map

    return step
