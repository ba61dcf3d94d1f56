"""Closed-form work of one CMGM call: FLOPs, minimum bytes and the largest live tensors.

FLOPs follow the usual convention of 2 per multiply-accumulate (MAC) of the
matmuls and convolutions, biases and element-wise work not counted
(docs/design.md, "The module"):

* ``fwd``:     MAC = 22·B·N·C² + B·N²·(2·C + 9·h²)
  (k, q/v and proj projections 4·N·C², two 3x3 C->C convs 18·N·C²;
  Q·Kᵀ and P·V 2·N²·C; the 3x3 h->h conv over the N x N map 9·h²·N²)
* ``feature``: MAC = 22·B·N·C² + 2·B·N²·C (no map branch)
* ``train``:   3 x the ``fwd`` MACs. Every matmul and convolution needs the
  gradient of its input and of its weight (or of its second operand), each as
  many MACs as the forward product, and the gradient reaches the inputs too.
"""

from __future__ import annotations

BYTES_PER_ELEMENT = {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2}


def macs(mode: str, batch: int, tokens: int, dim: int, heads: int) -> int:
    linear_and_conv2 = 22 * batch * tokens * dim**2
    attention = 2 * batch * tokens**2 * dim
    if mode == "feature":
        return linear_and_conv2 + attention
    forward = linear_and_conv2 + attention + 9 * batch * tokens**2 * heads**2
    return 3 * forward if mode == "train" else forward


def flops(mode: str, batch: int, tokens: int, dim: int, heads: int) -> int:
    return 2 * macs(mode, batch, tokens, dim, heads)


def weight_count(dim: int, heads: int) -> int:
    linears = 4 * dim * dim + 4 * dim  # k, qv, proj with biases
    norms = 4 * dim  # lnx, lny
    conv2 = 2 * (9 * dim * dim + dim) + 2 * 2 * dim
    attn_branch = 9 * heads * heads + heads + 2 * heads
    return linears + norms + conv2 + attn_branch


def min_bytes(mode: str, batch: int, tokens: int, dim: int, heads: int, dtype: str) -> int:
    """Bytes that any implementation must move at least once.

    Inference: read both inputs and the weights, write the outputs (the
    B·h·N² map only when it is returned). Train: the same forward traffic,
    plus reading the output gradients, writing the input and weight gradients.
    """
    size = BYTES_PER_ELEMENT[dtype]
    inputs = 2 * batch * dim * tokens
    outputs = batch * dim * tokens + (0 if mode == "feature" else batch * heads * tokens**2)
    weights = weight_count(dim, heads)
    elements = inputs + outputs + weights
    if mode == "train":
        elements = 2 * (inputs + outputs + weights)
    return size * elements


# Live B·h·N² maps at the peak of a straightforward implementation: measured
# for eager in float32 as 5.1 (fwd), 2.05 (feature) and 8-11 (train) maps,
# see docs/performance.md#memory. Fused implementations stay below it.
_LIVE_MAPS = {"fwd": 5, "feature": 2, "train": 10}


def estimated_peak_bytes(mode: str, batch: int, tokens: int, dim: int, heads: int, dtype: str = "float32") -> int:
    """Estimate of the largest live tensors of one call: the B·h·N² maps dominate.

    The maps are counted at float32 size at least: mixed-precision
    implementations keep the softmax and the map branch in float32 (autocast's
    softmax, amp's map branch), and an estimate that assumed half-size maps
    let the memory guard run cases that did not fit (amp: 11.0 GB measured
    against 6.5 GB estimated on an H100).
    """
    size = BYTES_PER_ELEMENT[dtype]
    maps = _LIVE_MAPS[mode] * batch * heads * tokens**2
    features = 8 * batch * tokens * dim
    return max(size, BYTES_PER_ELEMENT["float32"]) * maps + size * features
