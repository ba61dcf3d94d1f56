"""FLOPs three ways agree exactly; peak memory behaves like the B·h·N² maps it is made of."""

import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cmgm_bench import registry

from cmgm_bench.workload import flops

from cmgm_bench.measure import allocator, memory
from cmgm_bench.config.cases import Case
from cmgm_bench.cli import app
from tests.helpers import FAST
from cmgm_bench.measure.counters import MAC_FAMILIES, analytic_macs, count_all
from cmgm_bench.workload.modes import autograd_context
from cmgm_bench.measure.prepare import prepare_case

runner = CliRunner()

SHAPES = [(1, 64, 8, 11, 11), (2, 32, 4, 5, 7), (1, 48, 2, 9, 4)]


@pytest.mark.parametrize("name", ["eager", "sdpa", "channels_last"])
@pytest.mark.parametrize("mode", ["fwd", "feature", "train"])
@pytest.mark.parametrize("batch,dim,heads,height,width", SHAPES)
def test_three_counts_agree_exactly(name, mode, batch, dim, heads, height, width):
    case = Case(name, "cpu", "float32", mode, batch, height, width, heads, dim)
    counts = count_all(prepare_case(case, registry.get(name), seed=0), case)
    closed_form = flops.macs(mode, batch, height * width, dim, heads)
    assert sum(counts["analytic"].values()) == closed_form
    flop_counter_macs = sum(counts["flop_counter"].get(f, 0) for f in MAC_FAMILIES) / 2
    assert flop_counter_macs == closed_form
    for family in MAC_FAMILIES:
        assert counts["flop_counter"].get(family, 0) == 2 * counts["analytic"][family], family
    if mode != "train":
        assert sum(counts["fvcore"].get(f, 0) for f in MAC_FAMILIES) == closed_form
        assert counts["fvcore"]["norm"] > 0  # the added handles and fvcore's own still count the rest


def test_closed_form_matches_design_formula():
    B, N, C, h = 3, 784, 64, 8
    assert flops.macs("fwd", B, N, C, h) == 22 * B * N * C**2 + B * N**2 * (2 * C + 9 * h**2)
    assert flops.flops("train", B, N, C, h) == 6 * flops.macs("fwd", B, N, C, h)
    assert analytic_macs("feature", B, N, C, h)["conv"] == 18 * B * N * C**2


def test_flops_command_prints_three_conventions():
    result = CliRunner().invoke(app, ["flops", "--res", "6x5", "--heads", "4", "--dim", "32"])
    assert result.exit_code == 0, result.output
    assert "fvcore MACs" in result.output and "FlopCounterMode FLOPs" in result.output
    assert "NO" not in result.output


def test_flops_command_bad_input():
    result = CliRunner().invoke(app, ["flops", "--heads", "5"])
    assert result.exit_code == 2 and "divisible" in result.stderr


def peak_mb(batch, height, width, mode="fwd"):
    case = Case("eager", "cpu", "float32", mode, batch, height, width, 8, 64)
    prepared = prepare_case(case, registry.get("eager"), seed=0)
    allocator.pin_for_timing()
    with autograd_context(mode):
        prepared.step()
        return min(memory.peak_bytes(prepared.step, "cpu") for _ in range(5)) / 2**20


needs_proc_and_glibc = pytest.mark.skipif(not memory.cpu_method_available(), reason="needs Linux /proc and glibc")


@needs_proc_and_glibc
def test_peak_is_at_least_the_outputs():
    batch, height, width = 1, 16, 16
    n = height * width
    outputs_mb = 4 * batch * (64 * n + 8 * n * n) / 2**20
    assert peak_mb(batch, height, width) >= outputs_mb


@pytest.mark.slow
@needs_proc_and_glibc
def test_peak_doubles_with_batch_and_quadruples_with_tokens():
    base = peak_mb(1, 24, 24)  # N = 576: the 10.6 MB maps dominate
    assert 1.7 < peak_mb(2, 24, 24) / base < 2.3
    assert 3.4 < peak_mb(1, 24, 48) / base < 4.6


