"""``channels_last``: the inputs and the feature branch in ``torch.channels_last``.

The C-channel feature convolutions (``conv2``) and the inputs use NHWC. The
h-channel N x N attention map stays contiguous: PyTorch's channels-last
BatchNorm on the CPU computes the training-mode variance in one pass, and on
this map (mean ~0.1, standard deviation ~1e-3) that cancels to a relative
error of ~1e-1 in the map instead of ~1e-5 (docs/performance.md#tolerances).
"""

from __future__ import annotations

import torch

from cmgm_bench.registry import Built, register


def to_channels_last(x: torch.Tensor, y: torch.Tensor):
    return x.contiguous(memory_format=torch.channels_last), y.contiguous(memory_format=torch.channels_last)


@register(
    "channels_last",
    description="inputs and conv2 in torch.channels_last (NHWC); the h-channel NxN map branch stays contiguous",
    modes=("fwd", "feature", "train"),
)
def build(module, case):
    module.conv2.to(memory_format=torch.channels_last)
    want_map = case.mode != "feature"
    return Built(fn=lambda x, y: module(x, y, attn_map=want_map), prepare_inputs=to_channels_last)
