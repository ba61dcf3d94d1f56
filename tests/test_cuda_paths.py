"""The CUDA code paths: what can be checked on the CPU, and GPU checks marked `cuda`."""

import statistics

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import cmgm_bench
from cmgm_bench import registry

from cmgm_bench.measure import timing
from cmgm_bench.config.cases import Case
from cmgm_bench.cli import app
from cmgm_bench.measure.case_runner import CaseRunner
from cmgm_bench.results.store import to_row
from tests.helpers import measure_config
from cmgm_bench.stats import StopRule
from tests.helpers import FAST, write_file

runner = CliRunner()


def test_clock_selection(monkeypatch):
    assert isinstance(timing.clock_for("cpu"), timing.WallClock)

    class FakeEvent:
        def __init__(self, enable_timing):
            assert enable_timing

    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    assert isinstance(timing.clock_for("cuda"), timing.CudaEventClock)
    assert isinstance(timing.clock_for("cuda:1"), timing.CudaEventClock)


@pytest.mark.slow
def test_cold_cache_flushes_before_every_sample_and_is_recorded(tmp_path):
    calls = []
    samples = timing.collect_samples(lambda: None, timing.WallClock(), StopRule(min_samples=5, max_time_s=0.01),
                                     before_each=lambda: calls.append(1))
    assert len(calls) == len(samples) >= 5
    flusher = timing.CacheFlusher("cpu", nbytes=1 << 20)
    flusher.buffer.fill_(7)
    flusher()
    assert int(flusher.buffer.abs().sum()) == 0
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "--impl", "eager", "--res", "4", "--cold-cache", "--out", str(out), *FAST, "--no-report"])
    assert result.exit_code == 0, result.output
    import json

    data = json.loads((out / "results.json").read_text())
    assert data["cases"][0]["notes"]["cold_cache"] is True and data["settings"]["cold_cache"] is True


@pytest.mark.cuda
def test_tf32_and_cudnn_options_are_recorded(tmp_path):
    """(On the CPU both options are refused: they would change nothing; tests/test_bad_inputs.py.)"""
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "--impl", "eager", "--res", "4", "--device", "cuda", "--tf32", "--cudnn-benchmark",
                                 "--out", str(out), *FAST, "--no-report"])
    assert result.exit_code == 0, result.output
    import json

    settings = json.loads((out / "results.json").read_text())["settings"]
    assert settings["tf32"] is True and settings["cudnn_benchmark"] is True


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the failure path without CUDA")
def test_graph_capture_failure_is_unsupported_with_reason():
    from cmgm_bench_impls.cudagraph import capture

    with pytest.raises(registry.Unsupported, match="CUDA graph capture failed"):
        capture(lambda x, y: (x, y), torch.ones(2), torch.ones(2))


def plugin_row(tmp_path, name: str, text: str) -> dict:
    """The row of one small fwd case of the implementation ``name`` that ``text`` registers."""
    registry.load_file(str(write_file(tmp_path, f"{name}.py", text)))
    return to_row(CaseRunner(measure_config(stop_rule=StopRule(min_samples=1, max_time_s=0))).run(Case(name, "cpu", "float32",
        "fwd", 1, 4, 4, 2, 8)))


def test_unsupported_raised_by_a_builder_becomes_a_row(tmp_path):
    row = plugin_row(tmp_path, "refuses", """
        from cmgm_bench.registry import Unsupported, register

        @register("refuses", description="raises Unsupported", modes=("fwd",))
        def build(module, case):
            raise Unsupported("no kernel for this GPU")
        """)
    assert row["status"] == "unsupported" and row["error"] == "no kernel for this GPU"


@pytest.mark.slow
def test_gpu_only_implementations_are_unsupported_on_the_cpu(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "--impl", "cudagraph,sdpa-flash", "--mode", "fwd,feature", "--res", "4", "--out",
                                 str(out), *FAST, "--no-report"])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out / "results.csv")
    assert (frame.status == "unsupported").all() and frame.error.str.contains("supports").all()


# -- on a GPU ----------------------------------------------------------------------------------

