"""One case measured away from the driver: in a Ray worker or a Slurm job.

The worker rebuilds the run's configuration from its raw settings (loading the
``--impl-file`` plug-ins there too), pins itself to a timing slot's cores where
a node times several cases at once, measures the ceilings of the machine it
runs on (once per worker process, or once per host and run where a shared
folder is given, as for Slurm jobs), and returns the case's JSON record and
those ceilings (:func:`finished` reads them back in the driver, which keeps the
ceilings in the run's metadata and appends the record to the journal).
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from cmgm_bench.config.cases import Case
from cmgm_bench.execution.executor import Finished
from cmgm_bench.measure.ceilings import Ceilings
from cmgm_bench.results.store import atomic_write_bytes, from_record

_measured_ceilings: dict[tuple, Ceilings] = {}  # this worker process's, per device, dtypes and cores


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


def worker_ceilings(device: str, dtypes: list[str], machine: str, cache_dir: str | None,
                    max_age_s: float) -> tuple[Ceilings, float | None]:
    """This machine's ceilings for ``device`` at the current threads and cores, and the seconds measuring
    them took (``None`` when this worker, with ``cache_dir`` another job on this host, or within ``max_age_s``
    an earlier run on this machine measured them: :mod:`~cmgm_bench.measure.ceilings_cache`)."""
    import torch

    from cmgm_bench.measure import ceilings_cache

    cores = sorted(os.sched_getaffinity(0))
    key = (device, tuple(dtypes), torch.get_num_threads(), tuple(cores))
    cache = None
    if cache_dir is not None:
        name = f"ceilings-{platform.node()}-{device}-{'_'.join(dtypes)}-{key[2]}t-{cores[0]}to{cores[-1]}.json"
        cache = Path(cache_dir) / name.replace(":", "_").replace("/", "_")
        if key not in _measured_ceilings and cache.exists():
            _measured_ceilings[key] = Ceilings.from_json(json.loads(cache.read_text()))
    if key in _measured_ceilings:
        return _measured_ceilings[key], None
    measured, seconds = ceilings_cache.reuse_or_measure(device, dtypes, machine, max_age_s)
    _measured_ceilings[key] = measured
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(cache, json.dumps(measured.to_json()).encode())
    return measured, seconds


def measure_case(case_fields: dict, settings: dict, dtypes: list[str], slots: int, executor: str,
                 cache_dir: str | None = None) -> dict:
    """Measure one case in a worker process (a Ray task, a Slurm job); return its record and this machine's
    ceilings (``{"record": ..., "ceilings": ...}``, JSON as they travel; :func:`finished` reads them).

    ``dtypes``: the run's dtypes on the case's device (the ceilings measured). ``cache_dir``: a folder
    the jobs share, where each host's ceilings are kept for the run's later jobs.
    """
    from cmgm_bench.config.run_config import RunConfig
    from cmgm_bench.execution.isolate import run_isolated
    from cmgm_bench.machine import env
    from cmgm_bench.machine.process_setup import prepare_process
    from cmgm_bench.measure.case_runner import CaseRunner
    from cmgm_bench.measure.measurement import machine_model
    from cmgm_bench.results.store import to_record

    config = RunConfig.from_settings(settings)  # also loads the --impl-file plug-ins in this worker
    case = Case(**case_fields)
    threads = prepare_process(config.threads, config.tf32, config.cudnn_benchmark)
    affinity = os.sched_getaffinity(0)
    lock, cores = _pin_to_slot(slots, threads) if case.device == "cpu" else (None, None)
    host = env.host_description(case.device)
    try:
        measured, seconds = worker_ceilings(case.device, dtypes, machine_model(host, case.device), cache_dir,
                                           config.ceilings_max_age)
        runner = CaseRunner(config, measured)
        measurement = run_isolated(case, runner, threads) if config.isolate else runner.run(case)
    finally:
        if lock is not None:
            os.sched_setaffinity(0, affinity)
            lock.close()
    notes = {**measurement.notes, "executor": executor}
    if seconds is not None:
        notes["ceilings_s"] = seconds
    if cores is not None:
        notes["cpu_set"] = cores
    return {"record": to_record(measurement.with_(host=host, notes=notes)), "ceilings": measured.to_json()}


def finished(case: Case, returned: dict) -> Finished:
    """What :func:`measure_case` returned, read back in the driver: the case, its measurement, the ceilings."""
    return Finished(case, from_record(returned["record"]), Ceilings.from_json(returned["ceilings"]))
