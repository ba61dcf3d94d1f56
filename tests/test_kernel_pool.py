"""The fused kernels' thread pool: the caller runs what no worker claimed, workers take part, errors come back, and
the call on the pool opens no OpenMP team of its own."""

import copy
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from cmgm_bench.machine import cpu_features
from cmgm_bench.workload.reference import make_inputs, reference_module
from cmgm_bench_impls.builders import kernels
from cmgm_bench_impls.fused import FusedCMGM
from cmgm_bench.measure.accuracy import reference_outputs
from tests.helpers import assert_module_outputs_near_float64, assert_near_float64, require_tool


@pytest.fixture(scope="module")
def operators():
    require_tool(kernels.compiler_problem())
    return kernels.load(kernels.best_target())[0]


def ran_by_worker(operators, chunks: int, threads: int, hold_workers: bool) -> list[int]:
    flags = torch.full((chunks,), 7, dtype=torch.long)  # 7: not written
    operators.pool_probe(flags, threads, hold_workers)
    return flags.tolist()


def test_the_caller_runs_every_chunk_that_no_worker_claims(operators):
    """Workers held (as if asleep or descheduled): the region still completes, every chunk on the caller."""
    for chunks in (2, 5, 64):
        assert ran_by_worker(operators, chunks, 2, hold_workers=True) == [0] * chunks


def test_workers_take_part_in_a_region(operators):
    """Each chunk the caller runs waits until a worker has run one: some chunks are the workers'."""
    flags = ran_by_worker(operators, 8, 2, hold_workers=False)
    assert set(flags) <= {0, 1} and 1 in flags
    assert ran_by_worker(operators, 8, 2, hold_workers=True) == [0] * 8  # and a held region after it is the caller's


def test_a_short_call_runs_alone_while_the_workers_sleep_and_a_burst_wakes_them(operators):
    """After a pause the pool's worker sleeps: a short call gets one thread (a worker woken from sleep would arrive after
    it). Short calls in a burst (each within a few milliseconds of the last) wake the worker for the calls that follow,
    which then get both threads and the worker takes part again."""
    def short_call_threads() -> int:
        granted = torch.zeros(1, dtype=torch.long)
        operators.pool_short_call(granted, 2)
        return int(granted)

    assert 1 in ran_by_worker(operators, 8, 2, hold_workers=False)  # the worker is awake and working
    deadline = time.monotonic() + 5
    while short_call_threads() != 1:  # queries 20 ms apart are no burst: nothing wakes the worker
        assert time.monotonic() < deadline, "the worker never went to sleep"
        time.sleep(0.02)
    deadline = time.monotonic() + 5
    while short_call_threads() != 2:  # a burst: the first query of it wakes the worker
        assert time.monotonic() < deadline, "a burst of short calls never woke the worker"
        time.sleep(0.0002)
    assert 1 in ran_by_worker(operators, 8, 2, hold_workers=False)