QUICK = measure_config(stop_rule=StopRule(min_samples=3, max_time_s=0.05), memory=True)


@pytest.fixture(autouse=True)
def _no_tf32():
    """What `run` does by default (--no-tf32); cuDNN's own default would allow TF32 convolutions.
    The process's flags are restored afterwards, so no other test inherits them."""
    if not torch.cuda.is_available():
        yield
        return
    from cmgm_bench.machine.process_setup import configure_cuda

    flags = (torch.backends.cuda.matmul, "allow_tf32"), (torch.backends.cudnn, "allow_tf32"), (torch.backends.cudnn, "benchmark")
    saved = [getattr(owner, name) for owner, name in flags]
    configure_cuda(tf32=False, cudnn_benchmark=False)
    yield
    for (owner, name), value in zip(flags, saved):
        setattr(owner, name, value)


# The implementations that declare CUDA but may still be unsupported on a GPU machine, and the words
# their reason must contain; every other pair that declares CUDA must run.
MAY_BE_UNSUPPORTED_ON_CUDA = {
    "onnxruntime": ("pip install",),  # the CUDA provider ships in onnxruntime-gpu; or the runtimes extra is not installed
    "aot-inductor": ("no C++ compiler",),
}
# (batch, height, width, heads, dim): odd sides, 143 tokens (above one 128-row flash-attention tile), head dim 8;
# one shape, so that the compiled implementations' builds fit the GPU check's two minutes of tests
CUDA_SHAPE = (2, 13, 11, 4, 32)


@pytest.mark.cuda
@pytest.mark.parametrize("name", list(registry.all_implementations()))
def test_every_implementation_runs_on_cuda_within_tolerance_or_says_why_not(name):
    """sdpa-flash, cudagraph and the rest must run (H100/H200 have flash attention for head dim 8); a pair
    the implementation does not declare is unsupported for exactly the registry's reason."""
    impl = registry.get(name)
    runner_ = CaseRunner(QUICK)
    for mode in ("fwd", "feature", "train"):
        case = Case(name, "cuda", impl.dtype, mode, *CUDA_SHAPE)
        row = to_row(runner_.run(case))
        if "cuda" not in impl.devices or mode not in impl.modes:
            assert (row["status"], row["error"]) == ("unsupported", impl.unsupported_reason(case))
            continue
        if row["status"] == "unsupported" and name in MAY_BE_UNSUPPORTED_ON_CUDA:
            assert any(words in row["error"] for words in MAY_BE_UNSUPPORTED_ON_CUDA[name]), row["error"]
            continue
        assert row["status"] == "ok", (name, mode, row["status"], row["error"])
        # what it keeps plus what a call adds: a CUDA graph's replays live in its pool, which is resident
        assert row["resident_mb"] + row["peak_mem_mb"] > 0, (name, mode)
        assert row["samples"] >= 3


@pytest.mark.cuda
def test_cuda_graph_replays_follow_new_input_values_as_eager_does():
    """New values copied into the graph's static inputs, and new tensors passed in: every replay equals eager
    on the same values, and differs from the replay before (a stale output would repeat it)."""
    from cmgm_bench.measure.prepare import prepare_case

    case = Case("cudagraph", "cuda", "float32", "fwd", 2, 16, 16, 8, 64)
    graph = prepare_case(case, registry.get("cudagraph"), seed=0)
    eager = prepare_case(Case("eager", *case.key[1:]), registry.get("eager"), seed=0)
    generator = torch.Generator(device="cuda").manual_seed(5)
    previous = None
    with torch.inference_mode():
        graph.step()  # the capture, with the harness's inputs as the static ones
        for replay in range(4):
            x, y = (torch.randn(graph.x.shape, device="cuda", generator=generator) for _ in range(2))
            if replay % 2 == 0:
                graph.x.copy_(x)
                graph.y.copy_(y)
                got = [t.clone() for t in graph.step()]
            else:
                got = [t.clone() for t in graph.fn(x, y)]
            want = eager.fn(x, y)
            for a, b in zip(got, want):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
            if previous is not None:
                assert not torch.equal(got[0], previous[0])
            previous = got


