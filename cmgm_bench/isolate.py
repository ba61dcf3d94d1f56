"""Run one case in a fresh Python process (``run --isolate``).

A child process gives a clean allocator for memory numbers, a hard
``--timeout`` (the child is killed), and survives crashes in native code: a
child that dies by a signal becomes an ``error`` record naming the signal.
Run as ``python -m cmgm_bench.isolate SPEC.json RECORD.json``.

The child applies ``--timeout`` to the case itself, as an in-process run
does; the parent kills a child that has not finished by then plus
:data:`STARTUP_ALLOWANCE_S` (importing torch), which catches hangs inside
native code that the in-process deadline cannot interrupt.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from cmgm_bench.cases import Case
from cmgm_bench.runner import RunOptions
from cmgm_bench.stats import StopRule


STARTUP_ALLOWANCE_S = 30.0


def _failure_record(case: Case, base_row: dict, status: str, message: str) -> dict:
    return {"row": {**base_row, "status": status, "error": message}, "samples_s": [], "traceback": None, "notes": {"isolated": True}}


def run_isolated(case: Case, options: RunOptions, ceilings: dict, impl_files: list[str], threads: int, base_row: dict) -> dict:
    """Run ``case`` in a child process; ``base_row`` fills the record if the child dies."""
    spec = {
        "case": case.as_dict(),
        "options": {**asdict(options), "stop_rule": asdict(options.stop_rule)},
        "ceilings": ceilings,
        "impl_files": impl_files,
        "threads": threads,
    }
    with tempfile.TemporaryDirectory(prefix="cmgm-bench-") as tmp:
        spec_path, record_path = Path(tmp) / "spec.json", Path(tmp) / "record.json"
        spec_path.write_text(json.dumps(spec))
        child = subprocess.Popen(
            [sys.executable, "-m", "cmgm_bench.isolate", str(spec_path), str(record_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        limit = None if options.timeout_s is None else options.timeout_s + STARTUP_ALLOWANCE_S
        try:
            _, stderr = child.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            return _failure_record(case, base_row, "timeout", f"timed out after {limit:g} s (child killed)")
        if child.returncode < 0:
            name = signal.Signals(-child.returncode).name
            return _failure_record(case, base_row, "error", f"child process died with signal {name}")
        if child.returncode != 0 or not record_path.exists():
            last = (stderr or "").strip().splitlines()[-1:] or ["no output"]
            return _failure_record(case, base_row, "error", f"child process exited with code {child.returncode}: {last[0][:200]}")
        record = json.loads(record_path.read_text())
    record["notes"]["isolated"] = True
    return record


def _child(spec_path: str, record_path: str) -> None:
    import torch

    from cmgm_bench import registry
    from cmgm_bench.process_setup import prepare_process
    from cmgm_bench.runner import CaseRunner

    spec = json.loads(Path(spec_path).read_text())
    options = spec["options"]
    prepare_process(spec["threads"], options["tf32"], options["cudnn_benchmark"])
    for impl_file in spec["impl_files"]:
        registry.load_file(impl_file)
    options["stop_rule"] = StopRule(**options["stop_rule"])
    record = CaseRunner(RunOptions(**options), spec["ceilings"]).run(Case(**spec["case"]))
    Path(record_path).write_text(json.dumps(record))


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2])
