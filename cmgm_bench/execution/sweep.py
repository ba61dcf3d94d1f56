"""Execute a sweep into a run directory: plan it, calibrate, run each case, append each record.

Everything the ``run`` command does, callable from Python. Finished cases are
on disk as soon as they end; ``--resume`` runs only the cases a directory is
missing; a Ctrl-C stops after saving every finished case.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from cmgm_bench import registry
from cmgm_bench.config import settings as settings_module
from cmgm_bench.config.cases import Case
from cmgm_bench.config.run_config import RunConfig
from cmgm_bench.errors import UsageError
from cmgm_bench.execution import interrupts
from cmgm_bench.execution.executor import executor_for
from cmgm_bench.machine import cpu_features, env
from cmgm_bench.machine.process_setup import prepare_process
from cmgm_bench.measure import ceilings, ceilings_cache, heap, instructions
from cmgm_bench.measure.case_runner import CaseRunner
from cmgm_bench.measure.measurement import Measurement
from cmgm_bench.results.run_meta import RunMeta
from cmgm_bench.results.store import RunWriter, load_run


def default_run_dir(device: str) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return Path("results") / f"{stamp}-{device}"


@dataclass
class Plan:
    """A validated sweep, ready to run: nothing has been written yet."""

    config: RunConfig
    cases: list[Case]
    out_dir: Path
    done: list[Measurement] = field(default_factory=list)  # of a resumed run
    narrowed: str | None = None  # why some implementations run at the smallest grid only (default_sweep_cases)

    @property
    def todo(self) -> list[Case]:
        """Cases still to run, round by round: with ``--repeats K`` each case once per round, so that a slow
        period of the machine spreads over all cases instead of falling on every replicate of one."""
        finished = {m.case.key: m.replicates for m in self.done}
        rounds = range(self.config.repeats)
        return [case for index in rounds for case in self.cases if finished.get(case.key, 0) <= index]


def check_executor(config: RunConfig) -> None:
    """What the configuration needs beyond this package: valgrind to count, Ray to run on Ray."""
    if config.count_instructions:
        instructions.require_valgrind()
    if config.executor == "ray":
        from cmgm_bench.execution.ray_executor import require_ray

        require_ray()
    if config.executor == "slurm":
        from cmgm_bench.execution.slurm_executor import require_submitit

        require_submitit()


def make_plan(config: RunConfig, out_dir: Path | None) -> Plan:
    """The plan of a new run of ``config`` into an empty ``out_dir``; raises :class:`UsageError` if it cannot run."""
    check_executor(config)
    out_dir = Path(out_dir) if out_dir else default_run_dir(config.device)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir} is a file; give a folder for the run")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UsageError(f"--out {out_dir} exists and is not empty")
    cases, narrowed = default_sweep_cases(config)
    return Plan(config, cases, out_dir, narrowed=narrowed)


def default_sweep_cases(config: RunConfig) -> tuple[list[Case], str | None]:
    """The configuration's cases, and why some were left out. On a CPU that emulates an implementation's compute
    dtype (a bfloat16 or float16 call then takes several times float32's), the default sweep (no --impl, the
    default grids) measures that implementation at its smallest grid only: its larger grids would add seconds a
    call of emulation to the first command a user runs. Any explicit sweep measures every grid."""
    cases, raw = config.cases(), config.settings
    if config.device != "cpu" or raw.get("impl") or raw.get("res") != settings_module.DEFAULTS["res"]:
        return cases, None
    emulated = cpu_features.emulated_dtypes()
    narrowed = sorted({case.impl for case in cases if case.dtype in emulated})
    if not narrowed:
        return cases, None
    smallest = min(config.sweep.resolutions, key=lambda grid: grid[0] * grid[1])
    kept = [case for case in cases if case.impl not in narrowed or (case.height, case.width) == smallest]
    return kept, (f"this CPU emulates {' and '.join(emulated)}: the default sweep measures {', '.join(narrowed)} at its "
                  f"smallest grid only (name them with --impl to measure every grid)")


def plan_resume(run_dir: Path, given: dict) -> Plan:
    """The plan of an interrupted run: its stored settings, its finished measurements."""
    run = load_run(run_dir)
    if not run.meta.settings:
        raise UsageError(f"--resume {run_dir}: the run has no stored settings")
    config = RunConfig.from_settings(settings_module.resumed(run.meta.settings, given, run_dir))
    check_executor(config)
    cases, narrowed = default_sweep_cases(config)
    plan = Plan(config, cases, Path(run_dir), narrowed=narrowed)
    stored = run.meta.environment
    here = env.collect(config.device)
    for key in env.MACHINE_KEYS:
        if key in stored and stored[key] != here.get(key):
            raise UsageError(
                f"--resume {run_dir} ran on another machine or software: {key} was {stored[key]!r}, here it is {here.get(key)!r}"
            )
    planned = {case.key for case in plan.cases}
    if any(m.replicates > config.repeats for m in run.measurements):
        raise UsageError(f"--resume {run_dir}: holds more replicates than --repeats {config.repeats}")
    if any(m.case.key not in planned for m in run.measurements):
        raise UsageError(f"--resume {run_dir}: holds cases that are not in its sweep")
    plan.done = run.measurements
    return plan


def run_plan(
    plan: Plan,
    argv: list[str] | None = None,
    on_case_start: Callable[[Case, int], None] | None = None,
    on_case_done: Callable[[Case, Measurement], None] | None = None,
) -> RunWriter:
    """Run every case of ``plan`` not done yet; a ``KeyboardInterrupt`` propagates after saving."""
    config = plan.config
    prepare_process(config.threads, config.tf32, config.cudnn_benchmark)
    remote = config.executor != "local"  # the workers measure their own machines' ceilings: the driver may lack the device
    devices = sorted({case.device for case in plan.cases}) or [config.device]
    if plan.done:
        meta = load_run(plan.out_dir).meta
        meta.resumed.append(env.collect(devices[0], argv)["start_time"])
    else:
        meta = RunMeta(
            environment=env.collect(devices[0], argv),
            settings=dict(config.settings),
            narrowed=plan.narrowed,
            baseline=registry.baseline_name(),
            ceilings={} if remote else {
                device: ceilings_cache.reuse_or_measure(
                    device, run_dtypes(plan, device), ceilings_cache.this_machine(device), config.ceilings_max_age
                )[0]
                for device in devices
            },
        )
    writer = RunWriter(plan.out_dir, meta, plan.done)
    runners = {device: CaseRunner(config, meta.ceilings.get(device)) for device in devices}
    try:
        with heap.frozen(), interrupts.watched() as interrupted:  # each case's collection scans only its own objects
            run_cases(plan, writer, runners, on_case_start, on_case_done, interrupted)
        if config.count_instructions:
            add_instruction_counts(writer, plan)
    finally:  # also on Ctrl-C: the summaries of what finished
        writer.finish()
    return writer


def run_dtypes(plan: Plan, device: str) -> list[str]:
    """The dtypes of the sweep's cases on ``device``: the matmul ceilings a run measures."""
    return sorted({case.dtype for case in plan.cases if case.device == device})


