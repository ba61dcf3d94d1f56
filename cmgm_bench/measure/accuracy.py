"""Numeric error against a float64 CPU reference with the same weights and inputs.

Per output: relative L2 error ``||out - ref|| / ||ref||`` and the largest
absolute difference; in ``train`` mode also the relative error of the input
gradients. The tolerances are per compute dtype, chosen from measurement
(docs/performance.md#tolerances), and written only here.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cmgm_bench.measure import allocator
from cmgm_bench.measure.measurement import AccuracyErrors
from cmgm_bench.workload.modes import set_module_mode, training_loss

# Relative-L2 tolerance per compute dtype, applied to every output (and the
# input gradients in train mode); float32 with TF32 on CUDA uses "tf32".
# About 3x the worst error of a correct implementation, measured with
# scripts/measure_tolerances.py (CPU) and scripts/gpu_check.sh (GPU). On the CPU
# float32 stays below 3e-5 but for train-mode input gradients at 48x48 (5.6e-4).
# The half types' worst are the train-mode input gradients.
TOLERANCES = {
    "float64": 1e-12,
    "float32": 2e-3,
    "tf32": 5e-2,
    "float16": 5e-2,
    "bfloat16": 1e-1,
}
# Where a device's own float32 arithmetic for the module is less exact. On CUDA,
# train mode at N >= 2304 gives the map a 2.1e-3 error in PyTorch's eager module
# itself (H200, B=8 48x48): the map's BatchNorm takes its batch mean in float32,
# with or without cuDNN, and the mean is 80-950 times the spread it subtracts it
# from (scripts/gpu_map_batchnorm_precision.py; float32's rounding alone: 1.4e-5).
DEVICE_TOLERANCES = {"cuda": {"float32": 6e-3}}


def tolerance_for(dtype: str, tf32: bool = False, device: str = "cpu") -> float:
    """The tolerance of a case computing in ``dtype`` on ``device``; ``tf32`` (the run's setting) counts on CUDA only."""
    key = "tf32" if (dtype == "float32" and tf32 and device.startswith("cuda")) else dtype
    return DEVICE_TOLERANCES.get(device.split(":")[0], {}).get(key, TOLERANCES[key])


@dataclass
class ReferenceOutputs:
    out: torch.Tensor
    attn_map: torch.Tensor
    grad: torch.Tensor | None  # x.grad and y.grad, flattened and concatenated (train mode)


class RowBandedConv2d(torch.nn.Module):
    """A stride-1 "same" convolution computed a band of output rows at a time, each band from its input rows and
    their halo: the same dot products (bit for bit on the CPU), without the whole-map buffer.

    PyTorch has no float64 path through oneDNN: its CPU convolution in float64 lowers to im2col, a column matrix
    of ``C_in * kh * kw`` times the output's size, nine times the whole N x N map for the map branch's 3x3
    convolution (3 GiB at 48x48 tokens, faulted in afresh on each first call). The bands are as few as keep each
    band's input and output at least the pinned allocator's mmap threshold: every temporary is then mapped and
    unmapped as the whole-map tensors were, never left in the glibc heap that the implementation built next
    uses (blocks left there moved ONNX Runtime's resident figure from process to process), and the columns of
    a band stay under ~0.6 GiB. At 48x48 the float64 reference's first call took ~1.9 s instead of 4.8 s (2 vCPUs).
    """

    def __init__(self, conv: torch.nn.Conv2d):
        super().__init__()
        self.conv = conv

    def forward(self, value: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        halo = conv.padding[0]
        height, width = value.shape[-2:]
        smaller_side = value[:, : min(conv.in_channels, conv.out_channels)]
        bands_wanted = max(1, smaller_side.numel() * value.element_size() // allocator.STEADY_MMAP_THRESHOLD)
        rows = -(-height // bands_wanted)  # equal bands, each at least the threshold
        bands = []
        for first in range(0, height, rows):
            last = min(height, first + rows)
            low, high = max(first - halo, 0), min(last + halo, height)
            band = F.pad(value[..., low:high, :], (0, 0, halo - (first - low), halo - (high - last)))
            bands.append(F.conv2d(band, conv.weight, conv.bias, padding=(0, conv.padding[1])))
        return torch.cat(bands, dim=-2)


def banded_if_same(conv: torch.nn.Module) -> torch.nn.Module:
    """``conv`` as a :class:`RowBandedConv2d` when it is a stride-1, undilated, ungrouped "same" convolution."""
    if not isinstance(conv, torch.nn.Conv2d) or isinstance(conv.padding, str):
        return conv
    same = all(k == 2 * p + 1 for k, p in zip(conv.kernel_size, conv.padding))
    plain = conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros"
    return RowBandedConv2d(conv) if same and plain else conv


def reference_outputs(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, train: bool, device: str = "cpu") -> ReferenceOutputs:
    """Run a float64 copy of ``module`` on ``device``; in train mode also the input gradients. The map branch's
    convolution runs in row bands (:class:`RowBandedConv2d`).

    On CUDA the reference runs on the GPU in float64 (TF32 does not apply to
    float64), which keeps large cases affordable; the results live on the CPU.
    """
    ref = set_module_mode(copy.deepcopy(module).double().to(device), "train" if train else "fwd")
    ref.conv = banded_if_same(ref.conv)
    x64 = x.detach().double().to(device).requires_grad_(train)
    y64 = y.detach().double().to(device).requires_grad_(train)
    with torch.set_grad_enabled(train):
        out, attn_map = ref(x64, y64)
        grad = None
        if train:
            training_loss(out, attn_map).backward()
            grad = torch.cat([x64.grad.flatten(), y64.grad.flatten()])
    return ReferenceOutputs(out.detach().cpu(), attn_map.detach().cpu(), None if grad is None else grad.cpu())


CHUNK_ELEMENTS = 1 << 22  # 32 MiB of float64 at a time, whatever the output's size


def _chunk_sums(value: torch.Tensor, ref: torch.Tensor) -> tuple[float, float, float]:
    """``(sum (value-ref)^2, sum ref^2, max |value-ref|)`` in float64, on ``value``'s device, a chunk at a time.

    Neither side is ever converted whole: at B=8, 64x64 a float64 copy of the map
    alone is 8 GiB. ``ref`` (on the CPU) is copied to the device one chunk at a time.
    """
    flat_value, flat_ref = value.detach().reshape(-1), ref.reshape(-1)
    diff_sq = ref_sq = 0.0
    worst = 0.0
    for start in range(0, flat_value.numel(), CHUNK_ELEMENTS):
        chunk = flat_value[start:start + CHUNK_ELEMENTS].double()
        want = flat_ref[start:start + CHUNK_ELEMENTS].to(chunk.device, torch.float64)
        diff = chunk - want
        diff_sq += float(diff.square().sum())
        ref_sq += float(want.square().sum())
        worst = max(worst, float(diff.abs().max()))
    return diff_sq, ref_sq, worst


def relative_error(value: torch.Tensor, ref: torch.Tensor) -> float:
    """``||value - ref|| / ||ref||``; infinite if ``ref`` is zero and ``value`` is not."""
    return _relative(_chunk_sums(value, ref))


def max_abs_error(value: torch.Tensor, ref: torch.Tensor) -> float:
    return _chunk_sums(value, ref)[2]


def output_errors(out, attn_map, grad, ref: ReferenceOutputs) -> AccuracyErrors:
    """The errors of one case's outputs; ``None`` where the output does not exist."""
    out_sums = _chunk_sums(out, ref.out)
    attn_sums = _chunk_sums(attn_map, ref.attn_map) if attn_map is not None else None
    grad_rel = relative_error(grad, ref.grad) if grad is not None and ref.grad is not None else None
    return AccuracyErrors(
        out_rel_err=_relative(out_sums),
        out_max_abs_err=out_sums[2],
        attn_rel_err=None if attn_sums is None else _relative(attn_sums),
        attn_max_abs_err=None if attn_sums is None else attn_sums[2],
        grad_rel_err=grad_rel,
    )


def _relative(sums: tuple[float, float, float]) -> float:
    diff_sq, ref_sq, _ = sums
    if ref_sq == 0:
        return 0.0 if diff_sq == 0 else float("inf")
    return (diff_sq / ref_sq) ** 0.5