THREE_RUNS_IN_ONE_PROCESS = """
import json, sys
from pathlib import Path
from cmgm_bench.cli import main
for index in range(3):
    out = Path(sys.argv[1]) / f"run{index}"
    try:
        main(["run", "--impl", "eager,sdpa", "--res", "28", "--threads", "1", "--out", str(out), "--no-report", *sys.argv[2:]])
    except SystemExit as exit:
        assert not exit.code, exit.code
"""


@pytest.mark.slow
@needs_proc_and_glibc
def test_peak_of_a_case_repeats_across_runs_within_one_percent(tmp_path):
    """Three identical runs in one process (as a script using the API would do; its heap fragmented by the runs
    before): eager and sdpa at 28x28 give the same peak (before the measured call had an arena of its own, sdpa
    after eager read 96, 115 or 134 MiB). A process of its own: in the test session's, threads that earlier tests
    left running may touch memory during the measured call, a limit the memory module documents."""
    subprocess.run([sys.executable, "-c", THREE_RUNS_IN_ONE_PROCESS, str(tmp_path), *FAST], check=True, capture_output=True)
    peaks = {}
    for index in range(3):
        for row in json.loads((tmp_path / f"run{index}" / "results.json").read_text())["cases"]:
            peaks.setdefault(row["row"]["impl"], []).append(row["row"]["peak_mem_mb"])
    assert sorted(peaks) == ["eager", "sdpa"] and all(len(values) == 3 for values in peaks.values()), peaks
    for impl, values in peaks.items():
        assert min(values) > 40, (impl, values)  # the maps are counted: 8 x 784 x 784 floats are 18.8 MiB each
        assert max(values) / min(values) < 1.01, (impl, values)


def minor_faults_per_call(call, calls=3, warm_up=3):
    for _ in range(warm_up):
        call()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        call()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls


@needs_proc_and_glibc
def test_timed_calls_reuse_freed_memory_instead_of_faulting_it_in_again():
    """Six 20 MiB blocks a call (eager's maps at 28x28): under the mmap threshold, 120 MiB freed at the end. With
    glibc's trim threshold the heap's top went back to the kernel and every call faulted ~30,000 pages in again."""
    pages_per_call = 6 * 20 * 2**20 // 4096

    def call():
        blocks = [torch.full((5 * 2**20,), float(index + 1)) for index in range(6)]
        return sum(float(block[-1]) for block in blocks)

    allocator.pin_for_timing()
    assert call() == 21.0
    assert minor_faults_per_call(call) < pages_per_call / 10


LARGE_BLOCKS_IN_A_FRESH_PROCESS = """
import json, resource, torch
from cmgm_bench.measure import allocator
allocator.pin_for_timing()

def call():  # one 64 MiB block: above the mmap threshold, so mapped and faulted in on every call
    return float(torch.ones(16 * 2**20)[-1])

for _ in range(3):
    call()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
total = sum(call() for _ in range(5))
print(json.dumps({"faults_per_call": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5,
                  "total": total, "policy": allocator.policy()}))
"""


@needs_proc_and_glibc
def test_blocks_above_the_mmap_threshold_fault_in_huge_pages_and_the_policy_says_so():
    """eager at 48x48 faulted ~330,000 4 KiB pages per call; on huge pages a 64 MiB block is 32 faults, not 16,384."""
    out = subprocess.run([sys.executable, "-c", LARGE_BLOCKS_IN_A_FRESH_PROCESS], capture_output=True, text=True, check=True)
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    assert measured["total"] == 5.0
    thp_mode = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if thp_mode.exists() and "[never]" not in thp_mode.read_text():
        assert measured["policy"].endswith("huge pages for blocks >= 2 MiB: on"), measured
        assert measured["faults_per_call"] < 16 * 2**20 * 4 / 4096 / 10, measured
    else:
        assert "huge pages for blocks >= 2 MiB: off (" in measured["policy"], measured


