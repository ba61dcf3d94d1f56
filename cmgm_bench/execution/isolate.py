"""Run one case in a fresh Python process (``run --isolate``).

A child process gives a clean allocator for memory numbers, a hard
``--timeout`` (the child is killed), and survives crashes in native code: a
child that dies by a signal becomes an ``error`` record naming the signal.
Run as ``python -m cmgm_bench.execution.isolate SPEC.json RECORD.json``. A case
timed under another CPU allocator than this process's (``run --allocator``) always
runs here, in a child started with that allocator
(:func:`cmgm_bench.measure.allocator.child_environment`).

The child applies ``--timeout`` to the case itself, as an in-process run
does; the parent kills a child that has not finished by then plus
:data:`STARTUP_ALLOWANCE_S` (importing torch), which catches hangs inside
native code that the in-process deadline cannot interrupt. The child also
enforces that limit itself (``faulthandler``'s watchdog thread ends the process
even while the main thread is stuck in native code), and dies with its parent
(``PR_SET_PDEATHSIG``): a parent killed by SIGKILL leaves no child running, and
the next isolated case removes the folders such parents left in the temporary
directory. A parent stopped by Ctrl-C or SIGTERM kills its child and removes its
folder before it exits.
"""

from __future__ import annotations

import faulthandler
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from cmgm_bench.config.cases import Case
from cmgm_bench.measure import allocator
from cmgm_bench.measure.case_runner import CaseRunner
from cmgm_bench.measure.ceilings import Ceilings
from cmgm_bench.measure.measurement import Measurement, Status
from cmgm_bench.results.store import from_record, to_record

STARTUP_ALLOWANCE_S = 30.0
FOLDER_PREFIX = "cmgm-bench-"  # then the parent's process id: cmgm-bench-<pid>-<random>
WATCHDOG_MARK = "Timeout ("  # how faulthandler's watchdog starts its report before it ends the child (exit 1)
_PR_SET_PDEATHSIG = 1


def run_isolated(case: Case, runner: CaseRunner, threads: int) -> Measurement:
    """Run ``case`` in a child process with ``runner``'s configuration and ceilings, under the case's allocator."""
    missing = allocator.missing(case.allocator)
    if missing:
        return runner.failed(case, Status.UNSUPPORTED, missing)
    return _in_child(case, runner, threads).with_(isolated=True)


def _in_child(case: Case, runner: CaseRunner, threads: int) -> Measurement:
    """The case's measurement from a child process, or the failure that ended the child."""
    config = runner.config
    limit = None if config.timeout is None else config.timeout + STARTUP_ALLOWANCE_S
    spec = {"case": case.as_dict(), "settings": dict(config.settings), "threads": threads, "parent": os.getpid(), "limit_s": limit,
            "ceilings": runner.ceilings and runner.ceilings.to_json()}
    remove_orphaned_folders()
    with tempfile.TemporaryDirectory(prefix=f"{FOLDER_PREFIX}{os.getpid()}-") as tmp:
        spec_path, record_path = Path(tmp) / "spec.json", Path(tmp) / "record.json"
        spec_path.write_text(json.dumps(spec))
        child = subprocess.Popen(
            [sys.executable, "-m", "cmgm_bench.execution.isolate", str(spec_path), str(record_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=allocator.child_environment(case.allocator),
        )
        try:
            _, stderr = child.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            return runner.failed(case, Status.TIMEOUT, f"timed out after {limit:g} s (child killed)")
        except BaseException:  # Ctrl-C or SIGTERM of this process: the child goes first, then the folder
            child.kill()
            child.wait()
            raise
        if child.returncode == 1 and WATCHDOG_MARK in (stderr or ""):
            return runner.failed(case, Status.TIMEOUT, f"timed out after {limit:g} s (the child's own watchdog)")
        if child.returncode < 0:
            name = signal.Signals(-child.returncode).name
            return runner.failed(case, Status.ERROR, f"child process died with signal {name}")
        if child.returncode != 0 or not record_path.exists():
            last = (stderr or "").strip().splitlines()[-1:] or ["no output"]
            return runner.failed(case, Status.ERROR, f"child process exited with code {child.returncode}: {last[0][:200]}")
        return from_record(json.loads(record_path.read_text()), record_path)


def remove_orphaned_folders() -> None:
    """Remove the temporary folders of isolated cases whose parent process is gone (a parent killed by SIGKILL)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{FOLDER_PREFIX}*-*"):
        pid = folder.name.removeprefix(FOLDER_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _die_with_parent(parent: int) -> None:
    """SIGKILL when the parent process ends (Linux); exit now if it already has."""
    if allocator.LIBC is not None:
        allocator.LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def _child(spec_path: str, record_path: str) -> None:
    from cmgm_bench.config.run_config import RunConfig
    from cmgm_bench.machine.process_setup import prepare_process

    spec = json.loads(Path(spec_path).read_text())
    _die_with_parent(spec["parent"])
    if spec["limit_s"] is not None:  # a hang in native code ends here too, whatever the parent does
        faulthandler.dump_traceback_later(spec["limit_s"], exit=True)
    case = Case(**spec["case"])
    if case.allocator in allocator.PRELOADED and not allocator.loaded_library(case.allocator):
        raise SystemExit(f"{case.allocator} was preloaded but is not in the process (LD_PRELOAD did not take)")
    config = RunConfig.from_settings(spec["settings"])  # loads the --impl-file plug-ins too
    prepare_process(spec["threads"], config.tf32, config.cudnn_benchmark)
    measurement = CaseRunner(config, Ceilings.from_json(spec["ceilings"]) if spec["ceilings"] else None).run(case)
    measurement = measurement.with_(notes={**measurement.notes, "allocator": allocator.policy()})
    Path(record_path).write_text(json.dumps(to_record(measurement)))


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2])
