"""FLOPs counted three ways, grouped by operator family.

* ``analytic``: the closed form of :mod:`cmgm_bench.workload.flops`, in MACs.
* ``fvcore``: ``FlopCountAnalysis`` (JIT trace). fvcore counts one "flop" per
  multiply-accumulate; handles are added for what it does not know here:
  scaled-dot-product attention (2·B·h·N²·d MACs), softmax and the element-wise
  add/mul (one per output element, reported apart, never in the MAC total).
  Compiled callables are unwrapped to the function they compile.
* ``flop_counter``: ``torch.utils.flop_counter.FlopCounterMode`` (dispatch
  level, 2 FLOPs per MAC), with the CPU flash-attention operators, which
  torch does not map, mapped to its own SDPA formulas so CPU and CUDA agree.

Families: ``linear`` (the k/qv/proj projections and their gradients),
``attention`` (QKᵀ and P·V, batched matmuls or SDPA), ``conv`` (both 3x3
convolutions of conv2 and the map conv), then ``softmax``, ``elementwise`` and
``norm`` (fvcore only; not MACs).
"""

from __future__ import annotations

from collections import defaultdict

import torch
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from cmgm_bench.workload.modes import autograd_context

MAC_FAMILIES = ("linear", "attention", "conv")

_FVCORE_FAMILY = {
    "aten::linear": "linear",
    "aten::addmm": "linear",
    "aten::matmul": "attention",
    "aten::bmm": "attention",
    "aten::scaled_dot_product_attention": "attention",
    "aten::_convolution": "conv",
    "aten::conv": "conv",  # fvcore reports _convolution under this name
    "aten::softmax": "softmax",
    "aten::add": "elementwise",
    "aten::add_": "elementwise",
    "aten::mul": "elementwise",
    "aten::batch_norm": "norm",
    "aten::layer_norm": "norm",
}

_aten = torch.ops.aten
_FLOP_COUNTER_FAMILY_NAMES = {
    "mm": "linear",
    "addmm": "linear",
    "bmm": "attention",
    "baddbmm": "attention",
    "_scaled_dot_product_flash_attention_for_cpu": "attention",
    "_scaled_dot_product_flash_attention_for_cpu_backward": "attention",
    "_scaled_dot_product_flash_attention": "attention",
    "_scaled_dot_product_flash_attention_backward": "attention",
    "_scaled_dot_product_efficient_attention": "attention",
    "_scaled_dot_product_efficient_attention_backward": "attention",
    "_scaled_dot_product_cudnn_attention": "attention",
    "_scaled_dot_product_cudnn_attention_backward": "attention",
    "convolution": "conv",
    "convolution_backward": "conv",
}
# Operators this torch build does not have are skipped (older and newer builds differ).
_FLOP_COUNTER_FAMILY = {
    getattr(_aten, name): family for name, family in _FLOP_COUNTER_FAMILY_NAMES.items() if hasattr(_aten, name)
}


def analytic_macs(mode: str, batch: int, tokens: int, dim: int, heads: int) -> dict[str, int]:
    """The closed form of :func:`cmgm_bench.workload.flops.macs`, split by family."""
    factor = 3 if mode == "train" else 1
    conv = 18 * batch * tokens * dim**2 + (0 if mode == "feature" else 9 * batch * heads**2 * tokens**2)
    return {
        "linear": factor * 4 * batch * tokens * dim**2,
        "attention": factor * 2 * batch * tokens**2 * dim,
        "conv": factor * conv,
    }


# -- fvcore -------------------------------------------------------------------


def _sdpa_macs_jit(inputs, outputs) -> int:
    batch, heads, tokens_q, head_dim = get_shape(inputs[0])
    tokens_k = get_shape(inputs[1])[-2]
    value_dim = get_shape(inputs[2])[-1]
    return batch * heads * tokens_q * tokens_k * (head_dim + value_dim)


def _per_output_element_jit(inputs, outputs) -> int:
    count = 1
    for size in get_shape(outputs[0]):
        count *= size
    return count


class _OutputsAsTuple(torch.nn.Module):
    """Wraps ``fn(x, y) -> (out, attn_map | None)`` so the JIT tracer sees tensors only."""

    def __init__(self, fn, module: torch.nn.Module):
        super().__init__()
        self.fn = fn
        self.module = module  # registered so the tracer sees its weights as parameters

    def forward(self, x, y):
        out, attn_map = self.fn(x, y)
        return (out,) if attn_map is None else (out, attn_map)


def unwrap_compiled(fn):
    """The Python function a ``torch.compile`` wrapper compiles (the tracer cannot trace the wrapper)."""
    while hasattr(fn, "_torchdynamo_orig_callable"):
        fn = fn._torchdynamo_orig_callable
    return getattr(fn, "_orig_mod", fn)


def fvcore_counts(fn, module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, int]:
    """fvcore counts per family (inference: the traced forward of ``fn`` over ``module``'s weights)."""
    analysis = FlopCountAnalysis(_OutputsAsTuple(unwrap_compiled(fn), module), (x, y))
    analysis.set_op_handle("aten::scaled_dot_product_attention", _sdpa_macs_jit)
    for name in ("aten::softmax", "aten::add", "aten::add_", "aten::mul"):
        analysis.set_op_handle(name, _per_output_element_jit)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    families: dict[str, int] = defaultdict(int)
    for op, count in analysis.by_operator().items():
        families[_FVCORE_FAMILY.get(f"aten::{op}", f"other: {op}")] += int(count)
    return dict(families)


# -- torch.utils.flop_counter ---------------------------------------------------


def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


CPU_SDPA_MAPPING = {
    getattr(_aten, name): formula
    for name, formula in (
        ("_scaled_dot_product_flash_attention_for_cpu", _cpu_sdpa_flop),
        ("_scaled_dot_product_flash_attention_for_cpu_backward", _cpu_sdpa_backward_flop),
    )
    if hasattr(_aten, name)
}


def flop_counter_counts(step, mode: str) -> dict[str, int]:
    """FlopCounterMode FLOPs per family for one call of ``step`` (forward and backward in train)."""
    with FlopCounterMode(display=False, custom_mapping=CPU_SDPA_MAPPING) as counter, autograd_context(mode):
        step()
    families: dict[str, int] = defaultdict(int)
    for op, count in counter.get_flop_counts()["Global"].items():
        families[_FLOP_COUNTER_FAMILY.get(op, f"other: {op}")] += int(count)
    return dict(families)


def count_all(prepared, case) -> dict[str, dict[str, int]]:
    """``{"analytic": MACs, "fvcore": MACs or ops, "flop_counter": FLOPs}`` per family for one case."""
    counts = {
        "analytic": analytic_macs(case.mode, case.batch, case.tokens, case.dim, case.heads),
        "flop_counter": flop_counter_counts(prepared.step, case.mode),
    }
    if case.mode == "train":
        counts["fvcore"] = {}  # fvcore traces the forward only
    else:
        with torch.inference_mode(False), torch.no_grad():
            counts["fvcore"] = fvcore_counts(prepared.fn, prepared.module, prepared.x, prepared.y)
    return counts