HOST_LAUNCH_COVER_CYCLES = 2_000_000  # ~1 ms at an H200's 1.98 GHz, more while its clocks are low: longer than a launch


@pytest.mark.cuda
def test_the_cold_cache_flush_evicts_what_a_warm_call_finds_in_l2():
    """A sum over a quarter of L2: warm, its data is in L2; after the flush (2x L2 streamed) it comes from
    memory and is slower (expected ~1.2-2x: L2 against HBM bandwidth, plus a fixed launch cost). A flush
    that did nothing would leave the two within a few percent.

    The events must time the sum alone in both arms: the GPU spins (``torch.cuda._sleep``) while the host
    queues the events and the sum, so neither arm waits for the host's launch. Without the spin, the warm arm
    starts on an idle GPU and times the host's launch (~10-20 us, more than the sum), while the cold arm's
    events queue behind the flush: on an H200 the cold sum then read faster than the warm one."""
    l2_bytes = torch.cuda.get_device_properties("cuda").L2_cache_size
    data = torch.randn(l2_bytes // 4 // 4, device="cuda")  # float32: a quarter of L2
    flusher = timing.CacheFlusher("cuda")
    assert flusher.nbytes == 2 * l2_bytes

    def median_ms(before_each) -> float:
        times = []
        for _ in range(60):
            before_each()
            torch.cuda._sleep(HOST_LAUNCH_COVER_CYCLES)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            data.sum()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times[10:])

    warm = median_ms(lambda: None)
    cold = median_ms(flusher)
    assert cold > 1.1 * warm, (cold, warm)


# -- fixes of the CUDA paths that the CPU can check ----------------------------------------------


def test_every_timing_command_sets_the_process_up_the_same_way(tmp_path, monkeypatch):
    """run, ab and profile (and --isolate children, through run) share one set-up: threads, TF32, allocator."""
    from cmgm_bench import api
    from cmgm_bench.execution import sweep
    from cmgm_bench.machine import process_setup

    calls = []
    real = sweep.prepare_process

    def recording(threads, tf32=False, cudnn_benchmark=False):
        calls.append((threads, tf32, cudnn_benchmark))
        return real(threads, tf32, cudnn_benchmark)

    for module in (sweep, api, process_setup):  # process_setup: where the commands import it from when they run
        monkeypatch.setattr(module, "prepare_process", recording)
    assert runner.invoke(app, ["run", "--impl", "eager", "--res", "4", "--threads", "1", "--out", str(tmp_path / "run"), *FAST,
                               "--no-report"]).exit_code == 0
    assert runner.invoke(app, ["ab", "eager", "sdpa", "--res", "4", "--threads", "1", "--max-time", "0.1", "--min-pairs",
                               "2"]).exit_code == 0
    profiled = runner.invoke(app, ["profile", "--impl", "eager", "--res", "4", "--threads", "1", "--trace", str(tmp_path / "trace.json")])
    assert profiled.exit_code == 0, profiled.output
    assert calls == [(1, False, False)] * 3


def test_the_tf32_setting_leaves_torch_export_working_and_is_recorded():
    """torch 2.13: setting cuDNN's fp32_precision to "ieee" makes torch.export fail later in the process
    (it reads the legacy flag, which then raises); the set-up must leave export working, both ways."""
    import warnings

    from cmgm_bench.machine import process_setup

    flags = (torch.backends.cuda.matmul, "allow_tf32"), (torch.backends.cudnn, "allow_tf32"), (torch.backends.cudnn, "benchmark")
    saved = [getattr(owner, name) for owner, name in flags]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for tf32 in (True, False):
                process_setup.configure_cuda(tf32=tf32, cudnn_benchmark=tf32)
                state = process_setup.cuda_arithmetic()
                assert state["tf32_matmul"] is tf32 and state["tf32_cudnn"] is tf32 and state["cudnn_benchmark"] is tf32
                assert state["fp32_precision_matmul"] == ("tf32" if tf32 else "ieee")
                exported = torch.export.export(torch.nn.Linear(3, 2), (torch.randn(4, 3),))
                assert exported.module()(torch.ones(4, 3)).shape == (4, 2)
    finally:
        for (owner, name), value in zip(flags, saved):
            setattr(owner, name, value)