def run_cases(plan: Plan, writer: RunWriter, runners: dict, on_case_start, on_case_done,
              interrupted: interrupts.Interrupts) -> None:
    """Run each case not done yet with the configured executor (:mod:`cmgm_bench.execution.executor`); account its share of the ceiling and
    append it to the journal as soon as it is back. After each case, stop if Ctrl-C arrived, even where the
    ``KeyboardInterrupt`` it raised was dropped (:mod:`cmgm_bench.execution.interrupts`)."""
    dtypes = {device: run_dtypes(plan, device) for device in runners}
    finished = executor_for(plan.config, plan.out_dir, runners, dtypes).measurements(plan.todo, on_case_start)
    seen = {m.machine: m for m in writer.measurements if m.machine}  # one finished case per machine model
    meta = writer.meta
    for case, measurement, worker_ceilings in finished:
        if measurement.machine and measurement.machine not in seen:
            check_one_machine_model([*seen.values(), measurement], plan.config.allow_mixed_hosts)
            seen[measurement.machine] = measurement
        if worker_ceilings is not None and meta.adopt_ceilings(case.device, measurement.machine, worker_ceilings):
            writer.write_meta()  # the first case from a machine model brings that model's ceilings
        measurement, raised = ceilings.account(meta.ceilings_of(case.device, measurement.machine), measurement)
        if raised is not None:  # the case beat its ceiling: stored raised, and earlier cases' shares follow it
            meta.store_ceilings(case.device, measurement.machine, raised)
            writer.replace_all([ceilings.account(meta.ceilings_of(m.case.device, m.machine), m)[0] for m in writer.measurements])
        writer.append(measurement)
        if on_case_done:
            on_case_done(case, measurement)
        interrupted.check()


def check_one_machine_model(measurements: list[Measurement], allowed: bool) -> None:
    """Refuse a run whose cases ran on machines of different models, unless ``--allow-mixed-hosts``."""
    models = sorted({m.machine for m in measurements if m.machine})
    if len(models) > 1 and not allowed:
        raise UsageError(
            f"cases ran on {len(models)} machine models ({'; '.join(models)}); their timings do not belong in one "
            "table; the run stopped before the first case of another model: go on with --resume RUN_DIR "
            "--allow-mixed-hosts to keep them all, grouped by the 'machine' column"
        )


def add_instruction_counts(writer: RunWriter, plan: Plan) -> None:
    """Count instructions of every case that ran (valgrind processes: ``instructions.count``) and store them,
    with how they were counted in the run's metadata."""
    # once per case, not per replicate
    todo = list({m.case.key: m.case for m in writer.measurements if m.timed and not m.instructions}.values())
    counts = dict(zip((case.key for case in todo), instructions.count(todo, plan.config.seed, list(plan.config.impl_files))))
    writer.meta.instruction_counts = instructions.describe()
    writer.replace_all([m.with_(instructions=counts[m.case.key]) if m.case.key in counts else m for m in writer.measurements])


def argv() -> list[str]:
    return ["cmgm-bench", *sys.argv[1:]]
