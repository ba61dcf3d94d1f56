"""Run a sweep's cases as Ray tasks (``run --executor ray``), on this machine or a cluster.

The driver keeps the run directory: it submits cases, and appends each
finished case to the journal as the local executor does, so Ctrl-C, a killed
driver and ``--resume`` behave alike. Scheduling keeps timings honest:

* a CUDA case asks for one whole GPU (``num_gpus=1``): a GPU times one case at a time;
* a CPU case asks for ``--threads`` CPUs and one *timing slot*, a custom
  resource of which each node has ``--cpu-slots`` (default 1: one timed CPU case
  per node at a time, as two timed cases on one host disturb each other); with
  more slots each case pins itself to its own cores, recorded in its notes.

A worker that dies during a case (killed, node lost) gets one retry; then the
case is an ``error`` naming the lost worker. A case still running ``--timeout``
plus :data:`STARTUP_ALLOWANCE_S` after it was submitted is cancelled and
recorded as ``timeout``. Each case records the host, CPU model and GPU it ran on
(``Measurement.host``, the ``machine`` column), as with the local executor, and
is accounted against the ceilings its worker measured on that machine.
"""

from __future__ import annotations

import time
from typing import Iterator

from cmgm_bench.config.cases import Case
from cmgm_bench.errors import UsageError
from cmgm_bench.measure.failures import one_line
from cmgm_bench.measure.measurement import Status
from cmgm_bench.execution.executor import Finished
from cmgm_bench.execution.remote_case import finished, measure_case

INSTALL_HINT = "--executor ray needs Ray: pip install -e '.[ray]'"
SLOT_RESOURCE = "cmgm_timing_slot"
STARTUP_ALLOWANCE_S = 60.0  # a worker's first task imports torch and the plug-ins
POLL_S = 1.0


def require_ray():
    try:
        import ray
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    return ray


def connect(address: str | None, cpu_slots: int):
    """Join the cluster at ``address`` (``auto``, ``ray://host:port``), or start a local Ray instance."""
    ray = require_ray()
    if not ray.is_initialized():
        quiet = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        try:
            if address:
                ray.init(address=address, **quiet)
            else:
                ray.init(resources={SLOT_RESOURCE: cpu_slots}, **quiet)
        except ConnectionError as exc:
            raise UsageError(f"--ray-address {address}: {exc}") from None
    return ray


class RayExecutor:
    """Submits cases to Ray and yields their measurements as they finish."""

    def __init__(self, config, out_dir, runners: dict, dtypes: dict):
        """``dtypes``: per device, the run's dtypes, whose ceilings each worker measures on its machine."""
        self.ray = connect(config.ray_address, config.cpu_slots)
        self.task = self.ray.remote(measure_case)  # exported once; each case sets its own resources
        self.cpu_slots = config.cpu_slots
        self.runners, self.dtypes = runners, dtypes

    def capacity(self, device: str) -> int:
        """How many cases of ``device`` the cluster can time at once."""
        resources = self.ray.cluster_resources()
        if device.startswith("cuda"):
            count = int(resources.get("GPU", 0))
            if count < 1:
                raise UsageError("--executor ray --device cuda: the Ray cluster has no GPU")
            return count
        slots = int(resources.get(SLOT_RESOURCE, 0))
        if slots < 1:
            raise UsageError(
                f"the Ray cluster has no {SLOT_RESOURCE!r} resource: start each node with "
                f"ray start ... --resources '{{\"{SLOT_RESOURCE}\": 1}}'"
            )
        return slots

    def _submit(self, case: Case):
        config = self.runners[case.device].config
        options = {"max_retries": 1, "retry_exceptions": False}
        if case.device.startswith("cuda"):
            options.update(num_gpus=1, num_cpus=1)
        else:
            options.update(num_cpus=config.threads or 1, resources={SLOT_RESOURCE: 1})
        return self.task.options(**options).remote(case.as_dict(), dict(config.settings), self.dtypes[case.device], self.cpu_slots,
                                                   "ray")

    def measurements(self, cases: list[Case], on_case_start=None) -> Iterator[Finished]:
        """Run ``cases``, at most the cluster's capacity at once; yield each as it finishes."""
        pending = list(cases)
        window = min((self.capacity(device) for device in {case.device for case in cases}), default=1)
        running: dict = {}  # object ref -> (case, submitted at)
        try:
            while pending or running:
                while pending and len(running) < window:
                    case = pending.pop(0)
                    if on_case_start:
                        on_case_start(case, len(cases) - len(pending) - 1)
                    running[self._submit(case)] = (case, time.monotonic())
                done, _ = self.ray.wait(list(running), num_returns=1, timeout=POLL_S)
                for ref in done:
                    case, _ = running.pop(ref)
                    yield self._result(ref, case)
                yield from self._cancel_overdue(running)
        finally:  # Ctrl-C or an error in the driver: nothing keeps running for a run that stopped
            for ref in running:
                self.ray.cancel(ref, force=True)

    def _result(self, ref, case: Case) -> Finished:
        try:
            return finished(case, self.ray.get(ref))
        except self.ray.exceptions.RayError as exc:  # the worker or its node died twice
            message = f"lost the Ray worker (retried once): {one_line(exc)}"
            return Finished(case, self.runners[case.device].failed(case, Status.ERROR, message, {"executor": "ray"}))

    def _cancel_overdue(self, running: dict) -> Iterator[Finished]:
        for ref, (case, submitted) in list(running.items()):
            runner = self.runners[case.device]
            limit = runner.config.timeout
            if limit is not None and time.monotonic() - submitted > limit + STARTUP_ALLOWANCE_S:
                self.ray.cancel(ref, force=True)
                running.pop(ref)
                message = f"timed out after {limit + STARTUP_ALLOWANCE_S:g} s (Ray task cancelled)"
                yield Finished(case, runner.failed(case, Status.TIMEOUT, message, {"executor": "ray"}))
