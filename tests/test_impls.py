"""Every registered implementation, in every mode it claims, against the float64 reference."""

import random
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from cmgm_bench import registry
from cmgm_bench.config.cases import Case
from cmgm_bench.cli import app
from cmgm_bench.measure.case_runner import CaseRunner
from cmgm_bench.results.store import to_row
from tests.helpers import measure_config
from tests.helpers import FAST, require_tool, write_file

ROOT = Path(__file__).resolve().parent.parent
QUICK = measure_config(memory=False)


def random_shapes(count, seed):
    """Shapes the implementations were not tuned on: non-square grids, odd heads and dims."""
    rng = random.Random(seed)
    shapes = []
    for heads in (1, 2, 4, 8, 16)[:count]:
        dim = rng.choice([d for d in (32, 64, 96) if d % heads == 0])
        shapes.append((rng.choice([1, 2]), dim, heads, rng.randint(3, 17), rng.randint(3, 17)))
    return shapes


# One draw of shapes for every implementation: the runtimes that share an exported graph
# (ONNX Runtime, OpenVINO in float32 and bfloat16) then export each shape once per session.
SHAPES_SEED = 20261129


def claimed_cases(name, shape_count):
    impl = registry.get(name)
    return [
        Case(name, "cpu", impl.dtype, mode, b, h, w, heads, dim)
        for (b, dim, heads, h, w) in random_shapes(shape_count, seed=SHAPES_SEED)
        for mode in impl.modes
    ]


# Builds that take seconds to tens of seconds per shape: fewer shapes, below.
COMPILED = ("compile", "compile-max", "aot-inductor")


# The only CPU cases that may be unsupported, and why: hardware this CPU may lack.
MAY_BE_UNSUPPORTED = {"fused-bf16": "no native bfloat16", "openvino-bf16": "no native bfloat16"}


@pytest.mark.parametrize("name", [
    # the runtimes (an optional package each) export a graph per shape first: seconds a shape
    pytest.param(n, marks=[pytest.mark.slow] if impl.requires is not None else [])
    for n, impl in registry.all_implementations().items() if n not in COMPILED and "cpu" in impl.devices
])
def test_implementation_within_tolerance(name):
    runner = CaseRunner(QUICK)
    require_tool(registry.get(name).missing())
    for case in claimed_cases(name, 5):
        row = to_row(runner.run(case))
        if row["status"] == "unsupported" and name in MAY_BE_UNSUPPORTED:
            assert MAY_BE_UNSUPPORTED[name] in row["error"], (case, row["error"])
            continue
        assert row["status"] == "ok", (case, row["error"])
        assert row["out_rel_err"] <= row["tolerance"]
        if case.mode == "feature":
            assert row["attn_rel_err"] is None
        else:
            assert 0 < row["attn_rel_err"] <= row["tolerance"]
        if case.mode == "train":
            assert 0 < row["grad_rel_err"] <= row["tolerance"]


@pytest.mark.slow
@pytest.mark.parametrize("name,shapes", [("compile", 1), ("compile-max", 1), ("aot-inductor", 1)])
def test_compiled_implementation_within_tolerance(name, shapes):
    """Compilation costs ~10 s a case on two cores, so one shape (every mode the implementation claims)."""
    runner = CaseRunner(QUICK)
    for case in claimed_cases(name, shapes):
        row = to_row(runner.run(case))
        assert row["status"] == "ok", (case, row["error"])
        assert row["compile_s"] > 0


def test_a_shape_compiled_before_hits_inductors_cache_and_says_so():
    """The Dynamo reset after each case keeps Inductor's on-disk cache: the same case again is a hit, recorded."""
    runner = CaseRunner(QUICK)
    case = Case("compile", "cpu", "float32", "feature", 1, 5, 6, 2, 16)
    runner.run(case)
    again = runner.run(case)
    assert again.status == "ok"
    assert again.notes["inductor_fx_graph_cache"]["hit"] >= 1 and again.notes["inductor_fx_graph_cache"]["miss"] == 0