def test_a_worker_woken_from_sleep_runs_beside_its_caller_not_on_its_cpu(operators):
    """The scheduler puts a thread woken from sleep on its waker's CPU, where the two would take turns; the pool's
    worker moves to another of the process's CPUs before it claims a chunk."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("the process may use one CPU only")
    cpus = torch.full((2,), -1, dtype=torch.long)
    for _ in range(10):
        time.sleep(0.02)  # the worker spins 1 ms after a region, then sleeps
        operators.pool_placement(cpus)
        caller, worker = cpus.tolist()
        assert worker >= 0, "the worker never ran its chunk"
        assert worker != caller, f"the worker ran on the caller's CPU {caller}"


def test_one_thread_runs_on_the_caller_alone(operators):
    assert ran_by_worker(operators, 6, 1, hold_workers=False) == [0] * 6


@pytest.mark.parametrize(
    "attention, attention_map, stores",
    [("kernel", "kernel", "cached"), ("aten", "kernel", "cached"), ("kernel", "kernel", "streaming"), ("aten", "kernel", "streaming"),
     ("kernel", "recompute", "cached"), ("kernel", "recompute", "streaming"), ("kernel", "aten", "cached"), ("aten", "aten", "cached")],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_stage_choice_gives_the_reference_on_two_threads(operators, two_threads, attention, attention_map, stores, dtype):
    """fwd with the map on the kernel runs as one operator on the pool (either attention path, the map reading the
    stored matrix or recomputing it), otherwise as torch operators; batch 2 and an odd map, so that row and channel
    chunks split unevenly."""
    if dtype == torch.bfloat16 and not cpu_features.native_bfloat16():
        pytest.skip("fused-bf16 needs native bfloat16 (its refusal is tested in test_fused)")
    if stores == "streaming" and not kernels.TARGETS[kernels.best_target()].streaming_stores:
        pytest.skip("this target's kernels have no streaming stores")
    module = copy.deepcopy(reference_module(32, 4, 0, 9, 7)).eval()
    x, y = make_inputs(2, 32, 9, 7, 0)
    fused = FusedCMGM(module, dtype)
    fused.use_kernels(operators, {"attention": attention, "map": attention_map, "stores": stores})
    with torch.inference_mode():
        out, attn_map = fused(x, y, want_map=True)
    assert_module_outputs_near_float64(out, attn_map, module, x, y, "float32" if dtype == torch.float32 else "bfloat16")


def assert_calls_on_the_pool_agree(operators, shape: tuple, first: dict, second: dict) -> None:
    """fused's call on the pool with the options ``first`` (``FusedCMGM.on_pool``'s) is within the float32 tolerance of
    float64 and equal bit for bit to the call with ``second``, at ``shape`` = (batch, dim, heads, height, width)."""
    batch, dim, heads, height, width = shape
    module = copy.deepcopy(reference_module(dim, heads, 0, height, width)).eval()
    x, y = make_inputs(batch, dim, height, width, 0)
    fused = FusedCMGM(module, torch.float32)
    fused.use_kernels(operators, {"attention": "kernel", "map": "kernel"})
    with torch.inference_mode():
        one, other = fused.on_pool(x, y, **first), fused.on_pool(x, y, **second)
    assert_module_outputs_near_float64(*one, module, x, y)
    assert torch.equal(one[0], other[0]) and torch.equal(one[1], other[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_feature_mode_on_the_pool_gives_the_reference_and_no_map(operators, two_threads, dtype):
    """Feature mode as one call on the pool: the attention kernel writing no matrix, the feature branch, no map."""
    if dtype == torch.bfloat16 and not cpu_features.native_bfloat16():
        pytest.skip("fused-bf16 needs native bfloat16 (its refusal is tested in test_fused)")
    module = copy.deepcopy(reference_module(32, 4, 0, 9, 7)).eval()
    x, y = make_inputs(2, 32, 9, 7, 0)
    fused = FusedCMGM(module, dtype)
    fused.use_kernels(operators, {"attention": "kernel", "map": "kernel", "feature": "pool"})
    with torch.inference_mode():
        out, attn_map = fused(x, y, want_map=False)
    assert attn_map is None
    assert_near_float64(out, reference_outputs(module, x, y, train=False).out, "float32" if dtype == torch.float32 else "bfloat16")


def test_streaming_stores_give_the_cached_call_bit_for_bit(operators, two_threads):
    """An 8x8 map (N = 64 tokens): every row of the attention matrix and of the map starts on a whole vector, so every
    full-width store of both streams; the arithmetic is the same as through the cache."""
    if not kernels.TARGETS[kernels.best_target()].streaming_stores:
        pytest.skip("this target's kernels have no streaming stores")
    assert_calls_on_the_pool_agree(operators, (2, 32, 4, 8, 8), {"stores": "streaming"}, {"stores": "cached"})


@pytest.mark.parametrize("shape", [(2, 32, 4, 9, 7), (1, 64, 8, 13, 17), (2, 64, 16, 6, 10), (1, 64, 8, 28, 28)])
def test_the_recomputed_map_is_the_stored_one_bit_for_bit(operators, two_threads, shape):
    """The map kernel recomputes the attention matrix with the attention kernel's operations in its order: the same map,
    bit for bit, at shapes whose token count is not a multiple of the tile (halo columns and rows outside the matrix),
    with 16 heads, and at PGNet's 28x28 (interior tiles)."""
    assert_calls_on_the_pool_agree(operators, shape, {"attention_map": "recompute"}, {"attention_map": "kernel"})