@needs_proc_and_glibc
def test_the_measured_call_runs_without_huge_pages_and_the_timed_calls_get_them_back():
    """A block on huge pages counts in 2 MiB steps by its alignment (a 28x28 peak once read 97.8 instead of 95.4 MiB)."""
    pr_get_thp_disable = 42
    seen = []
    memory.peak_bytes(lambda: seen.append(allocator.LIBC.prctl(pr_get_thp_disable, 0, 0, 0, 0)), "cpu")
    assert seen == [1]
    assert allocator.LIBC.prctl(pr_get_thp_disable, 0, 0, 0, 0) == 0


@needs_proc_and_glibc
def test_the_measured_call_keeps_the_callers_autograd_state_and_errors():
    seen = []
    with torch.inference_mode():
        memory.peak_bytes(lambda: seen.append((torch.is_inference_mode_enabled(), torch.is_grad_enabled())), "cpu")
    with torch.no_grad():
        memory.peak_bytes(lambda: seen.append((torch.is_inference_mode_enabled(), torch.is_grad_enabled())), "cpu")
    memory.peak_bytes(lambda: seen.append((torch.is_inference_mode_enabled(), torch.is_grad_enabled())), "cpu")
    assert seen == [(True, False), (False, False), (False, True)]

    def out_of_memory():
        raise RuntimeError("DefaultCPUAllocator: not enough memory")

    with pytest.raises(RuntimeError, match="not enough memory"):
        memory.peak_bytes(out_of_memory, "cpu")


@needs_proc_and_glibc
@pytest.mark.parametrize("mode", ["fwd", "feature", "train"])
def test_estimate_within_documented_factor(mode):
    """docs/performance.md: the estimate is within 2x of eager's measured peak once the maps dominate."""
    measured = peak_mb(1, 24, 24, mode)
    estimate = flops.estimated_peak_bytes(mode, 1, 24 * 24, 64, 8) / 2**20
    assert 1 / 2 < estimate / measured < 2


def test_run_fills_throughput_and_ceiling_columns(tmp_path):
    from tests.helpers import FAST
    import pandas as pd

    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", "--impl", "eager", "--res", "8", "--out", str(out), *FAST])
    assert result.exit_code == 0, result.output
    row = pd.read_csv(out / "results.csv").iloc[0]
    assert row.flops == flops.flops("fwd", 1, 64, 64, 8)
    assert row.gflops_per_s == pytest.approx(row.flops / (row.latency_ms / 1e3) / 1e9)
    assert 0 < row.pct_peak < 100
    assert 0 < row.floor_ms < row.latency_ms
    assert row.peak_mem_mb > 0 and row.est_mem_mb > 0
    import json

    ceilings = json.loads((out / "results.json").read_text())["ceilings"]["cpu"]
    assert ceilings["matmul_gflops"]["float32"] > 1 and ceilings["copy_gbytes_per_s"] > 0.1
    # the side the rate was measured at is recorded and shown: a power of two from 256 up to the CPU's largest
    assert ceilings["matmul_side"]["float32"] in (256, 512, 1024) and "blocked samples" in ceilings["method"]
    assert f"| cpu | float32 | {ceilings['matmul_side']['float32']} |" in (out / "report.md").read_text()


