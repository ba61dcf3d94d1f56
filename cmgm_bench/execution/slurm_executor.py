"""Run a sweep's cases as Slurm jobs through submitit (``run --executor slurm``).

The driver keeps the run directory, as with the local and Ray executors: each
finished case is appended to the journal as it comes back, so Ctrl-C, a killed
driver and ``--resume`` behave alike. Each case is one job
(:func:`execution.remote_case.measure_case`):

* a CUDA case asks for one whole GPU (``gpus_per_node=1``);
* a CPU case asks for ``--threads`` CPUs and the node to itself (``--exclusive``),
  so that no other job runs beside a timed case.

On Slurm every case is submitted at once and the scheduler decides; with
``--slurm-cluster local`` (submitit's local executor: jobs are processes on this
machine, to try a sweep's setup before a cluster) ``--cpu-slots`` cases run at
a time. A job that fails or dies (node lost, cancelled) is submitted once more;
then the case is an ``error`` that says why. A case still running ``--timeout``
plus :data:`STARTUP_ALLOWANCE_S` after it started is cancelled and recorded as
``timeout``. The jobs' pickles and logs go to ``RUN_DIR/slurm/``, with each
host's measured ceilings (measured by its first job, read by the others): on
Slurm the run directory must be on a filesystem the compute nodes share.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Iterator

from cmgm_bench.config.cases import Case
from cmgm_bench.errors import UsageError
from cmgm_bench.execution.executor import Finished
from cmgm_bench.execution.remote_case import finished, measure_case
from cmgm_bench.measure.failures import one_line
from cmgm_bench.measure.measurement import Status

INSTALL_HINT = "--executor slurm needs submitit: pip install -e '.[slurm]'"
STARTUP_ALLOWANCE_S = 120.0  # a job waits in the queue, then imports torch and the plug-ins
DEFAULT_JOB_MINUTES = 60  # a job's time limit without --timeout
POLL_S = 1.0


def require_submitit():
    try:
        import submitit
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    return submitit


class SlurmExecutor:
    """Submits cases as jobs and yields their measurements as they finish."""

    def __init__(self, config, out_dir: Path, runners: dict, dtypes: dict):
        """Jobs' pickles and logs go to ``out_dir/slurm``; ``dtypes``: per device, the run's dtypes, whose ceilings
        each host measures once (kept in that folder)."""
        self.submitit = require_submitit()
        self.folder = Path(out_dir) / "slurm"
        self.executor = self.submitit.AutoExecutor(folder=self.folder / "%j", cluster=config.slurm_cluster)
        self.cluster = config.slurm_cluster
        self.cpu_slots = config.cpu_slots
        self.partition = config.slurm_partition
        self.runners, self.dtypes = runners, dtypes

    def _submit(self, case: Case):
        config = self.runners[case.device].config
        minutes = math.ceil(((config.timeout or DEFAULT_JOB_MINUTES * 60) + STARTUP_ALLOWANCE_S) / 60)
        parameters = {"name": f"cmgm-{case.impl}", "timeout_min": minutes, "cpus_per_task": config.threads or 1}
        if case.device.startswith("cuda"):
            parameters["gpus_per_node"] = 1
        else:
            parameters["slurm_additional_parameters"] = {"exclusive": True}
        if self.partition:
            parameters["slurm_partition"] = self.partition
        self.executor.update_parameters(**parameters)
        return self.executor.submit(measure_case, case.as_dict(), dict(config.settings), self.dtypes[case.device], 1, "slurm",
                                    str(self.folder))

    def _result(self, job):
        """What the finished ``job`` returned (its exception raised). On a cluster, submitit waits up to 15 s for a
        result file that a shared filesystem may show late; the local cluster shares this filesystem, so a job
        that ended without one died (killed, out of memory) and says so at once."""
        if self.cluster == "local" and not job.paths.result_pickle.exists():
            raise RuntimeError(f"job {job.job_id} ended without a result (state {job.state})")
        return job.result()

    def measurements(self, cases: list[Case], on_case_start=None) -> Iterator[Finished]:
        """Run ``cases`` (``--cpu-slots`` at a time on the local cluster); yield each as it finishes."""
        pending = [(case, 0) for case in cases]
        window = self.cpu_slots if self.cluster == "local" else len(cases)
        running: dict = {}  # job -> (case, attempt, started)
        started_count = 0
        try:
            while pending or running:
                while pending and len(running) < window:
                    case, attempt = pending.pop(0)
                    if attempt == 0 and on_case_start:
                        on_case_start(case, started_count)
                        started_count += 1
                    running[self._submit(case)] = (case, attempt, time.monotonic())
                for job, (case, attempt, started) in list(running.items()):
                    runner = self.runners[case.device]
                    limit = runner.config.timeout
                    if job.done():
                        running.pop(job)
                        try:
                            yield finished(case, self._result(job))
                        except Exception as exc:  # the job raised, died or was cancelled
                            if attempt == 0:
                                pending.insert(0, (case, 1))
                            else:
                                yield Finished(case, runner.failed(case, Status.ERROR, f"the Slurm job failed twice: {one_line(exc)}",
                                                                   {"executor": "slurm"}))
                    elif limit is not None and time.monotonic() - started > limit + STARTUP_ALLOWANCE_S:
                        job.cancel(check=False)
                        running.pop(job)
                        message = f"timed out after {limit + STARTUP_ALLOWANCE_S:g} s (Slurm job cancelled)"
                        yield Finished(case, runner.failed(case, Status.TIMEOUT, message, {"executor": "slurm"}))
                if running:
                    time.sleep(POLL_S)
        finally:  # Ctrl-C or an error in the driver: nothing keeps running for a run that stopped
            for job in running:
                job.cancel(check=False)
