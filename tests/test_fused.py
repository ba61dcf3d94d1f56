"""The fused inference implementation: accuracy on shapes it was not tuned on, and folding at build time."""

import copy
import random

import pytest
import torch

from cmgm_bench import registry
from cmgm_bench.config.cases import Case
from cmgm_bench.workload.reference import make_inputs, reference_module
from cmgm_bench.measure.case_runner import CaseRunner
from cmgm_bench.measure.accuracy import reference_outputs, relative_error, tolerance_for
from cmgm_bench.results.store import to_row
from tests.helpers import require_tool, assert_module_outputs_near_float64, assert_near_float64, measure_config
from cmgm_bench.machine import cpu_features
from cmgm_bench_impls.builders import kernels
from cmgm_bench_impls.fused import ATEN_ATTENTION_MARGIN, FusedCMGM, store_kinds

@pytest.fixture(autouse=True)
def _compiler():
    """A missing compiler fails under CI and skips on a developer's machine; where one exists, a kernel that fails to
    build fails the tests."""
    require_tool(kernels.compiler_problem())

# Every target this CPU runs: the AVX2 one on any x86 machine, the AVX-512 one where the CPU has it.
TARGETS = [name for name in kernels.TARGETS if kernels.target_problem(name) is None and (name != "portable" or not kernels.is_x86())]


@pytest.fixture(params=TARGETS)
def target_kernels(request):
    return kernels.load(request.param)[0]


QUICK = measure_config(memory=False)


def test_the_kernels_build_for_every_target_this_cpu_runs():
    if kernels.is_x86():
        assert "x86-64-v3" in TARGETS or not cpu_features.has("avx2_fma")
    for name in TARGETS:
        operators, seconds = kernels.load(name)
        assert seconds >= 0 and operators.name == kernels.extension_name(name)


def test_a_target_the_cpu_lacks_is_refused_before_any_build(monkeypatch):
    monkeypatch.setattr(cpu_features, "flags", lambda: frozenset({"avx", "avx2", "fma", "bmi1", "bmi2", "f16c", "movbe"}))
    monkeypatch.setattr(kernels, "is_x86", lambda: True)
    built = []
    monkeypatch.setattr(kernels, "_build", lambda name: built.append(name))
    with pytest.raises(RuntimeError, match="this CPU lacks avx512f, avx512bw, avx512cd, avx512dq, avx512vl, which x86-64-v4 needs"):
        kernels.load("x86-64-v4")
    assert built == []
    assert kernels.best_target() == "x86-64-v3"
    assert kernels.extension_name("x86-64-v3") != kernels.extension_name("x86-64-v4")
    assert kernels.compiler_tag(kernels.compiler()) in kernels.extension_name("x86-64-v3")


def test_a_torch_without_the_stable_abi_is_refused_before_any_build(monkeypatch):
    import torch as real_torch

    monkeypatch.setattr(real_torch, "__version__", "2.9.1+cpu")
    built = []
    monkeypatch.setattr(kernels, "_build", lambda name: built.append(name))
    with pytest.raises(RuntimeError, match=r"need torch >= 2.10 \(LibTorch's stable ABI\), this is 2.9.1\+cpu"):
        kernels.load(kernels.best_target())
    assert built == []
    assert kernels.torch_problem("2.10.0") is None


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", ["fused", "fused-bf16"])
def test_accuracy_on_random_shapes(monkeypatch, name, target):
    monkeypatch.setenv(kernels.TARGET_ENV, target)
    if name == "fused-bf16" and not cpu_features.native_bfloat16():
        pytest.skip("fused-bf16 needs native bfloat16 (its refusal is tested below)")
    rng = random.Random(11)
    runner = CaseRunner(QUICK)
    impl = registry.get(name)
    for heads in (1, 2, 4, 8):
        dim = rng.choice([d for d in (16, 32, 64) if d % heads == 0])
        batch, height, width = rng.choice([1, 2]), rng.randint(3, 40), rng.randint(3, 40)
        for mode in ("fwd", "feature"):
            row = to_row(runner.run(Case(name, "cpu", impl.dtype, mode, batch, height, width, heads, dim)))
            assert row["status"] == "ok", (heads, dim, height, width, mode, row["error"])
            if name == "fused":  # issue target: float32 errors at most 1e-5
                assert row["out_rel_err"] <= 1e-5
                assert mode == "feature" or row["attn_rel_err"] <= 1e-5


