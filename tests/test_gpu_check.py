"""The GPU check script, run on the CPU: every step, the budget, the sanity checks and the results layout.

A lent GPU is rare and its time short; the dry run (``GPU_CHECK_DRY_RUN=1``) runs the same steps with tiny
shapes, so that a check on a GPU machine lent for a few minutes does not die on a typo."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cmgm_bench.cli import app
from tests.helpers import FAST

ROOT = Path(__file__).resolve().parent.parent


def gpu_check_module():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def run_script(*args: str, budget: str | None = None) -> subprocess.CompletedProcess:
    environ = {**os.environ, "GPU_CHECK_DRY_RUN": "1", **({"GPU_CHECK_BUDGET_S": budget} if budget else {})}
    return subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), *args], capture_output=True, text=True, env=environ, timeout=600)


@pytest.mark.slow
def test_the_dry_run_runs_every_step_and_passes_its_sanity_checks(tmp_path):
    out = tmp_path / "check"
    done = run_script("--out", str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    steps = json.loads((out / "steps.json").read_text())
    assert [s["name"] for s in steps] == [s.name for s in gpu_check_module().plan(out, dry_run=True)]
    assert all(s["status"] == "ok" and s["seconds"] > 0 for s in steps)
    assert (out / "sanity.md").read_text().strip().endswith("All passed.")
    for folder in ("sweep-28", "sweep-large", "train-default", "train-cudnn-benchmark", "cold", "warm"):
        assert (out / folder / "results.csv").exists(), folder
        assert f"## {folder}" in (out / "summary.md").read_text()
    probe = json.loads((out / "probe.json").read_text())["rows"]
    known = next(row for row in probe if row["call"] == "known-duration call")
    assert known["expected_ms"] <= known["harness_ms"] < 10 * known["expected_ms"]  # a 2 ms sleep never reads shorter
    precision = json.loads((out / "map_precision.json").read_text())
    errors = {row["variant"]: row["map_rel_err"] for row in precision["rows"]}
    floor = errors["float64 values rounded to float32, float64 norm"]
    assert 0 < floor < 1e-4 and floor <= 1.5 * errors["all float32"] < 1e-3  # float32's rounding, never a bigger error's floor
    assert json.loads((out / "environment.json").read_text())["git_commit"]
    assert "| sweep 28x28 | ok |" in (out / "steps.md").read_text()
    assert (out / "sweep-28x28.log").read_text().startswith("$ ")


@pytest.mark.slow
def test_a_spent_budget_skips_every_step_and_fails_with_the_evidence_written(tmp_path):
    out = tmp_path / "check"
    done = run_script("--out", str(out), budget="16")  # 15 s are kept for the sanity checks: under 5 s per step left
    assert done.returncode == 1
    steps = json.loads((out / "steps.json").read_text())
    assert steps and all(s["status"] == "skipped: the budget is spent" for s in steps)
    assert "no run finished a single case" in (out / "sanity.md").read_text()
    assert run_script("--out", str(out)).returncode == 2  # a folder holding results is never overwritten


def test_time_a_step_leaves_unspent_goes_to_the_steps_after_it_by_their_allowances():
    check = gpu_check_module()
    steps = [check.Step(name, allowance, []) for name, allowance in (("a", 100), ("b", 60), ("c", 40))]
    assert check.step_limit(steps, 200) == pytest.approx(100)  # on schedule: its allowance
    assert check.step_limit(steps[1:], 150) == pytest.approx(90)  # "a" left 50 s: "b" takes 60 % of them
    assert check.step_limit(steps[2:], 90) == pytest.approx(90)  # the last step takes all that is left
    assert check.step_limit(steps[1:], 50) == pytest.approx(30)  # "a" overran: "b" and "c" shrink alike
    assert check.step_limit(steps[1:], -5) == -5  # spent: the caller skips the step


def test_the_sanity_checks_reject_numbers_a_gpu_run_must_not_have(tmp_path):
    """A CPU run read as if it were the GPU check's: perf_counter timing, sub-millisecond calls one per sample."""
    out = tmp_path / "check"
    # the smallest module (tens of microseconds a call), and a median of a hundred calls: sub-millisecond beside a
    # busy neighbour too, where three samples could all land in the neighbour's slices
    result = CliRunner().invoke(app, ["run", "--impl", "eager", "--res", "4", "--heads", "2", "--dim", "8", "--out",
                                      str(out / "sweep-28"), *FAST, "--min-samples", "100"])
    assert result.exit_code == 0, result.output
    check = gpu_check_module()
    assert check.sanity(out, "cpu") == []
    problems = check.sanity(out, "cuda")
    assert any("timed with perf_counter" in p for p in problems), problems
    assert any("timed one call per sample" in p for p in problems), problems
    assert check.sanity(tmp_path / "empty", "cuda") == ["no run finished a single case"]