def test_resume_refuses_a_run_made_on_another_machine(tmp_path):
    import json

    out = tmp_path / "run"
    assert runner.invoke(app, ["run", "--impl", "eager", "--res", "4,5", "--out", str(out), *FAST, "--no-report"]).exit_code == 0
    for name in ("run.json", "results.json"):
        data = json.loads((out / name).read_text())
        data["environment"]["cpu_model"] = "Another CPU"
        (out / name).write_text(json.dumps(data))
    result = runner.invoke(app, ["run", "--resume", str(out)])
    assert result.exit_code == 2
    assert "ran on another machine or software: cpu_model was 'Another CPU'" in result.stderr


def test_the_commit_comes_from_the_environment_where_there_is_no_git(monkeypatch, capsys):
    from cmgm_bench.machine import env

    def no_git(*args, **kwargs):
        raise OSError("git: not found")

    monkeypatch.setattr(env.subprocess, "run", no_git)
    monkeypatch.delenv(env.GIT_COMMIT_ENV, raising=False)
    env._warn_no_commit.cache_clear()
    assert env.git_commit() is None and env.git_commit() is None
    warned = capsys.readouterr().err.splitlines()
    assert warned == [f"warning: no git commit to record (not a git checkout, and ${env.GIT_COMMIT_ENV} is not set)"]  # once
    monkeypatch.setenv(env.GIT_COMMIT_ENV, "0123abcd")
    assert env.git_commit() == "0123abcd"


def test_the_memory_estimate_keeps_mixed_precision_maps_in_float32():
    from cmgm_bench.workload import flops

    maps = 5 * 8 * 784**2
    assert flops.estimated_peak_bytes("fwd", 1, 784, 64, 8, "bfloat16") == 4 * maps + 2 * 8 * 784 * 64
    assert flops.estimated_peak_bytes("fwd", 1, 784, 64, 8, "bfloat16") > flops.estimated_peak_bytes("fwd", 1, 784, 64, 8, "float32") * 0.99


def test_only_a_missing_flash_kernel_makes_sdpa_flash_unsupported():
    from cmgm_bench_impls.sdpa_flash import flash_unavailable

    assert flash_unavailable(RuntimeError("No available kernel. Aborting execution."))
    assert not flash_unavailable(RuntimeError("CUDA error: an illegal memory access was encountered in flash_fwd_kernel"))


def test_out_of_memory_during_graph_capture_is_oom_not_unsupported(tmp_path):
    from cmgm_bench_impls.cudagraph import capture_failure

    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert capture_failure(oom) is oom
    assert isinstance(capture_failure(RuntimeError("operation not permitted when stream is capturing")), registry.Unsupported)
    row = plugin_row(tmp_path, "capture-oom", """
        import torch
        from cmgm_bench_impls.cudagraph import capture_failure
        from cmgm_bench.registry import register

        @register("capture-oom", description="capture runs out of memory", modes=("fwd",))
        def build(module, case):
            def forward(x, y):
                raise capture_failure(torch.OutOfMemoryError("CUDA out of memory"))
            return forward
        """)
    assert row["status"] == "oom"


