"""The reference CMGM: PGNet's ``Grafting`` module, generalised to any ``dim`` and ``num_heads``.

The harness's ground truth: every implementation is built from (and checked
against) this module's weights and outputs. Parameter and buffer names are
those of the official module (``k, qv, proj, conv, lnx, lny, bn, conv2.*``) so
an official checkpoint loads unchanged; for ``dim=64, num_heads=8`` it
computes exactly what the official code computes.
"""

from __future__ import annotations

import torch
from torch import nn


class CMGM(nn.Module):
    def __init__(self, dim: int = 64, num_heads: int = 8, qkv_bias: bool = True, qk_scale: float | None = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.qv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.act = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(num_heads, num_heads, kernel_size=3, stride=1, padding=1)
        self.lnx = nn.LayerNorm(dim)
        self.lny = nn.LayerNorm(dim)
        self.bn = nn.BatchNorm2d(num_heads)
        self.conv2 = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=3, stride=1, padding=1),
            nn.BatchNorm2d(dim),
            nn.ReLU(inplace=True),
            nn.Conv2d(dim, dim, kernel_size=3, stride=1, padding=1),
            nn.BatchNorm2d(dim),
            nn.ReLU(inplace=True),
        )

    def check_inputs(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Raise ``ValueError`` saying what is wrong with ``x`` and ``y``."""
        if x.dim() != 4 or y.dim() != 4:
            raise ValueError(f"x and y must be 4-D (B, C, H, W), got {tuple(x.shape)} and {tuple(y.shape)}")
        if x.shape != y.shape:
            raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
        if x.shape[1] != self.dim:
            raise ValueError(f"inputs have {x.shape[1]} channels, the module has dim={self.dim}")

    def forward(self, x: torch.Tensor, y: torch.Tensor, attn_map: bool = True):
        """Return ``(out, attn_map)``; with ``attn_map=False`` skip that branch and return ``(out, None)``."""
        out, attn = self.fuse(x, y)
        return out, (self.attention_map(attn) if attn_map else None)

    def fuse(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Steps 1-5 of the module: the fused feature map and the softmax attention matrix."""
        self.check_inputs(x, y)
        batch, channels, height, width = x.shape
        x_tokens = x.reshape(batch, channels, -1).permute(0, 2, 1)
        y_tokens = y.reshape(batch, channels, -1).permute(0, 2, 1)
        x_norm = self.lnx(x_tokens)
        y_norm = self.lny(y_tokens)
        B, N, C = x_tokens.shape
        h = self.num_heads
        k = self.k(y_norm).reshape(B, N, 1, h, C // h).permute(2, 0, 3, 1, 4)[0]
        qv = self.qv(x_norm).reshape(B, N, 2, h, C // h).permute(2, 0, 3, 1, 4)
        q, v = qv[0], qv[1]
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        fused = (attn @ v).transpose(1, 2).reshape(B, N, C)
        fused = self.proj(fused) + x_tokens
        fused = fused.permute(0, 2, 1).reshape(batch, channels, height, width)
        return self.conv2(fused) + fused, attn

    def attention_map(self, attn: torch.Tensor) -> torch.Tensor:
        """Step 6: ReLU(BN(Conv3x3(attn + attnᵀ))), an h-channel N x N map."""
        return self.act(self.bn(self.conv(attn + attn.transpose(-1, -2))))
