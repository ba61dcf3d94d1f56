"""The deployment runtimes (ONNX Runtime, OpenVINO, AOTInductor): exports that follow the weights,
threads as asked, and a clear row when a runtime is not installed.

Their accuracy on random shapes is checked with every other implementation in
``test_impls.py``; the tests here need the ``runtimes`` extra, which CI installs.
"""

import copy
import importlib.util
import json

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from cmgm_bench import registry
from cmgm_bench.cache import cache_dir
from cmgm_bench.config.cases import Case
from cmgm_bench.machine import cpu_features
from cmgm_bench.cli import app
from cmgm_bench.workload.reference import make_inputs, reference_module
from cmgm_bench.measure.accuracy import reference_outputs, relative_error, tolerance_for
from cmgm_bench.measure.case_runner import CaseRunner
from cmgm_bench.results.store import to_row
from cmgm_bench_impls.builders import export_cache
from cmgm_bench_impls.ov import core
from tests.helpers import FAST, require_tool
from tests.helpers import assert_module_outputs_near_float64
from tests.test_impls import QUICK

EXPORTED = ("onnxruntime", "openvino", "aot-inductor")


@pytest.fixture(params=[pytest.param(name, marks=pytest.mark.slow) if name == "aot-inductor" else name  # ~14 s a build
                        for name in EXPORTED])
def exported_impl(request):
    impl = registry.get(request.param)
    require_tool(impl.missing())
    return impl


def test_the_runtimes_are_installed_where_the_extra_is():
    """Under CI, where `.ci/run` installs the extra, every runtime is available: none is silently `unsupported`."""
    for name in (*EXPORTED, "openvino-bf16"):
        require_tool(registry.get(name).missing())


@pytest.mark.slow
def test_a_changed_weight_changes_the_output(exported_impl):
    """The export cache is keyed by the weights: building again after a change never loads the old graph."""
    case = Case(exported_impl.name, "cpu", "float32", "fwd", 1, 5, 6, 2, 16)
    module = copy.deepcopy(reference_module(16, 2, 0, 5, 6)).eval()
    x, y = make_inputs(1, 16, 5, 6, seed=0)
    before = exported_impl.build(module, case)
    with torch.inference_mode():
        out_before, map_before = (t.clone() for t in before.fn(x, y))
    with torch.no_grad():
        module.proj.bias.add_(0.5)
        module.conv.weight.mul_(1.5)
    after = exported_impl.build(module, case)
    with torch.inference_mode():
        out_after, map_after = after.fn(x, y)
    kind = "onnx" if "onnx_cache" in after.notes else "aoti"
    assert after.notes[f"{kind}_key"]["module"] != before.notes[f"{kind}_key"]["module"]
    assert_module_outputs_near_float64(out_after, map_after, module, x, y)
    reference = reference_outputs(module, x, y, train=False)  # the old graph's outputs are off the changed module's
    assert relative_error(out_before, reference.out) > tolerance_for("float32")
    assert relative_error(map_before, reference.attn_map) > tolerance_for("float32")
    again = exported_impl.build(module, case)
    assert again.notes[f"{kind}_cache"] == "hit"


@pytest.mark.slow
@pytest.mark.parametrize("threads", [1, 2])
def test_runtime_threads_follow_the_threads_option(tmp_path, threads):
    for name in ("onnxruntime", "openvino"):
        require_tool(registry.get(name).missing())
    out = tmp_path / "run"
    args = ["run", "--impl", "onnxruntime,openvino", "--mode", "feature", "--res", "6x5", "--heads", "2", "--dim", "16",
            "--threads", str(threads), "--out", str(out), "--no-report", *FAST]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    cases = {case["row"]["impl"]: case for case in json.loads((out / "results.json").read_text())["cases"]}
    assert {impl: case["row"]["status"] for impl, case in cases.items()} == {"onnxruntime": "ok", "openvino": "ok"}
    assert cases["onnxruntime"]["notes"]["intra_op_threads"] == threads
    assert cases["onnxruntime"]["notes"]["inter_op_threads"] == 1
    assert cases["openvino"]["notes"]["inference_threads"] == threads
    assert all(case["row"]["threads"] == threads for case in cases.values())
    assert all(case["notes"]["exporter"].startswith("torch.onnx.export") for case in cases.values())


def test_a_missing_runtime_is_unsupported_with_the_install_hint(tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    hidden = {"onnxruntime", "openvino"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in hidden else real_find_spec(name, *a))
    assert registry.get("onnxruntime").missing() == f"needs onnxruntime: {export_cache.RUNTIMES_HINT}"
    # hidden in this process only, where `list`'s cache key (the installed distributions) cannot see it: a fresh cache
    monkeypatch.setenv("CMGM_BENCH_CACHE", str(tmp_path / "cache"))
    listing = CliRunner().invoke(app, ["list"])
    assert listing.exit_code == 0
    onnx_line = next(line for line in listing.output.splitlines() if line.startswith("│ onnxruntime "))
    assert "no: needs onnxruntime" in onnx_line
    out = tmp_path / "run"
    args = ["run", "--impl", "eager,onnxruntime,openvino", "--res", "5x4", "--heads", "2", "--dim", "16",
            "--out", str(out), "--no-report", *FAST]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out / "results.csv").set_index("impl")
    assert frame.loc["eager", "status"] == "ok"
    for name, package in (("onnxruntime", "onnxruntime"), ("openvino", "openvino")):
        assert frame.loc[name, "status"] == "unsupported"
        assert f"needs {package}" in frame.loc[name, "error"] and export_cache.RUNTIMES_HINT in frame.loc[name, "error"]


