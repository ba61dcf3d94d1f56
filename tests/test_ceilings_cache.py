"""Ceilings reused from an earlier run on the same machine: under the same conditions and while fresh only, never a
measurement taken beside a busy neighbour, and every run says when its ceilings were measured."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
import torch
from typer.testing import CliRunner

from cmgm_bench.cli import app
from cmgm_bench.measure import ceilings_cache, contention
from tests.helpers import FAST

MACHINE = "this machine"
runner = CliRunner()


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CMGM_BENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "ceilings.json"


class QuietWatch:
    """Reads every measurement's cores as free of other work, whatever the suite's other worker does meanwhile:
    what is kept and reused is under test here; a real busy neighbour's effect is tested below."""

    def reading(self):
        return contention.Reading(wall_s=1.0, cores=2, other_s=0.0, steal_s=0.0, involuntary_switches=0)


@pytest.fixture
def quiet(monkeypatch):
    monkeypatch.setattr(contention, "Watch", QuietWatch)


@pytest.mark.usefixtures("two_threads", "quiet")
def test_a_fresh_measurement_under_the_same_conditions_is_reused_and_an_old_one_is_not(own_cache):
    first, seconds = ceilings_cache.reuse_or_measure("cpu", ["float32"], MACHINE, max_age_s=900)
    assert seconds is not None and seconds > 0 and first.matmul_gflops["float32"] > 1 and first.measured_at
    again, seconds = ceilings_cache.reuse_or_measure("cpu", ["float32"], MACHINE, max_age_s=900)
    assert seconds is None and again == first
    fresh, seconds = ceilings_cache.reuse_or_measure("cpu", ["float32"], MACHINE, max_age_s=0)
    assert seconds is not None and fresh.matmul_gflops != first.matmul_gflops  # measured again: another best sample
    # the kept measurement ages: an hour later it is measured again
    entries = json.loads(own_cache.read_text())
    hour_ago = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat(timespec="seconds")
    own_cache.write_text(json.dumps({key: {**value, "measured_at": hour_ago} for key, value in entries.items()}))
    later, seconds = ceilings_cache.reuse_or_measure("cpu", ["float32"], MACHINE, max_age_s=900)
    assert seconds is not None and later.measured_at != hour_ago


@pytest.mark.usefixtures("two_threads", "quiet")
def test_other_threads_another_machine_or_more_dtypes_measure_again(own_cache):
    ceilings_cache.reuse_or_measure("cpu", ["float32"], MACHINE, max_age_s=900)
    assert ceilings_cache.reuse_or_measure("cpu", ["float32"], "another machine", max_age_s=900)[1] is not None
    torch.set_num_threads(1)
    assert ceilings_cache.reuse_or_measure("cpu", ["float32"], MACHINE, max_age_s=900)[1] is not None
    torch.set_num_threads(2)
    wider, seconds = ceilings_cache.reuse_or_measure("cpu", ["bfloat16", "float32"], MACHINE, max_age_s=900)
    assert seconds is not None and set(wider.matmul_gflops) == {"bfloat16", "float32"}
    # a narrower run reuses the wider measurement and lists only its own dtypes
    narrow, seconds = ceilings_cache.reuse_or_measure("cpu", ["float32"], MACHINE, max_age_s=900)
    assert seconds is None and set(narrow.matmul_gflops) == {"float32"}
    assert narrow.matmul_gflops["float32"] == wider.matmul_gflops["float32"]
    assert len(json.loads(own_cache.read_text())) == 3  # one entry per machine and thread count


@pytest.mark.usefixtures("two_threads")
def test_a_measurement_beside_a_busy_neighbour_is_used_but_never_kept(own_cache, busy_neighbour):
    measured, seconds = ceilings_cache.reuse_or_measure("cpu", ["float32"], MACHINE, max_age_s=900)
    assert seconds is not None and measured.matmul_gflops["float32"] > 1
    assert not own_cache.exists()
    assert ceilings_cache.reuse_or_measure("cpu", ["float32"], MACHINE, max_age_s=900)[1] is not None


@pytest.mark.slow
@pytest.mark.usefixtures("quiet")
def test_runs_reuse_the_ceilings_and_say_when_they_were_measured(own_cache, tmp_path):
    def run(name, *extra):
        result = runner.invoke(app, ["run", "--impl", "eager", "--res", "4", "--heads", "2", "--dim", "16", *FAST, "--no-report",
                                     *extra, "--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        return json.loads((tmp_path / name / "run.json").read_text())["ceilings"]["cpu"]

    first, second, fresh = run("first"), run("second"), run("fresh", "--ceilings-max-age", "0")
    assert second == first and first["measured_at"]
    assert fresh["matmul_gflops"] != first["matmul_gflops"]