def test_emulated_dtype_uses_the_float32_ceiling_and_no_share_exceeds_100():
    """A CPU without bfloat16 units: 0.9 GFLOP/s native, 150 in float32; an upcasting case at 120 GFLOP/s."""
    from cmgm_bench.config.cases import Case
    from cmgm_bench.measure import ceilings as ceilings_module
    from cmgm_bench.measure.measurement import Measurement, Status
    from cmgm_bench.results.run_meta import RunMeta
    from cmgm_bench.views.report import ceiling_notes

    native = {"float32": 150.0, "bfloat16": 0.9, "float16": 1.1}
    device = ceilings_module.Ceilings(matmul_gflops=ceilings_module.effective(native), matmul_gflops_native=native,
                                      emulated=tuple(ceilings_module.emulated(native)), copy_gbytes_per_s=20.0)
    assert device.matmul_gflops == {"float32": 150.0, "bfloat16": 150.0, "float16": 150.0}
    assert device.emulated == ("bfloat16", "float16")
    # a case's rate is its FLOPs over its median sample: 1 ms samples, FLOPs = rate x 1e6
    rates = [("bfloat16", 120.0), ("float32", 90.0), ("float32", 180.0), ("float32", 100.0)]
    cases = [Measurement(Case(f"case{index}", "cpu", dtype, "fwd", 1, 4, 4, 2, 8), Status.OK, samples_s=[1e-3], flops=int(rate * 1e6))
             for index, (dtype, rate) in enumerate(rates)]
    measured, shares = device, []
    for case in cases:  # as the sweep accounts them: a raised ceiling is kept for the cases after it
        accounted, raised = ceilings_module.account(device, case)
        device = raised or device
        shares.append(accounted.pct_peak)
    assert shares[0] == pytest.approx(80.0)  # not 120 / 0.9 = 13333 %
    assert shares[2] == pytest.approx(100.0) and shares[3] == pytest.approx(100 * 100 / 180)
    assert device.raised["float32"] == {"from": 150.0, "to": pytest.approx(180.0), "by": "case2 fwd B1 8x4x4 h2"}
    assert not measured.raised and measured.matmul_gflops["float32"] == 150.0  # accounting changes no ceilings
    assert all(share <= 100 for share in shares)
    assert ceilings_module.Ceilings.from_json(json.loads(json.dumps(device.to_json()))) == device  # as run.json keeps them
    lines = ceiling_notes(RunMeta(ceilings={"cpu": device}))
    assert "- cpu bfloat16 matmul: 0.9 GFLOP/s, no native support; % peak uses the float32 ceiling (150.0 GFLOP/s)." in lines
    assert any("`case2 fwd B1 8x4x4 h2` ran at 180.0 GFLOP/s" in line for line in lines)


def test_cases_of_two_machine_models_are_accounted_against_their_own_ceilings(tmp_path):
    """A remote run whose cases ran on two CPU models (--allow-mixed-hosts): each worker's ceilings are kept
    per machine model, each case's share uses its machine's, and the report shows both tables and rooflines."""
    from cmgm_bench.measure import ceilings as ceilings_module
    from cmgm_bench.measure.measurement import Measurement, Status
    from cmgm_bench.results.run_meta import RunMeta
    from cmgm_bench.results.store import RunWriter

    def measured(gflops):
        return ceilings_module.Ceilings(matmul_gflops={"float32": gflops}, matmul_gflops_native={"float32": gflops},
                                        copy_gbytes_per_s=20.0)

    meta = RunMeta(environment={"cpu_model": "CPU A"}, baseline="eager")
    assert meta.adopt_ceilings("cpu", "CPU A", measured(100.0))
    assert meta.adopt_ceilings("cpu", "CPU B", measured(400.0))
    assert not meta.adopt_ceilings("cpu", "CPU B", measured(7.0))  # a second worker of a known model: the first is kept
    assert not meta.adopt_ceilings("cpu", "CPU A", measured(7.0))
    assert meta.ceilings_of("cpu", "CPU A").matmul_gflops["float32"] == 100.0
    assert meta.ceilings_of("cpu", "CPU B").matmul_gflops["float32"] == 400.0
    assert meta.ceilings_of("cpu", "CPU C") is None
    assert RunMeta.from_json(json.loads(json.dumps(meta.to_json()))) == meta  # as run.json keeps them

    def case_on(model, impl):  # 50 GFLOP/s: 1 ms samples, 5e7 FLOPs
        return Measurement(Case(impl, "cpu", "float32", "fwd", 1, 4, 4, 2, 8), Status.OK, samples_s=[1e-3, 1e-3, 1e-3], flops=50_000_000,
                           host={"hostname": model, "cpu_model": model, "gpu_name": None})

    cases = [case_on(model, impl) for model in ("CPU A", "CPU B") for impl in ("eager", "sdpa")]
    accounted = [ceilings_module.account(meta.ceilings_of("cpu", m.machine), m)[0] for m in cases]
    assert [m.pct_peak for m in accounted] == pytest.approx([50.0, 50.0, 12.5, 12.5])
    writer = RunWriter(tmp_path / "run", meta, accounted)
    writer.finish()
    assert CliRunner().invoke(app, ["report", str(tmp_path / "run")]).exit_code == 0
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| machine | device | matmul dtype |" in report
    assert "| CPU A | cpu | float32 | - | 100.0 | 100.0 |" in report and "| CPU B | cpu | float32 | - | 400.0 | 400.0 |" in report
    assert (tmp_path / "run" / "roofline.png").exists() and (tmp_path / "run" / "roofline-2.png").exists()