def test_the_map_recomputes_only_the_attention_kernels_matrix(operators):
    module = reference_module(32, 4, 0, 6, 6).eval()
    fused = FusedCMGM(module, torch.float32)
    fused.use_kernels(operators, {"attention": "kernel", "map": "kernel"})
    x, y = make_inputs(1, 32, 6, 6, 0)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="recomputes the attention kernel's matrix"):
        fused.on_pool(x, y, "aten", attention_map="recompute")


def test_an_error_inside_a_chunk_comes_back_as_an_exception(operators, two_threads):
    """Weights of the wrong shape fail inside the projections' chunks, on the caller and on the worker."""
    module = reference_module(32, 4, 0, 6, 6).eval()
    fused = FusedCMGM(module, torch.float32)
    fused.use_kernels(operators, {"attention": "kernel", "map": "kernel"})
    fused.qv_w = fused.qv_w[:, :16].contiguous()
    x, y = make_inputs(1, 32, 6, 6, 0)
    with pytest.raises(RuntimeError):
        fused(x, y, want_map=True)
    fused.qv_w = FusedCMGM(module, torch.float32).qv_w
    fused.map_w = fused.map_w[:2].contiguous()  # read as a raw buffer: refused before any read
    with pytest.raises(RuntimeError, match=r"the map's weight must be \(h, h, 3, 3\)"):
        fused(x, y, want_map=True)
    fused.map_w = FusedCMGM(module, torch.float32).map_w
    with torch.inference_mode():
        out, attn_map = fused(x, y, want_map=True)  # the pool still works after the error
    assert_module_outputs_near_float64(out, attn_map, module, x, y)


def test_the_call_on_the_pool_adds_one_worker_thread_and_no_openmp_team(operators):
    """In a fresh process on two threads: PyTorch's OpenMP team exists first; the calls add the pool's one worker
    and nothing else (an ATen operator on a worker with torch's thread count would open a team of its own)."""
    script = textwrap.dedent(f"""
        import os, torch
        torch.set_num_threads(2)
        from cmgm_bench.workload.reference import make_inputs, reference_module
        from cmgm_bench_impls.builders import kernels
        from cmgm_bench_impls.fused import FusedCMGM
        operators = kernels.load({kernels.best_target()!r})[0]
        module = reference_module(64, 8, 0, 16, 16).eval()
        x, y = make_inputs(1, 64, 16, 16, 0)
        fused = FusedCMGM(module, torch.float32)
        fused.use_kernels(operators, {{"attention": "aten", "map": "kernel"}})
        torch.randn(512, 512) @ torch.randn(512, 512)  # PyTorch's OpenMP team
        before = len(os.listdir("/proc/self/task"))
        with torch.inference_mode():
            for _ in range(5):
                fused(x, y, want_map=True)
        print(before, len(os.listdir("/proc/self/task")))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    before, after = map(int, result.stdout.split())
    assert after == before + 1


def test_calls_from_two_threads_at_once_each_get_the_reference(operators, two_threads):
    """One FusedCMGM called from two Python threads at once: the second call finds the workspace taken and the pool
    busy, and runs with its own workspace on its own thread."""
    import threading

    module = reference_module(32, 4, 0, 12, 10).eval()
    fused = FusedCMGM(module, torch.float32)
    fused.use_kernels(operators, {"attention": "kernel", "map": "kernel"})
    inputs = [make_inputs(1, 32, 12, 10, seed) for seed in (1, 2)]
    results = {}

    def call(index):
        with torch.inference_mode():
            results[index] = [fused(*inputs[index], want_map=True) for _ in range(10)]

    threads = [threading.Thread(target=call, args=(index,)) for index in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, (x, y) in enumerate(inputs):
        reference = reference_outputs(module, x, y, train=False)
        for out, attn_map in results[index]:
            assert_near_float64(out, reference.out)
            assert_near_float64(attn_map, reference.attn_map)
    assert fused.workspace is not None and fused.workspace.numel() > 0
