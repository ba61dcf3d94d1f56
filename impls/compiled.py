"""``compile``: ``torch.compile`` of the reference module (Inductor, static shapes).

Compilation happens in the first call, which the harness reports as
``compile_s``; a recompilation while timing invalidates the case.
"""

from __future__ import annotations

import torch

from cmgm_bench.registry import register


@register(
    "compile",
    description="torch.compile(reference), Inductor, static shapes; compile time in compile_s",
    modes=("fwd", "feature", "train"),
)
def build(module, case):
    want_map = case.mode != "feature"

    def forward(x, y):
        return module(x, y, attn_map=want_map)

    return torch.compile(forward, dynamic=False)