def test_openvino_bf16_runs_only_with_native_bfloat16():
    impl = registry.get("openvino-bf16")
    require_tool(impl.missing())
    row = to_row(CaseRunner(QUICK).run(Case("openvino-bf16", "cpu", "bfloat16", "fwd", 1, 7, 5, 4, 32)))
    if "BF16" in core().get_property("CPU", "OPTIMIZATION_CAPABILITIES") and cpu_features.library_isa_cap() is None:
        assert row["status"] == "ok", row["error"]
        assert 1e-4 < row["out_rel_err"] <= row["tolerance"]  # really bfloat16: above float32's error
    else:
        assert row["status"] == "unsupported" and "no native bfloat16" in row["error"]


def test_libraries_kept_below_avx512_have_no_native_bfloat16(monkeypatch):
    """As on an AVX2-only CPU: ATEN_CPU_CAPABILITY=avx2 or DNNL_MAX_CPU_ISA=AVX2 leave the libraries no bfloat16
    instructions, whatever the CPU offers."""
    monkeypatch.setattr(cpu_features, "flags", lambda: frozenset({"avx2", "fma", "avx512f", "avx512_bf16"}))
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    assert cpu_features.native_bfloat16() and cpu_features.library_isa_cap() is None
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "AVX2")
    assert not cpu_features.native_bfloat16() and cpu_features.library_isa_cap() == "DNNL_MAX_CPU_ISA=AVX2"
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "AVX512_CORE_AMX")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert not cpu_features.native_bfloat16() and cpu_features.library_isa_cap() == "ATEN_CPU_CAPABILITY=avx2"


@pytest.mark.slow
def test_exports_are_cached_by_shape_and_mode(tmp_path):
    """Two modes and two shapes are four files; the same case again is a hit."""
    require_tool(registry.get("onnxruntime").missing())
    module = copy.deepcopy(reference_module(16, 2, 0, 4, 4)).eval()
    cases = [Case("onnxruntime", "cpu", "float32", mode, 1, h, w, 2, 16) for mode in ("fwd", "feature") for h, w in ((4, 4), (4, 6))]
    paths = {export_cache.onnx_file(module, case)[0] for case in cases}
    assert len(paths) == 4 and all(path.stat().st_size > 0 for path in paths)
    assert export_cache.onnx_file(module, cases[0])[1]["onnx_cache"] == "hit"
    assert not list(cache_dir().glob("onnx/.partial-*"))


def test_onnx_runtime_on_cuda_gets_the_runs_arithmetic_and_records_it():
    """ONNX Runtime's CUDA defaults are TF32 on and an exhaustive cuDNN search; a run records both off unless asked,
    so the provider is configured from the run's flags, and the variant is built from what the session reports."""
    from cmgm_bench_impls.ort import cuda_provider_options, variant_of

    plain = cuda_provider_options(0, 1234, tf32=False, cudnn_benchmark=False)
    assert plain == {"device_id": 0, "user_compute_stream": "1234", "use_tf32": "0", "cudnn_conv_algo_search": "HEURISTIC"}
    tuned = cuda_provider_options(1, 99, tf32=True, cudnn_benchmark=True)
    assert tuned["use_tf32"] == "1" and tuned["cudnn_conv_algo_search"] == "EXHAUSTIVE" and tuned["device_id"] == 1
    reported = {"CUDAExecutionProvider": {"use_tf32": "0", "cudnn_conv_algo_search": "HEURISTIC", "device_id": "0"}}
    assert variant_of("CUDAExecutionProvider", reported) == "CUDAExecutionProvider tf32=0 cudnn_conv_algo_search=HEURISTIC"
    assert variant_of("CPUExecutionProvider", {"CPUExecutionProvider": {}}) == "CPUExecutionProvider"


def test_an_aot_inductor_package_is_keyed_by_the_tf32_flags(monkeypatch):
    """A package compiled with TF32 allowed keeps TF32 kernels: a run without it must not load that package."""
    from cmgm_bench_impls import aot_inductor

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "a GPU")
    case = Case("aot-inductor", "cuda", "float32", "fwd", 1, 4, 4, 2, 8)
    keys = []
    for allowed in (False, True):
        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", allowed)
        keys.append(aot_inductor.machine_key(case))
    assert keys[0] != keys[1] and keys[1]["tf32_matmul"] is True


def test_an_aot_inductor_package_is_keyed_by_the_libraries_instruction_set_caps(monkeypatch):
    """A CPU package compiled with oneDNN held to AVX2 is another package than one compiled without the cap."""
    from cmgm_bench_impls import aot_inductor

    case = Case("aot-inductor", "cpu", "float32", "fwd", 1, 4, 4, 2, 8)
    for name in cpu_features.LIBRARY_ISA_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    plain = aot_inductor.machine_key(case)
    monkeypatch.setenv("DNNL_MAX_CPU_ISA", "AVX2")
    capped = aot_inductor.machine_key(case)
    assert "isa_caps" not in plain and capped["isa_caps"] == {"DNNL_MAX_CPU_ISA": "AVX2"} and capped != plain
