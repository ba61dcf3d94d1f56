"""``run --executor slurm`` through submitit's local executor (jobs as processes on this machine)."""

from __future__ import annotations

import sys

import pandas as pd
import pytest
from typer.testing import CliRunner

from cmgm_bench.cli import app
from cmgm_bench.measure import ceilings
from cmgm_bench.results.store import load_run
from tests.helpers import FAST, require_tool
from tests.helpers import assert_ceilings_from_the_workers, assert_retried_once_then_an_error, killer_sweep, not_in_the_driver

try:
    import submitit
except ImportError:
    submitit = None

runner = CliRunner()
SWEEP = ["--impl", "eager,sdpa", "--res", "4", "--threads", "1", *FAST, "--no-report"]
LOCAL_SLURM = ["--executor", "slurm", "--slurm-cluster", "local"]


@pytest.fixture
def _needs_submitit():
    require_tool(None if submitit is not None else "submitit is not installed (.ci/run installs the [slurm] extra)")


@pytest.mark.slow
@pytest.mark.usefixtures("_needs_submitit")
def test_a_sweep_as_jobs_gives_the_local_executors_cases_and_columns(tmp_path, monkeypatch):
    local, jobs = tmp_path / "local", tmp_path / "jobs"
    assert runner.invoke(app, ["run", *SWEEP, "--out", str(local)]).exit_code == 0
    monkeypatch.setattr(ceilings, "measure", not_in_the_driver)
    # the workers measure afresh: nothing of the local run's ceilings reused
    result = runner.invoke(app, ["run", *SWEEP, *LOCAL_SLURM, "--ceilings-max-age", "0", "--out", str(jobs)])
    assert result.exit_code == 0, result.output
    a, b = pd.read_csv(local / "results.csv"), pd.read_csv(jobs / "results.csv")
    key = ["impl", "device", "dtype", "mode", "batch", "height", "width", "heads", "dim"]
    assert list(a.columns) == list(b.columns)
    pd.testing.assert_frame_equal(a[key + ["status", "machine"]].reset_index(drop=True), b[key + ["status",
        "machine"]].reset_index(drop=True))
    assert (b.samples >= 3).all() and (b.latency_ms > 0).all() and (b.out_rel_err < 1e-5).all()
    assert len((jobs / "cases.jsonl").read_text().splitlines()) == 2
    measured = load_run(jobs).measurements
    assert all(m.notes["executor"] == "slurm" and m.host["hostname"] for m in measured)
    assert list((jobs / "slurm").iterdir())  # submitit's pickles and logs, inside the run directory
    assert_ceilings_from_the_workers(jobs, measured)
    assert sum("ceilings_s" in m.notes for m in measured) == 1  # the host's first job measured, the next one read them
    assert len(list((jobs / "slurm").glob("ceilings-*.json"))) == 1


@pytest.mark.slow
@pytest.mark.usefixtures("_needs_submitit")
def test_a_job_that_dies_is_submitted_once_more_then_an_error(tmp_path):
    result, frame, pids = killer_sweep(tmp_path, LOCAL_SLURM)
    assert_retried_once_then_an_error(result, frame, pids, "the Slurm job failed twice")  # the first try and one more, each a fresh process


def test_no_submitit_is_a_one_line_error_with_the_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit now raises ImportError
    result = runner.invoke(app, ["run", *SWEEP, "--executor", "slurm", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: --executor slurm needs submitit: pip install -e '.[slurm]'"
    assert not (tmp_path / "run").exists()
    bad = runner.invoke(app, ["run", *SWEEP, "--executor", "slurm", "--slurm-cluster", "pbs", "--out", str(tmp_path / "run")])
    assert bad.exit_code == 2 and "--slurm-cluster: unknown cluster 'pbs'" in bad.stderr
