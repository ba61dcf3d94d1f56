"""Which scaled-dot-product-attention kernel a call really ran, told by the ATen operator it dispatched to."""

from __future__ import annotations

import torch

from cmgm_bench.measure.quiet import native_stderr_silenced

_SDPA_KERNELS = (
    ("_scaled_dot_product_flash_attention_for_cpu", "flash-cpu"),
    ("_scaled_dot_product_flash_attention", "flash"),
    ("_scaled_dot_product_efficient_attention", "efficient"),
    ("_scaled_dot_product_cudnn_attention", "cudnn"),
    ("_scaled_dot_product_attention_math", "math"),
)


def observed_sdpa_backend(step) -> str | None:
    """The SDPA kernel one call of ``step`` ran (``None`` if none).

    The profiler records the operator on the CPU side for every device;
    tracing the GPU as well (CUPTI) would only add its start-up cost to every case.
    """
    with native_stderr_silenced(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    names = {event.name for event in prof.events()}
    found = [label for op, label in _SDPA_KERNELS if any(op in name for name in names)]
    return found[0] if found else None