def test_folding_uses_the_module_it_is_built_from():
    """Change one BatchNorm statistic of the reference: the fused result must change with it."""
    module = copy.deepcopy(reference_module(32, 4, 0, 9, 7)).eval()
    x, y = make_inputs(1, 32, 9, 7, 0)
    with torch.inference_mode():
        before_out, before_map = FusedCMGM(module, torch.float32)(x, y, want_map=True)
    with torch.no_grad():
        module.bn.running_mean += 0.01
        module.conv2[4].running_var *= 2
    with torch.inference_mode():
        after_out, after_map = FusedCMGM(module, torch.float32)(x, y, want_map=True)
    assert_module_outputs_near_float64(after_out, after_map, module, x, y)
    # the outputs built before the change are off the changed module's float64 outputs by more than the tolerance
    reference = reference_outputs(module, x, y, train=False)
    assert relative_error(before_out, reference.out) > tolerance_for("float32")
    assert relative_error(before_map, reference.attn_map) > tolerance_for("float32")


def symmetric_map_float64(attn, weight, bias):
    """The map stage in float64: ``relu(conv3x3(attn + attn^T))``."""
    wide = attn.double()
    return torch.relu(torch.nn.functional.conv2d(wide + wide.transpose(-1, -2), weight.double(), bias.double(), padding=1))


def test_map_kernel_matches_conv_for_every_supported_head_count(target_kernels):
    for heads in (1, 2, 4, 8, 16):
        for n in (5, 33, 70, 130):  # 130: interior tiles off the diagonal, paired with their mirrors
            attn = torch.softmax(torch.randn(2, heads, n, n), dim=-1)
            weight, bias = torch.randn(heads, heads, 3, 3), torch.randn(heads)
            assert_near_float64(target_kernels.fused_map(attn, weight, bias), symmetric_map_float64(attn, weight, bias))


@pytest.mark.parametrize("n", [96, 130])
def test_streaming_stores_write_the_same_map(target_kernels, n):
    """96: every row of the map starts on a whole vector, so every full-width store streams; 130: most rows do not, and
    those stores go through the cache. The arithmetic is the same either way: the maps are equal bit for bit."""
    torch.manual_seed(n)
    attn = torch.softmax(torch.randn(2, 8, n, n), dim=-1)
    weight, bias = torch.randn(8, 8, 3, 3), torch.randn(8)
    streamed = target_kernels.fused_map(attn, weight, bias, True)
    assert_near_float64(streamed, symmetric_map_float64(attn, weight, bias))
    assert torch.equal(streamed, target_kernels.fused_map(attn, weight, bias, False))


def test_unsupported_head_count_is_a_clear_error(target_kernels):
    with pytest.raises(RuntimeError, match="1, 2, 4, 8 or 16 heads"):
        target_kernels.fused_map(torch.rand(1, 3, 4, 4), torch.rand(3, 3, 3, 3), torch.rand(3))


@pytest.mark.parametrize("n, d", [(5, 1), (17, 8), (70, 16), (33, 64)])
def test_attention_kernel_matches_softmax_attention(target_kernels, n, d):
    """Row counts that are not a multiple of the 4-row groups or 16-float vectors, head dims padded to 8."""
    torch.manual_seed(n * d)
    q, k, v = (torch.randn(2, n, 3, d).transpose(1, 2) for _ in range(3))  # strided, as the projections give them
    q64, k64, v64 = (t.double() for t in (q, k, v))
    want_attn = torch.softmax(q64 @ k64.transpose(-1, -2), dim=-1)
    want_out = (want_attn @ v64).transpose(1, 2).reshape(2, n, 3 * d)
    out, attn = target_kernels.softmax_attention(q, k, v, True, torch.float32)
    assert_near_float64(attn, want_attn)
    assert_near_float64(out, want_out)
    out_only, none = target_kernels.softmax_attention(q, k, v, False, torch.float32)
    assert none is None
    assert_near_float64(out_only, want_out)
    _, attn_bf16 = target_kernels.softmax_attention(q, k, v, True, torch.bfloat16)
    assert attn_bf16.dtype == torch.bfloat16
    assert_near_float64(attn_bf16, want_attn, "bfloat16")
    # bfloat16 inputs are widened exactly: the same as passing their float32 values
    narrow = [t.bfloat16() for t in (q, k, v)]
    torch.testing.assert_close(
        target_kernels.softmax_attention(*narrow, False, torch.float32)[0],
        target_kernels.softmax_attention(*(t.float() for t in narrow), False, torch.float32)[0],
        rtol=0, atol=0,
    )


def test_map_kernel_reads_bfloat16_attention(target_kernels):
    attn = torch.softmax(torch.randn(1, 4, 130, 130), dim=-1).bfloat16()
    weight, bias = torch.randn(4, 4, 3, 3), torch.randn(4)
    # the bfloat16 values widened exactly: float32 accuracy against the float64 map of those values
    assert_near_float64(target_kernels.fused_map(attn, weight, bias), symmetric_map_float64(attn, weight, bias))


