"""Shared test helpers: fast CLI settings, files written for a test, tools CI must have, a configuration for
measuring single cases quickly, accuracy judged against float64 as
the sweep judges it, a plug-in that kills its process and the sweep that runs it through a remote executor,
the checks of ceilings that remote executors' workers measure."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import json
import platform
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

from cmgm_bench.stats import StopRule
from cmgm_bench.config.run_config import RunConfig
from cmgm_bench.measure.accuracy import reference_outputs, relative_error, tolerance_for

ONE_SAMPLE = StopRule(min_samples=1, max_time_s=0.0, floor_samples=1)
FAST = ["--max-time", "0.05", "--min-samples", "3"]  # small, fast settings for a CLI run


def write_file(directory, name: str, text: str):
    """Write ``text`` (dedented) to ``directory/name`` and return the path."""
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


def require_tool(problem: str | None) -> None:
    """Fail under CI (``CI=true``) when a tool the test needs is missing; skip on a developer's machine."""
    if problem is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must install this: {problem}")
    pytest.skip(problem)


def measure_config(stop_rule: StopRule = ONE_SAMPLE, **changes) -> RunConfig:
    """A :class:`RunConfig` for a :class:`CaseRunner` in a test: ``stop_rule`` and the measuring fields given."""
    return dataclasses.replace(RunConfig.build(impl="eager"), stop_rule=stop_rule, **changes)


@contextlib.contextmanager
def machine_share(tmp_path_factory, alone: bool):
    """Hold the machine with the suite's other pytest-xdist workers (``alone=False``: every test), or for this
    worker alone (``alone=True``: a test or fixture that needs quiet cores for a latency verdict; the other
    workers' next tests wait, and a waiting ``alone`` goes before new shared holders). Without xdist, nothing."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        yield
        return
    root = tmp_path_factory.getbasetemp().parent  # shared by the workers of one session
    with open(root / "machine.gate", "a") as gate, open(root / "machine.lock", "a") as lock:
        fcntl.flock(gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        finally:
            if not alone:
                fcntl.flock(gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            fcntl.flock(gate, fcntl.LOCK_UN)


def assert_near_float64(value: torch.Tensor, reference: torch.Tensor, dtype: str = "float32") -> float:
    """``value`` is within the tool's tolerance for ``dtype`` of ``reference`` (computed in float64): relative L2
    error, as the sweep judges every case. Two float32 computations are never compared element by element: their
    rounding differs by CPU (an AVX2 and an AVX-512 library path sum in other orders). Returns the error."""
    assert reference.dtype == torch.float64, "the reference must be computed in float64"
    error = relative_error(value, reference)
    assert error <= tolerance_for(dtype), f"relative error {error:.3g} above the {dtype} tolerance {tolerance_for(dtype):.3g}"
    return error


def assert_module_outputs_near_float64(out: torch.Tensor, attn_map: torch.Tensor, module, x, y, dtype: str = "float32") -> None:
    """Both outputs of an inference call are within the ``dtype`` tolerance of ``module``'s float64 outputs."""
    reference = reference_outputs(module, x, y, train=False)
    assert_near_float64(out, reference.out, dtype)
    assert_near_float64(attn_map, reference.attn_map, dtype)


def killer_impl_file(directory: Path, attempts: Path) -> Path:
    """A plug-in file registering ``killer``, whose build appends its process id to ``attempts`` and then
    SIGKILLs its own process: a worker or job that dies during a case."""
    path = directory / "killer.py"
    path.write_text(textwrap.dedent(f"""
        import os, signal
        from cmgm_bench.registry import register

        @register("killer", description="kills its process while building", modes=("fwd",))
        def build(module, case):
            with open({str(attempts)!r}, "a") as handle:
                handle.write(str(os.getpid()) + "\\n")
            os.kill(os.getpid(), signal.SIGKILL)
        """))
    return path


def killer_sweep(tmp_path: Path, executor_options: list[str]) -> tuple:
    """Run ``killer`` (which kills its process) and ``eager`` through a remote executor; the CLI result,
    the results by implementation, and the process ids of the killer's attempts."""
    from typer.testing import CliRunner

    from cmgm_bench.cli import app
    from tests.helpers import FAST

    attempts = tmp_path / "attempts.txt"
    killer = killer_impl_file(tmp_path, attempts)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", "--impl-file", str(killer), "--impl", "killer,eager", "--res", "4", "--threads", "1",
                                      *FAST, "--no-report", *executor_options, "--out", str(out)])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out / "results.csv").set_index("impl")
    return result, frame, attempts.read_text().split()


def assert_retried_once_then_an_error(result, frame, pids: list[str], error: str) -> None:
    """The killer case failed twice, each time in a fresh process, and is an ``error`` saying ``error``;
    eager finished; the progress line counted the failure and named the host of the last case."""
    assert frame.status["eager"] == "ok"
    assert frame.status["killer"] == "error" and error in frame.error["killer"]
    assert "failed 1 · last: " in result.stderr and f" on {platform.node()}" in result.stderr
    assert len(pids) == 2 and pids[0] != pids[1]


def not_in_the_driver(*args, **kwargs):
    """Stands in for ``ceilings.measure`` in a driver process, where a remote executor must not call it."""
    raise AssertionError("a remote executor's driver measured ceilings")


def assert_ceilings_from_the_workers(run_dir, measured):
    """The ceilings in results.json were measured on the cases' machine, by a worker, and every case has its share."""
    stored = json.loads((run_dir / "results.json").read_text())["ceilings"]["cpu"]
    assert stored["machine"] == measured[0].machine and stored["matmul_gflops"]["float32"] > 1 and stored["copy_gbytes_per_s"] > 0.1
    assert all("ceilings" not in m.notes for m in measured)  # moved to the metadata, not repeated per case
    assert sum("ceilings_s" in m.notes for m in measured) >= 1  # at least one worker measured them, and said how long
    assert all(0 < m.pct_peak <= 100 for m in measured)
