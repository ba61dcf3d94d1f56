"""``amp-bf16`` and ``amp-fp16``: the reference module under ``torch.autocast``.

Weights and inputs stay float32; autocast runs the projections, the
attention and the feature convolutions in the lower precision. The map
branch (3x3 conv, BatchNorm, ReLU over the N x N matrix) runs in float32: its
input is its conv bias plus terms of order 1/N, so the BatchNorm divides
rounding errors of the conv output by a tiny standard deviation, and a
half-precision conv output puts 5-20 % relative error into the map
(measured, docs/performance.md#tolerances). Where this PyTorch build cannot
autocast to a dtype on a device, the case is ``unsupported`` with the reason.
"""

from __future__ import annotations

import functools

import torch

from cmgm_bench.registry import register


@functools.lru_cache(maxsize=None)
def autocast_problem(device: str, dtype: torch.dtype) -> str | None:
    """Why autocast to ``dtype`` does not work on ``device`` here, or ``None``."""
    if not torch.amp.is_autocast_available(device):
        return f"autocast is not available on {device}"
    try:
        with torch.autocast(device_type=device, dtype=dtype):
            image = torch.randn(1, 2, 4, 4, device=device)
            torch.nn.functional.conv2d(image, torch.randn(2, 2, 3, 3, device=device), padding=1)
            torch.randn(4, 4, device=device) @ torch.randn(4, 4, device=device)
    except (RuntimeError, TypeError) as exc:
        return f"autocast to {dtype} fails on {device}: {str(exc).splitlines()[0]}"
    return None


def _register(name: str, dtype: torch.dtype, label: str):
    @register(
        name,
        description=f"torch.autocast({label}) except the NxN map branch (float32); weights and inputs float32",
        modes=("fwd", "feature", "train"),
        dtype=label,
        check=lambda case: autocast_problem(case.device, dtype),
    )
    def build(module, case):
        want_map = case.mode != "feature"

        def forward(x, y):
            with torch.autocast(device_type=case.device, dtype=dtype):
                out, attn = module.fuse(x, y)
            return out, (module.attention_map(attn.float()) if want_map else None)

        return forward

    return build


build_bf16 = _register("amp-bf16", torch.bfloat16, "bfloat16")
build_fp16 = _register("amp-fp16", torch.float16, "float16")
