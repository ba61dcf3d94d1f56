"""``sdpa``: the attention through ``torch.nn.functional.scaled_dot_product_attention``.

In ``feature`` mode the attention runs as one fused SDPA call and the N x N
matrix is never materialised. The attention map of ``fwd`` and ``train``
needs softmax(QKᵀ) itself, which SDPA does not return; rather than run the
attention twice (SDPA for the output, QKᵀ again for the map), those modes
compute P = softmax(QKᵀ·s) once and reuse it for P·V.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cmgm_bench.registry import register


def forward(module, x: torch.Tensor, y: torch.Tensor, want_map: bool):
    batch, channels, height, width = x.shape
    heads, tokens = module.num_heads, height * width
    head_dim = channels // heads
    x_tokens = x.flatten(2).transpose(1, 2)
    y_tokens = y.flatten(2).transpose(1, 2)
    k = module.k(module.lny(y_tokens)).view(batch, tokens, heads, head_dim).transpose(1, 2)
    q, v = module.qv(module.lnx(x_tokens)).view(batch, tokens, 2, heads, head_dim).permute(2, 0, 3, 1, 4)
    if want_map:
        attn = torch.softmax((q @ k.transpose(-2, -1)) * module.scale, dim=-1)
        mixed = attn @ v
    else:
        mixed = F.scaled_dot_product_attention(q, k, v, scale=module.scale)
    fused = module.proj(mixed.transpose(1, 2).reshape(batch, tokens, channels)) + x_tokens
    fused = fused.transpose(1, 2).reshape(batch, channels, height, width)
    out = module.conv2(fused) + fused
    if not want_map:
        return out, None
    return out, module.act(module.bn(module.conv(attn + attn.transpose(-1, -2))))


@register(
    "sdpa",
    description="feature: fused SDPA, no NxN matrix; fwd/train: softmax(QK^T) computed once, reused for P@V and the map",
    modes=("fwd", "feature", "train"),
)
def build(module, case):
    want_map = case.mode != "feature"
    return lambda x, y: forward(module, x, y, want_map)