def test_unsupported_mode_and_device_give_rows_with_reasons(tmp_path):
    impl_file = write_file(
        tmp_path,
        "fwd_only.py",
        """
        from cmgm_bench.registry import register

        @register("fwd-only", description="test", devices=("cpu",), modes=("fwd",))
        def build(module, case):
            return lambda x, y: module(x, y)
        """,
    )
    registry.load_file(str(impl_file))
    runner = CaseRunner(QUICK)
    row = to_row(runner.run(Case("fwd-only", "cpu", "float32", "feature", 1, 4, 4, 2, 8)))
    assert row["status"] == "unsupported" and "modes fwd" in row["error"]
    row = to_row(runner.run(Case("fwd-only", "cuda", "float32", "fwd", 1, 4, 4, 2, 8)))
    assert row["status"] == "unsupported" and "devices cpu" in row["error"]


@pytest.mark.slow
def test_wrong_implementation_is_inaccurate_and_strict_exits_1(tmp_path):
    impl_file = write_file(
        tmp_path,
        "no_residual.py",
        """
        import torch
        from cmgm_bench.registry import register

        @register("no-residual", description="forgets the x-token residual after proj", modes=("fwd",))
        def build(module, case):
            def forward(x, y):
                B, C, H, W = x.shape
                h, N = module.num_heads, H * W
                xt, yt = x.flatten(2).transpose(1, 2), y.flatten(2).transpose(1, 2)
                k = module.k(module.lny(yt)).view(B, N, h, C // h).transpose(1, 2)
                q, v = module.qv(module.lnx(xt)).view(B, N, 2, h, C // h).permute(2, 0, 3, 1, 4)
                attn = torch.softmax(q @ k.transpose(-2, -1) * module.scale, dim=-1)
                f = module.proj((attn @ v).transpose(1, 2).reshape(B, N, C))  # + xt is missing
                f = f.transpose(1, 2).reshape(B, C, H, W)
                return module.conv2(f) + f, module.attention_map(attn)
            return forward
        """,
    )
    out = tmp_path / "run"
    args = ["run", "--impl-file", str(impl_file), "--impl", "no-residual", "--res", "5", "--out", str(out), *FAST]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out / "results.csv")
    assert frame.status.tolist() == ["inaccurate"]
    assert "tolerance" in frame.error[0]
    strict = CliRunner().invoke(app, [*args[:-len(FAST) - 2], "--out", str(tmp_path / "run2"), *FAST, "--strict"])
    assert strict.exit_code == 1