def test_short_gpu_calls_are_timed_in_blocks_and_the_block_size_is_recorded():
    """A fake GPU clock: 50 us of launch-and-wait overhead per event pair, 0.1 ms of work per call. Timed one by
    one a call looks 1.5x slower than it is; the block doubles until a measured block lasts >= 1 ms."""

    class FakeGpuClock:
        name, min_block_s = "fake-gpu", 1e-3

        def __init__(self):
            self.blocks = []

        def time_calls(self, fn, calls=1):
            for _ in range(calls):
                fn()
            self.blocks.append(calls)
            return (50e-6 + calls * 100e-6) / calls

    calls = []
    clock = FakeGpuClock()
    per_sample = timing.calls_per_sample(lambda: calls.append(1), clock)
    tries = timing.CALIBRATION_TRIES
    assert clock.blocks == [size for size in (1, 2, 4, 8, 16) for _ in range(tries)] and per_sample == 16  # 8 calls: 0.85 ms
    samples = timing.collect_samples(lambda: calls.append(1), clock, StopRule(min_samples=5, max_samples=5), calls=per_sample)
    assert clock.blocks[-5:] == [16] * 5 and len(calls) == 31 * tries + 5 * 16
    assert all(abs(sample - 100e-6) / 100e-6 < 0.04 for sample in samples)
    assert timing.calls_per_sample(lambda: None, timing.WallClock()) == 1  # the CPU clock resolves one call
    record = CaseRunner(measure_config(stop_rule=StopRule(min_samples=3, max_time_s=0.05))).run(Case("eager", "cpu", "float32",
        "fwd", 1, 4, 4, 2, 8))
    assert record.notes["calls_per_sample"] == 1


def test_a_block_size_from_one_synchronised_call_would_be_too_small():
    """Where one synchronised call costs 0.5 ms of host round trip and a call in a block 20 us, one call predicts a
    2-call block (40 us: under the clock's resolution); doubling measures blocks until one lasts 1 ms."""

    class LaunchBoundClock:
        name, min_block_s = "launch-bound", 1e-3

        def time_calls(self, fn, calls=1):
            return (0.5e-3 if calls == 1 else 20e-6 * calls) / calls

    per_sample = timing.calls_per_sample(lambda: None, LaunchBoundClock())
    assert per_sample == 64 and per_sample * 20e-6 >= 1e-3
    assert timing.calls_per_sample(lambda: None, type("Instant", (LaunchBoundClock,), {"time_calls": lambda self, fn, calls=1: 0.0})()) \
        == timing.MAX_CALLS_PER_SAMPLE  # a clock that reads nothing stops at the cap instead of looping


def test_a_block_that_reads_slow_once_does_not_stop_the_doubling():
    """A GPU whose clocks are still rising from idle: the first timing of a 16-call block reads 1.2 ms, the next
    ones 0.6 ms as every later sample will. The fastest of the tries decides, so the block doubles to 32 calls."""

    class RampingClock:
        name, min_block_s = "ramping", 1e-3

        def __init__(self):
            self.first_16 = True

        def time_calls(self, fn, calls=1):
            if calls == 16 and self.first_16:
                self.first_16 = False
                return 1.2e-3 / calls
            return 40e-6

    assert timing.calls_per_sample(lambda: None, RampingClock()) == 32


@pytest.mark.cuda
def test_ab_and_profile_set_up_cuda_arithmetic_as_run_does(tmp_path):
    """ab --tf32 --cudnn-benchmark races under the arithmetic a run with those options measured."""
    result = runner.invoke(app, ["ab", "eager", "eager", "--device", "cuda", "--res", "8", "--max-time", "0.3", "--tf32",
                                 "--cudnn-benchmark", "--format", "json"])
    assert result.exit_code == 0, result.output
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.benchmark
    profiled = runner.invoke(app, ["profile", "--device", "cuda", "--res", "8", "--trace", str(tmp_path / "t.json")])
    assert profiled.exit_code == 0, profiled.output
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.benchmark  # off unless asked


