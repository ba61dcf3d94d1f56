"""The Python API: what the commands do, callable from a notebook or a script.

    from cmgm_bench import RunConfig, run, compare, race
    result = run(RunConfig.build(impl="eager,sdpa", res="11,28", max_time=0.5), out="results/try")
    result.frame()                      # one row per case (pandas)
    result.measurements[0].latency_ms   # the typed measurements
    compare("results/base", result).frame()
    race("eager", "sdpa", res=28, threads=1)

The CLI (:mod:`cmgm_bench.cli`) is a thin layer over these functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from cmgm_bench.analysis.compare import Comparison, compare_runs
from cmgm_bench.config.cases import Case
from cmgm_bench.config.race_config import RaceConfig
from cmgm_bench.config.run_config import RunConfig, check_cuda_options, single_cases
from cmgm_bench.execution.paired import PairedResult
from cmgm_bench.execution.paired import race as race_one_shape
from cmgm_bench.execution.sweep import Plan, make_plan, plan_resume, run_plan
from cmgm_bench.machine.process_setup import prepare_process
from cmgm_bench.measure.measurement import Measurement
from cmgm_bench.results.store import Run, load_run


def run(
    config: RunConfig,
    out: str | Path | None = None,
    *,
    argv: list[str] | None = None,
    on_case_start: Callable[[Case, int], None] | None = None,
    on_case_done: Callable[[Case, Measurement], None] | None = None,
) -> Run:
    """Run the sweep of ``config`` into ``out`` (default ``results/<UTC time>-<device>/``, which must be empty)."""
    return execute(make_plan(config, Path(out) if out is not None else None), argv, on_case_start, on_case_done)


def resume(run_dir: str | Path, changes: dict | None = None, **callbacks) -> Run:
    """Finish an interrupted run; ``changes`` may only hold settings that do not change what a case measures."""
    return execute(plan_resume(Path(run_dir), changes or {}), **callbacks)


def execute(plan: Plan, argv=None, on_case_start=None, on_case_done=None) -> Run:
    """Run a plan (:func:`make_plan`, :func:`plan_resume`), write its report if configured, and read it back."""
    writer = run_plan(plan, argv, on_case_start=on_case_start, on_case_done=on_case_done)
    if plan.config.report:
        from cmgm_bench.views.report import write_report  # matplotlib: only for a run that writes its report

        write_report(writer.path)
    return load_run(writer.path)


def compare(base: str | Path | Run, cand: str | Path | Run, **options) -> Comparison:
    """Judge ``cand`` against ``base`` case by case (options as ``compare``'s: ``metric``, ``threshold``, ...)."""
    runs = [run_ if isinstance(run_, Run) else load_run(run_) for run_ in (base, cand)]
    return compare_runs(*runs, **options)


def race(
    base_impl: str,
    cand_impl: str,
    *,
    device: str = "cpu",
    mode: str = "fwd",
    batch="1",
    res="28",
    heads="8",
    dim="64",
    threads: int | None = None,
    impl_files=(),
    tf32: bool = False,
    cudnn_benchmark: bool = False,
    **race_options,
) -> list[PairedResult]:
    """Race two implementations call by call in this process, one result per shape (as ``ab``); ``race_options``:
    the fields of :class:`RaceConfig` (``max_time``, ``min_pairs``, ``threshold``, ``gap_ms``, ``until_decided``, ``seed``)."""
    config = RaceConfig(**race_options)
    check_cuda_options(device, tf32, cudnn_benchmark)
    cases = single_cases([base_impl, cand_impl], device=device, mode=mode, batch=batch, res=res, heads=heads, dim=dim,
                         impl_files=impl_files)
    prepare_process(threads, tf32, cudnn_benchmark)  # as run sets up: threads, CUDA arithmetic, allocator pinned
    shapes = {case.key[1:]: case for case in cases if case.impl == cand_impl}  # the candidate's case of each shape
    return [race_one_shape(base, shapes[base.key[1:]], config) for base in cases if base.impl == base_impl]