@pytest.mark.parametrize(
    "text,message",
    [("raise ImportError('boom')\n", "failed to import"), ("x = 1\n", "registers no implementation")],
)
def test_bad_implementation_file_exits_2_naming_the_file(tmp_path, text, message):
    path = write_file(tmp_path, "bad.py", text)
    result = CliRunner().invoke(app, ["run", "--impl-file", str(path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert message in result.stderr and "bad.py" in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_the_documented_example_is_the_example_file_and_runs(tmp_path):
    example = (ROOT / "examples" / "my_impl.py").read_text()
    assert example.strip() in (ROOT / "docs" / "implementations.md").read_text()
    out = tmp_path / "run"
    args = ["run", "--impl-file", "examples/my_impl.py", "--impl", "scaled-q", "--res", "11", "--mode", "fwd,feature", "--out",
            str(out), *FAST]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out / "results.csv")
    assert frame.status.tolist() == ["ok", "ok"]
    assert frame.source.str.endswith("my_impl.py").all()


def test_recompile_while_timing_invalidates_the_case(tmp_path):
    impl_file = write_file(
        tmp_path,
        "recompiles.py",
        """
        import torch
        from cmgm_bench.registry import register

        @register("recompiles", description="compiled fn guarded on a changing Python int", modes=("feature",))
        def build(module, case):
            calls = [0]

            @torch.compile(dynamic=False)
            def scaled(out, step):
                return out * (1 + step * 0)

            def forward(x, y):
                calls[0] += 1
                out, _ = module(x, y, attn_map=False)
                return scaled(out, calls[0]), None
            return forward
        """,
    )
    registry.load_file(str(impl_file))
    row = to_row(CaseRunner(QUICK).run(Case("recompiles", "cpu", "float32", "feature", 1, 4, 4, 2, 8)))
    assert row["status"] == "error"
    assert "recompiled" in row["error"]


def test_entry_point_group_registers_implementations(monkeypatch, tmp_path):
    write_file(
        tmp_path,
        "third_party_impl.py",
        """
        from cmgm_bench.registry import register

        @register("third-party", description="from an entry point")
        def build(module, case):
            return lambda x, y: module(x, y, attn_map=case.mode != "feature")
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    from importlib.metadata import EntryPoint

    fake = [EntryPoint(name="third", value="third_party_impl", group=registry.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(registry, "entry_points", lambda group: fake)
    monkeypatch.setattr(registry, "_loaded_entry_points", False)
    registry.load_entry_points()
    assert registry.get("third-party").description == "from an entry point"


def test_the_sdpa_backend_that_ran_is_observed(tmp_path):
    """The column reports the kernel SDPA dispatched to, not a constant: forcing the math backend shows up."""
    path = write_file(
        tmp_path,
        "math_sdpa.py",
        """
        from torch.nn.attention import SDPBackend, sdpa_kernel
        from cmgm_bench.registry import register
        from cmgm_bench_impls.sdpa import build as build_sdpa

        @register("sdpa-math", description="sdpa forced onto the math backend", modes=("feature",))
        def build(module, case):
            inner = build_sdpa(module, case)

            def forward(x, y):
                with sdpa_kernel(SDPBackend.MATH):
                    return inner(x, y)

            return forward
        """,
    )
    registry.load_file(str(path))
    runner = CaseRunner(QUICK)
    backends = {
        name: to_row(runner.run(Case(name, "cpu", "float32", "feature", 1, 6, 5, 2, 32)))["sdpa_backend"]
        for name in ("eager", "sdpa", "sdpa-math")
    }
    assert backends == {"eager": None, "sdpa": "flash-cpu", "sdpa-math": "math"}


def test_errors_computed_in_chunks_equal_the_direct_formulas(monkeypatch):
    """Chunks never convert a whole output to float64 (8 GiB at B=8, 64x64); the numbers must not change."""
    from cmgm_bench.measure import accuracy

    torch.manual_seed(7)
    ref = torch.randn(3, 5, 11, dtype=torch.float64)
    value = (ref + 1e-3 * torch.randn_like(ref)).float()
    monkeypatch.setattr(accuracy, "CHUNK_ELEMENTS", 7)  # 165 elements: 23 full chunks and a short one
    want_rel = float((value.double() - ref).norm() / ref.norm())
    assert accuracy.relative_error(value, ref) == pytest.approx(want_rel, rel=1e-12)
    assert accuracy.max_abs_error(value, ref) == float((value.double() - ref).abs().max())
    assert accuracy.relative_error(torch.zeros(4), torch.zeros(4, dtype=torch.float64)) == 0.0


@pytest.mark.parametrize("mode, scope", [("fwd", "first sample"), ("feature", "first sample"), ("train", "none")])
def test_a_reference_too_big_for_memory_covers_one_sample_or_none(monkeypatch, mode, scope):
    """The float64 reference is budgeted: when the whole batch does not fit, inference is checked on the first
    sample (running BatchNorm statistics: samples are independent), train not at all; the column says which."""
    from cmgm_bench.measure import memory
    from cmgm_bench.workload import flops

    case = Case("eager", "cpu", "float32", mode, 4, 6, 7, 2, 16)
    full = flops.estimated_peak_bytes(mode, 4, 42, 16, 2, "float64")
    monkeypatch.setattr(memory, "available_bytes", lambda device: full // 2)  # the batch does not fit, a sample does
    measured = CaseRunner(measure_config(memory=False, memory_guard=False)).run(case)
    assert measured.status == "ok" and measured.accuracy_scope == scope
    if scope == "none":
        assert measured.errors is None and "does not fit" in measured.notes["accuracy"]
    else:
        assert 0 < measured.errors.out_rel_err < 1e-6
        assert (measured.errors.attn_rel_err is None) == (mode == "feature")
    assert "accuracy" in measured.notes["phase_s"]
    monkeypatch.setattr(memory, "available_bytes", lambda device: None)
    assert CaseRunner(measure_config(memory=False)).run(case).accuracy_scope == "full"