@pytest.mark.slow
def test_a_case_beating_the_ceiling_is_capped_at_100_in_a_real_run(tmp_path, monkeypatch):
    """The measured ceiling set far too low: every share is still at most 100 and the report says why."""
    import json

    import pandas as pd

    from cmgm_bench.measure import ceilings as ceilings_module
    from tests.helpers import FAST

    monkeypatch.setattr(ceilings_module, "matmul_gflops", lambda device, dtype: (1e-3, 256))
    out = tmp_path / "run"
    # measured afresh with the low matmul rate, not reused from an earlier run
    result = CliRunner().invoke(app, ["run", "--impl", "eager,sdpa", "--res", "6,8", "--ceilings-max-age", "0", "--out", str(out), *FAST])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out / "results.csv")
    assert (frame.pct_peak <= 100 + 1e-9).all() and (frame.pct_peak - 100).abs().min() < 1e-9
    raised = json.loads((out / "results.json").read_text())["ceilings"]["cpu"]["raised"]["float32"]
    assert raised["to"] == pytest.approx(frame.gflops_per_s.max())
    assert "the ceiling was raised to its rate" in (out / "report.md").read_text()


@pytest.mark.slow
def test_memory_held_for_the_calls_is_resident_not_peak(tmp_path):
    """An implementation that keeps 50 MiB for its calls (as a CUDA graph keeps its pool, or a runtime its planned
    buffers): the harness reads it as resident memory, released with the implementation, never in a call's peak;
    what the implementation says it holds (Built.held_bytes) is recorded beside it."""
    import pandas as pd

    from tests.helpers import FAST, write_file

    path = write_file(
        tmp_path,
        "holder.py",
        """
        import torch
        from cmgm_bench.registry import Built, register

        @register("holder", description="eager, holding 50 MiB for its calls", modes=("fwd",))
        def build(module, case):
            held = torch.ones(50 * 2**20 // 4)  # written: resident
            return Built(fn=lambda x, y: module(x, y) if held.numel() else None, held_bytes=lambda: held.numel() * 4)
        """,
    )
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", "--impl-file", str(path), "--impl", "holder,eager", "--res", "6", "--out",
                                      str(out), *FAST, "--no-report"])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out / "results.csv").set_index("impl")
    assert 50 <= frame.resident_mb["holder"] < 50 + frame.resident_mb["eager"] + 4  # page and heap granularity
    assert frame.peak_mem_mb["holder"] < 2 * frame.peak_mem_mb["eager"] + 1  # a call of holder allocates as eager's
    notes = {json.loads(line)["row"]["impl"]: json.loads(line)["notes"] for line in (out / "cases.jsonl").read_text().splitlines()}
    assert notes["holder"]["held_bytes"] == 50 * 2**20 and "held_bytes" not in notes["eager"]
