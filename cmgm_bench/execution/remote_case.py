"""One case measured away from the driver: in a Ray worker or a Slurm job.

The worker rebuilds the run's configuration from its raw settings (loading the
``--impl-file`` plug-ins there too), pins itself to a timing slot's cores where
a node times several cases at once, and returns the case's JSON record, which
the driver appends to the journal.
"""

from __future__ import annotations

import os

from cmgm_bench.config.cases import Case


def _pin_to_slot(slots: int, threads: int) -> tuple[object, list[int]] | tuple[None, None]:
    """With several timing slots per node, take a free one (a lock file) and pin to its cores."""
    import fcntl

    if slots <= 1:
        return None, None
    cores = sorted(os.sched_getaffinity(0))
    for slot in range(slots):
        handle = open(f"/tmp/cmgm-bench-slot-{slot}.lock", "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        chosen = cores[slot * threads:(slot + 1) * threads] or cores
        os.sched_setaffinity(0, chosen)
        return handle, chosen
    raise RuntimeError(f"no free timing slot of {slots} on this node")


def measure_case(case_fields: dict, settings: dict, ceilings: dict, slots: int, executor: str) -> dict:
    """Measure one case in a worker process (a Ray task, a Slurm job) and return its record."""
    from cmgm_bench.config.run_config import RunConfig
    from cmgm_bench.execution.isolate import run_isolated
    from cmgm_bench.machine import env
    from cmgm_bench.machine.process_setup import prepare_process
    from cmgm_bench.measure.case_runner import CaseRunner
    from cmgm_bench.results.store import to_record

    config = RunConfig.from_settings(settings)  # also loads the --impl-file plug-ins in this worker
    case = Case(**case_fields)
    threads = prepare_process(config.threads, config.tf32, config.cudnn_benchmark)
    affinity = os.sched_getaffinity(0)
    lock, cores = _pin_to_slot(slots, threads) if case.device == "cpu" else (None, None)
    runner = CaseRunner(config, ceilings)
    try:
        measurement = run_isolated(case, runner, threads) if config.isolate else runner.run(case)
    finally:
        if lock is not None:
            os.sched_setaffinity(0, affinity)
            lock.close()
    notes = {**measurement.notes, "executor": executor, "host": env.host_description(case.device)}
    if cores is not None:
        notes["cpu_set"] = cores
    return to_record(measurement.with_(notes=notes))
