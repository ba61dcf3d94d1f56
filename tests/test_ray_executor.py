"""``run --executor ray`` against a real local Ray instance (started by the run itself), and mixed hosts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from typer.testing import CliRunner

from cmgm_bench.cli import app
from cmgm_bench.config.cases import Case
from cmgm_bench.errors import UsageError
from cmgm_bench.measure import ceilings
from cmgm_bench.execution.sweep import check_one_machine_model
from cmgm_bench.measure.measurement import Measurement, Status, machine_model
from cmgm_bench.results.store import RunWriter, load_run
from tests.helpers import FAST, require_tool
from tests.helpers import assert_ceilings_from_the_workers, assert_retried_once_then_an_error, killer_sweep, not_in_the_driver

try:
    import ray
except ImportError:
    ray = None

pytestmark = pytest.mark.xdist_group("ray")  # one local Ray instance per test process, not one per worker
runner = CliRunner()
SWEEP = ["--impl", "eager,sdpa", "--res", "4,5", "--threads", "1", *FAST, "--no-report"]


@pytest.fixture(autouse=True)
def _needs_ray():
    require_tool(None if ray is not None else "Ray is not installed (.ci/run installs the [ray] extra)")


@pytest.mark.slow
def test_a_sweep_through_ray_gives_the_local_executors_cases_and_columns(tmp_path, monkeypatch):
    local, remote = tmp_path / "local", tmp_path / "ray"
    assert runner.invoke(app, ["run", *SWEEP, "--out", str(local)]).exit_code == 0
    monkeypatch.setattr(ceilings, "measure", not_in_the_driver)  # the driver may lack the device: the workers measure
    # the workers measure afresh: nothing of the local run's ceilings reused
    result = runner.invoke(app, ["run", *SWEEP, "--executor", "ray", "--ceilings-max-age", "0", "--out", str(remote)])
    assert result.exit_code == 0, result.output
    a, b = pd.read_csv(local / "results.csv"), pd.read_csv(remote / "results.csv")
    key = ["impl", "device", "dtype", "mode", "batch", "height", "width", "heads", "dim"]
    assert list(a.columns) == list(b.columns)
    pd.testing.assert_frame_equal(a[key + ["status", "machine"]].sort_values(key).reset_index(drop=True),
                                  b[key + ["status", "machine"]].sort_values(key).reset_index(drop=True))
    assert (b.samples >= 3).all() and (b.latency_ms > 0).all() and (b.out_rel_err < 1e-5).all()
    assert len((remote / "cases.jsonl").read_text().splitlines()) == 4
    measured = load_run(remote).measurements
    assert all(m.notes["executor"] == "ray" and m.host["hostname"] for m in measured)
    assert all(m.machine == machine_model(m.host) and m.machine.startswith(m.host["cpu_model"]) for m in measured)
    assert_ceilings_from_the_workers(remote, measured)



@pytest.mark.slow
def test_a_worker_killed_during_a_case_is_retried_once_then_an_error(tmp_path):
    result, frame, pids = killer_sweep(tmp_path, ["--executor", "ray"])
    assert_retried_once_then_an_error(result, frame, pids, "lost the Ray worker")  # the first try and one more, each a fresh process


@pytest.mark.slow
def test_the_driver_killed_mid_sweep_resumes_only_the_missing_cases(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "cmgm_bench", "run", "--executor", "ray", "--impl", "eager", "--res", "4,5,6,7,8,9",
               "--threads", "1", "--max-time", "0.5", "--min-samples", "3", "--no-report", "--out", str(out)]
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    journal = out / "cases.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (journal.exists() and len(journal.read_text().splitlines()) >= 2):
        assert driver.poll() is None, f"the driver ended by itself with exit code {driver.returncode}"
        time.sleep(0.2)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    try:  # Ray's agents outlive their killed driver: the rest of its session goes too (the test's, not the run's business)
        os.killpg(driver.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    finished = {json.loads(line)["row"]["height"] for line in journal.read_text().splitlines() if line.strip()}
    assert 2 <= len(finished) < 6
    result = runner.invoke(app, ["run", "--resume", str(out), "--executor", "ray"])
    assert result.exit_code == 0, result.output
    heights = [json.loads(line)["row"]["height"] for line in journal.read_text().splitlines()]
    assert sorted(heights) == [4, 5, 6, 7, 8, 9]  # each case once: the finished ones were not run again


@pytest.mark.slow
def test_no_ray_is_a_one_line_error_with_the_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    result = runner.invoke(app, ["run", *SWEEP, "--executor", "ray", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: --executor ray needs Ray: pip install -e '.[ray]'"
    assert not (tmp_path / "run").exists()


def _on(model: str, impl: str) -> Measurement:
    case = Case(impl, "cpu", "float32", "fwd", 1, 4, 4, 8, 64)
    return Measurement(case, Status.OK, samples_s=[0.002, 0.001, 0.003], flops=1_000_000,
                       host={"hostname": model.lower().replace(" ", "-"), "cpu_model": model, "gpu_name": None})


def test_cases_from_two_machine_models_are_refused_unless_allowed_then_grouped(tmp_path):
    mixed = [_on("CPU A", "eager"), _on("CPU A", "sdpa"), _on("CPU B", "eager"), _on("CPU B", "sdpa")]
    with pytest.raises(UsageError, match="2 machine models .CPU A; CPU B.*--allow-mixed-hosts"):
        check_one_machine_model(mixed, allowed=False)
    check_one_machine_model(mixed, allowed=True)
    check_one_machine_model(mixed[:2], allowed=False)  # one model: nothing to refuse
    writer = RunWriter(tmp_path / "run", {"environment": {"cpu_model": "CPU A"}, "baseline": "eager"}, mixed)
    writer.finish()
    assert runner.invoke(app, ["report", str(tmp_path / "run")]).exit_code == 0
    report = (tmp_path / "run" / "report.md").read_text()
    assert "### fwd on cpu, CPU A" in report and "### fwd on cpu, CPU B" in report
    frame = pd.read_csv(tmp_path / "run" / "results.csv")
    assert sorted(frame.machine.unique()) == ["CPU A", "CPU B"]

