"""pytest-benchmark benchmarks of each CPU implementation on small cases.

In the default test command they run with --benchmark-disable (set in
pyproject.toml): each benchmarked call runs once, as a smoke test. To measure:
    python -m pytest tests/bench --benchmark-enable --benchmark-autosave
"""

import pytest
import torch

from cmgm_bench import registry
from cmgm_bench.config.cases import Case
from cmgm_bench.measure.prepare import prepare_case

CPU_IMPLS = [
    name
    for name, impl in registry.all_implementations().items()
    # compile and the implementations that run only when named cost 10-40 s per shape before the first call
    if "cpu" in impl.devices and impl.in_default_sweep and name != "compile"
]


@pytest.mark.slow
@pytest.mark.parametrize("name", CPU_IMPLS)
@pytest.mark.parametrize("mode", ["fwd", "feature"])
def test_bench(benchmark, name, mode):
    impl = registry.get(name)
    case = Case(name, "cpu", impl.dtype, mode, 1, 11, 11, 8, 64)
    if impl.unsupported_reason(case):
        pytest.skip(impl.unsupported_reason(case))
    prepared = prepare_case(case, impl, seed=0)
    with torch.inference_mode():
        out, attn_map = benchmark(prepared.step)
    assert out.shape == (1, 64, 11, 11)
    assert (attn_map is None) == (mode == "feature")
