"""``compile`` and ``compile-max``: ``torch.compile`` of the reference module (Inductor, static shapes).

Compilation happens in the first call, which the harness reports as
``compile_s``; a recompilation while timing invalidates the case.

``compile-max`` is the inference build a deployment would choose:
Inductor's ``max-autotune`` options (GEMM templates benchmarked against
ATen) with ``freezing`` (weights folded into the graph as constants). Its
autotuning takes tens of seconds per shape, so it runs only when named.
"""

from __future__ import annotations

import torch

from cmgm_bench.registry import Built, register


def reference_call(module, case):
    want_map = case.mode != "feature"

    def forward(x, y):
        return module(x, y, attn_map=want_map)

    return forward


@register(
    "compile",
    description="torch.compile(reference), Inductor, static shapes; compile time in compile_s",
    modes=("fwd", "feature", "train"),
)
def build(module, case):
    return torch.compile(reference_call(module, case), dynamic=False)


@register(
    "compile-max",
    description="torch.compile with max-autotune options and freezing, inference",
    modes=("fwd", "feature"),
    in_default_sweep=False,
)
def build_max(module, case):
    quiet = {"autotune_num_choices_displayed": 0, "max_autotune_report_choices_stats": False}  # no tables on stderr
    options = {**torch._inductor.list_mode_options("max-autotune"), "freezing": True, **quiet}
    compiled = torch.compile(reference_call(module, case), dynamic=False, options=options)
    return Built(fn=compiled, notes={"inductor_options": options})
