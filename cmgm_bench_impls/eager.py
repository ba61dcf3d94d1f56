"""``eager``: the reference module (:mod:`cmgm_bench.workload.model`) as written, float32.

A regression gate races two revisions of it (``ab base head --impl-file
base=../base/cmgm_bench_impls/eager.py --impl-file head=cmgm_bench_impls/eager.py``). Importing
``cmgm_bench`` from either file gives the installed package, so this file
loads the model of the checkout it lives in, by path: each name times its own
revision's code.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from cmgm_bench.registry import Built, register


def _model_class_of_this_checkout():
    """The ``CMGM`` class of this file's checkout (``../cmgm_bench/workload/model.py``)."""
    path = Path(__file__).resolve().parents[1] / "cmgm_bench" / "workload" / "model.py"
    import cmgm_bench.workload.model as installed

    if Path(installed.__file__).resolve() == path:
        return installed.CMGM
    spec = importlib.util.spec_from_file_location(f"cmgm_model_{abs(hash(str(path)))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.CMGM


CMGM = _model_class_of_this_checkout()


@register(
    "eager",
    description="the reference module as written, float32",
    modes=("fwd", "feature", "train"),
    baseline=True,
)
def build(module, case):
    """Run this checkout's ``CMGM`` code with the reference's weights.

    When this file is loaded from another revision (``--impl-file base=...``),
    the harness's reference is a different class; the weights are copied into
    this file's class so that an A/B race times the two revisions' code.
    """
    want_map = case.mode != "feature"
    if type(module) is not CMGM:
        own = CMGM(module.dim, module.num_heads)
        own.load_state_dict(module.state_dict())
        module = own.to(next(module.parameters()).device).train(module.training)
    return Built(fn=lambda x, y: module(x, y, attn_map=want_map), module=module)