def test_without_a_compiler_fwd_is_unsupported_with_the_reason_and_feature_runs(monkeypatch):
    """feature mode needs no kernel of ours (SDPA); fwd needs both."""
    monkeypatch.setenv("CXX", "no-such-compiler-cmgm")
    runner = CaseRunner(QUICK)
    fwd = to_row(runner.run(Case("fused", "cpu", "float32", "fwd", 1, 5, 5, 2, 16)))
    assert fwd["status"] == "unsupported"
    assert fwd["error"] == "no C++ compiler (no-such-compiler-cmgm) to build the fused kernels"
    assert to_row(runner.run(Case("fused", "cpu", "float32", "feature", 1, 5, 5, 2, 16)))["status"] == "ok"


def run_on_target(monkeypatch, target: str, mode: str) -> tuple[dict, dict]:
    """One ``fused`` case (a 13x11 map, 4 heads) built for ``target``: its row, which must be ok, and its notes."""
    monkeypatch.setenv(kernels.TARGET_ENV, target)
    record = CaseRunner(QUICK).run(Case("fused", "cpu", "float32", mode, 1, 13, 11, 4, 32))
    row = to_row(record)
    assert row["status"] == "ok", row["error"]
    return row, record.notes


@pytest.mark.parametrize("target", TARGETS)
def test_the_stage_choice_and_the_target_are_recorded(monkeypatch, target):
    row, notes = run_on_target(monkeypatch, target, "fwd")
    assert notes["kernel_target"] == target and notes["kernel_extension"] == kernels.extension_name(target)
    paths, timings = notes["stage_paths"], notes["stage_ms"]
    assert set(paths) == {"attention", "map", "stores"} and paths["attention"] in ("kernel", "aten")
    assert set(timings["map"]) == set(timings["attention"]) == {"kernel", "aten"}
    aten_clearly_faster = timings["attention"]["aten"] < timings["attention"]["kernel"] * (1 - ATEN_ATTENTION_MARGIN)
    assert paths["attention"] == ("aten" if aten_clearly_faster else "kernel")
    if min(timings["map"], key=timings["map"].get) == "kernel":  # whole calls on the pool raced: the chosen attention's fastest won
        stores = store_kinds(target)
        maps = ("kernel", "recompute") if paths["attention"] == "kernel" else ("kernel",)
        assert set(timings["calls"]) == {f"map={m}, stores={kind}" for m in maps for kind in stores}
        assert f"map={paths['map']}, stores={paths['stores']}" == min(timings["calls"], key=timings["calls"].get)
        assert timings["attention"][paths["attention"]] == min(timings["calls"].values())
    else:
        assert paths["map"] == "aten" and paths["stores"] == "cached" and "calls" not in timings
    assert all(ms > 0 for times in timings.values() for ms in times.values())
    assert row["variant"] == f"{target}: attention={paths['attention']}, map={paths['map']}, stores={paths['stores']}"


@pytest.mark.parametrize("target", TARGETS)
def test_feature_mode_races_the_pool_against_torch_operators_and_records_it(monkeypatch, target):
    row, notes = run_on_target(monkeypatch, target, "feature")
    timings = notes["stage_ms"]["feature"]
    assert set(timings) == {"pool", "operators"} and all(ms > 0 for ms in timings.values())
    operators_clearly_faster = timings["operators"] < timings["pool"] * (1 - ATEN_ATTENTION_MARGIN)
    assert notes["stage_paths"] == {"feature": "operators" if operators_clearly_faster else "pool"}
    pool = not operators_clearly_faster
    assert row["variant"] == (f"{target}: attention=kernel, on the pool" if pool else "sdpa")


def test_feature_mode_runs_head_counts_the_map_kernel_does_not_take():
    """Feature mode has no map, so 3 heads (which the map kernel is not compiled for) run, on either path, within the
    tolerance."""
    row = to_row(CaseRunner(QUICK).run(Case("fused", "cpu", "float32", "feature", 1, 5, 5, 3, 24)))
    assert row["status"] == "ok", row["error"]
    assert row["out_rel_err"] <= row["tolerance"]


@pytest.mark.parametrize("path", ["kernel", "aten"])
def test_either_path_of_each_stage_gives_the_reference(target_kernels, path):
    module = copy.deepcopy(reference_module(32, 4, 0, 9, 7)).eval()
    x, y = make_inputs(2, 32, 9, 7, 0)
    fused = FusedCMGM(module, torch.float32)
    fused.use_kernels(target_kernels, {"attention": path, "map": path})
    with torch.inference_mode():
        out, attn_map = fused(x, y, want_map=True)
    assert_module_outputs_near_float64(out, attn_map, module, x, y)


def test_fused_bf16_needs_native_bfloat16(monkeypatch):
    monkeypatch.setattr(cpu_features, "native_bfloat16", lambda: False)
    row = to_row(CaseRunner(QUICK).run(Case("fused-bf16", "cpu", "bfloat16", "fwd", 1, 5, 5, 2, 16)))
    assert row["status"] == "unsupported" and "no native bfloat16" in row["error"]