def test_ab_times_each_side_in_blocks_of_the_clocks_length(monkeypatch):
    """ab on a clock that needs 20 ms blocks (as CUDA's needs 1 ms) and reads 1 ms a call of the base and 3 ms a call
    of the candidate (a clock of fixed readings, so that a stall of the machine cannot change the block sizes):
    every timed sample of either side is a block of its own size, found by doubling, and the sizes are reported."""
    from cmgm_bench.execution import paired

    class FixedReadingClock(timing.WallClock):
        name, min_block_s = "fixed-reading", 20e-3
        blocks: list[tuple[str, int]] = []

        def time_calls(self, fn, calls=1):
            for _ in range(calls):
                fn()
            side = "base" if fn is sides["base"] else "cand"
            self.blocks.append((side, calls))
            return {"base": 1e-3, "cand": 3e-3}[side]

    sides = {}
    real_prepare = paired.prepare_case

    def prepare_and_remember(case, impl, seed):
        prepared = real_prepare(case, impl, seed)
        sides.setdefault("base", prepared.step) if not sides else sides.setdefault("cand", prepared.step)
        return prepared

    monkeypatch.setattr(paired, "clock_for", lambda device: FixedReadingClock())
    monkeypatch.setattr(paired, "prepare_case", prepare_and_remember)
    (raced,) = cmgm_bench.race("eager", "sdpa", res="4", max_time=0.05, min_pairs=4)
    assert raced.calls_per_sample == (32, 8)  # 32 x 1 ms and 8 x 3 ms: the first doublings to reach 20 ms
    timed = FixedReadingClock.blocks[-2 * raced.pairs:]
    assert sorted(timed) == sorted([("base", 32), ("cand", 8)] * raced.pairs)
    assert raced.base_ms == pytest.approx(1.0) and raced.cand_ms == pytest.approx(3.0)


def test_allocation_failures_of_every_gpu_library_are_oom():
    """cuBLAS's, cuDNN's (a workspace it could not get), ONNX Runtime's arena's and C++'s allocation failures, and
    an OOM behind the error a graph capture's exit raised, are ``oom``; other failures are not."""
    from cmgm_bench.measure.failures import is_out_of_memory

    for message in ("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
                    "cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
                    "cuDNN error: CUDNN_STATUS_NOT_SUPPORTED. Could not allocate the workspace of 4.0 GiB",
                    "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : BFCArena::AllocateRawInternal Failed to allocate memory "
                    "for requested buffer of size 2147483648",
                    "std::bad_alloc"):
        assert is_out_of_memory(RuntimeError(message)), message
    for message in ("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED. This error may appear if you passed in a non-contiguous input.",
                    "CUDA error: an illegal memory access was encountered", "shape mismatch"):
        assert not is_out_of_memory(RuntimeError(message)), message
    try:
        try:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        except torch.OutOfMemoryError:
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")
    except RuntimeError as during_capture_exit:
        assert is_out_of_memory(during_capture_exit)


@pytest.mark.slow
def test_after_a_device_context_fails_the_sweep_runs_the_rest_in_fresh_processes(tmp_path, capsys, monkeypatch):
    """A case fails as a sticky CUDA error does and the device's probe then says its context no longer runs work
    (the probe answers as it does after such an error: it cannot be provoked without a GPU): the sweep says so
    once and runs each later case in a child process, as --isolate does, instead of failing them all here."""
    from cmgm_bench.execution.local_executor import LocalExecutor
    from cmgm_bench.measure import failures

    registry.load_file(str(write_file(tmp_path, "sticky.py", """
        from cmgm_bench.registry import register

        @register("sticky-failure", description="fails as an illegal memory access does", modes=("fwd",))
        def build(module, case):
            def forward(x, y):
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            return forward
        """)))
    probed = []
    monkeypatch.setattr(failures, "device_usable", lambda device: probed.append(device) or False)
    config = measure_config(impl_files=(str(tmp_path / "sticky.py"),))
    cases = [Case(name, "cpu", "float32", "fwd", 1, 4, 4, 2, 8) for name in ("sticky-failure", "eager", "sdpa")]
    measured = [finished.measurement for finished in LocalExecutor(config, tmp_path, {"cpu": CaseRunner(config)}).measurements(cases)]
    assert [m.status.value for m in measured] == ["error", "ok", "ok"] and probed == ["cpu"]  # probed once, after the failure
    assert "later cases ran each in a fresh process" in measured[0].notes["device_context"] and not measured[0].isolated
    assert all(m.isolated and "device_context" not in m.notes for m in measured[1:])
    assert capsys.readouterr().err.count("the remaining cases run each in a fresh process") == 1


def test_the_cuda_probe_says_a_context_that_cannot_run_work_is_unusable():
    from cmgm_bench.measure import failures

    assert failures.device_usable("cpu")
    assert failures.device_usable("cuda") is torch.cuda.is_available()  # no GPU: nothing runs there, as after a sticky error
