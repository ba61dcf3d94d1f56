"""Numeric error against a float64 CPU reference with the same weights and inputs.

Per output: relative L2 error ``||out - ref|| / ||ref||`` and the largest
absolute difference; in ``train`` mode also the relative error of the input
gradients. The tolerances are per compute dtype, chosen from measurement
(docs/performance.md, "Tolerances"), and written only here.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from cmgm_bench.measure.measurement import AccuracyErrors
from cmgm_bench.workload.modes import set_module_mode, training_loss

# Relative-L2 tolerance per compute dtype, applied to every output (and the
# input gradients in train mode); float32 with TF32 on CUDA uses "tf32".
# About 3x the worst error of a correct implementation, measured with
# scripts/measure_tolerances.py (CPU) and scripts/gpu_check.sh (H100). The worst
# float32 case is train mode on the GPU at N >= 2304 (7.1e-4 for every
# implementation, eager included, identical to 4 digits): the map's BatchNorm in
# batch-statistics mode divides by a tiny standard deviation. On the CPU and in
# inference float32 stays below 1.5e-5. The half types' worst are the train-mode
# input gradients.
TOLERANCES = {
    "float64": 1e-12,
    "float32": 2e-3,
    "tf32": 5e-2,
    "float16": 5e-2,
    "bfloat16": 1e-1,
}


def tolerance_for(dtype: str, tf32: bool = False) -> float:
    return TOLERANCES["tf32" if (dtype == "float32" and tf32) else dtype]


@dataclass
class ReferenceOutputs:
    out: torch.Tensor
    attn_map: torch.Tensor
    grad: torch.Tensor | None  # x.grad and y.grad, flattened and concatenated (train mode)


def reference_outputs(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, train: bool, device: str = "cpu") -> ReferenceOutputs:
    """Run a float64 copy of ``module`` on ``device``; in train mode also the input gradients.

    On CUDA the reference runs on the GPU in float64 (TF32 does not apply to
    float64), which keeps large cases affordable; the results live on the CPU.
    """
    ref = set_module_mode(copy.deepcopy(module).double().to(device), "train" if train else "fwd")
    x64 = x.detach().double().to(device).requires_grad_(train)
    y64 = y.detach().double().to(device).requires_grad_(train)
    with torch.set_grad_enabled(train):
        out, attn_map = ref(x64, y64)
        grad = None
        if train:
            training_loss(out, attn_map).backward()
            grad = torch.cat([x64.grad.flatten(), y64.grad.flatten()])
    return ReferenceOutputs(out.detach().cpu(), attn_map.detach().cpu(), None if grad is None else grad.cpu())


def relative_error(value: torch.Tensor, ref: torch.Tensor) -> float:
    """``||value - ref|| / ||ref||``; infinite if ``ref`` is zero and ``value`` is not."""
    diff_norm = float((value.detach().double().cpu() - ref).norm())
    ref_norm = float(ref.norm())
    if ref_norm == 0:
        return 0.0 if diff_norm == 0 else float("inf")
    return diff_norm / ref_norm


def max_abs_error(value: torch.Tensor, ref: torch.Tensor) -> float:
    return float((value.detach().double().cpu() - ref).abs().max())


def output_errors(out, attn_map, grad, ref: ReferenceOutputs) -> AccuracyErrors:
    """The errors of one case's outputs; ``None`` where the output does not exist."""
    attn = attn_map is not None
    return AccuracyErrors(
        out_rel_err=relative_error(out, ref.out),
        out_max_abs_err=max_abs_error(out, ref.out),
        attn_rel_err=relative_error(attn_map, ref.attn_map) if attn else None,
        attn_max_abs_err=max_abs_error(attn_map, ref.attn_map) if attn else None,
        grad_rel_err=relative_error(grad, ref.grad) if grad is not None and ref.grad is not None else None,
    )
