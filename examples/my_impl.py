"""An example third-party implementation: the reference attention with a fused softmax scale.

Run it with:  cmgm-bench run --impl-file examples/my_impl.py --impl scaled-q --res 11
"""

import torch

from cmgm_bench.registry import register


@register(
    "scaled-q",
    description="example: scales q before QK^T instead of the scores after it",
    devices=("cpu", "cuda"),
    modes=("fwd", "feature"),
    dtype="float32",
)
def build(module, case):
    """Called once per case with the reference module (same weights for every implementation)."""
    h = module.num_heads

    def forward(x, y):
        B, C, H, W = x.shape
        N, d = H * W, C // h
        xt, yt = x.flatten(2).transpose(1, 2), y.flatten(2).transpose(1, 2)
        k = module.k(module.lny(yt)).view(B, N, h, d).transpose(1, 2)
        q, v = module.qv(module.lnx(xt)).view(B, N, 2, h, d).permute(2, 0, 3, 1, 4)
        attn = torch.softmax((q * module.scale) @ k.transpose(-2, -1), dim=-1)
        f = module.proj((attn @ v).transpose(1, 2).reshape(B, N, C)) + xt
        f = f.transpose(1, 2).reshape(B, C, H, W)
        out = module.conv2(f) + f
        if case.mode == "feature":
            return out, None
        return out, module.attention_map(attn)

    return forward
