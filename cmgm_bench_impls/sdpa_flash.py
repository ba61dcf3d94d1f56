"""``sdpa-flash``: ``feature`` mode in bfloat16 with SDPA restricted to the flash-attention kernel (CUDA).

The N x N matrix is never materialised. If the flash kernel cannot run this
case (head dim, GPU generation), the case is ``unsupported`` with the reason
PyTorch gives.
"""

from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from cmgm_bench.registry import Unsupported, register
from cmgm_bench_impls.sdpa import forward as sdpa_forward


@register(
    "sdpa-flash",
    description="feature mode, autocast bfloat16, SDPA forced to the flash-attention kernel",
    devices=("cuda",),
    modes=("feature",),
    dtype="bfloat16",
)
def build(module, case):
    def forward(x, y):
        try:
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION), torch.autocast("cuda", dtype=torch.bfloat16):
                return sdpa_forward(module, x, y, want_map=False)
        except RuntimeError as exc:
            if flash_unavailable(exc):
                raise Unsupported(f"flash attention cannot run this case: {str(exc).splitlines()[0]}") from exc
            raise

    return forward


def flash_unavailable(exc: BaseException) -> bool:
    """Whether SDPA said that no kernel of the allowed backends can run the case (and nothing else
    went wrong): only then is the case unsupported; any other error mentioning flash is an error."""
    return isinstance(exc, RuntimeError) and "No available kernel" in str(exc)
