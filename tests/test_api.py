"""The Python API, the typed measurement and its file contract, and the cross-revision eager plug-in."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

import cmgm_bench
from cmgm_bench import registry
from cmgm_bench.config.cases import Case
from cmgm_bench.errors import UsageError
from cmgm_bench.measure.measurement import AccuracyErrors, Measurement, Status
from cmgm_bench.measure.prepare import prepare_case
from cmgm_bench.results.store import RunWriter, from_record, load_run, to_record, to_row

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_run_compare_and_race_from_python(tmp_path):
    config = cmgm_bench.RunConfig.build(impl="eager,sdpa", res="4,5", max_time=0.05, min_samples=3, report=False)
    result = cmgm_bench.run(config, out=tmp_path / "run")
    assert [m.case.impl for m in result.measurements] == ["eager", "sdpa"] * 2
    assert all(isinstance(m, Measurement) and m.status is Status.OK and len(m.samples_s) >= 3 for m in result.measurements)
    on_disk = pd.read_csv(tmp_path / "run" / "results.csv")
    pd.testing.assert_series_equal(result.frame()["latency_ms"], on_disk["latency_ms"], check_exact=False, rtol=1e-12)
    assert result.baseline == "eager" and json.loads((tmp_path / "run" / "run.json").read_text())["baseline"] == "eager"
    comparison = cmgm_bench.compare(result, tmp_path / "run")
    assert len(comparison.cases) == 4 and not comparison.regressed
    (raced,) = cmgm_bench.race("eager", "sdpa", res="4", max_time=0.05, min_pairs=4)
    assert raced.pairs >= 4 and raced.base.impl == "eager" and raced.cand.impl == "sdpa"
    with pytest.raises(UsageError, match="exists and is not empty"):
        cmgm_bench.run(config, out=tmp_path / "run")


def test_a_run_config_is_validated_once_with_the_commands_messages():
    with pytest.raises(UsageError, match="--dim 64 is not divisible by --heads 5"):
        cmgm_bench.RunConfig.build(impl="eager", heads="5")
    with pytest.raises(UsageError, match="--max-time: 0 must be a positive number"):
        cmgm_bench.RunConfig.build(impl="eager", max_time=0)
    with pytest.raises(UsageError, match="unknown key"):
        cmgm_bench.RunConfig.build(impl="eager", max_tme=1)
    config = cmgm_bench.RunConfig.build(preset="quick", threads=1)
    assert config.sweep.impls == ("eager", "sdpa") and config.threads == 1 and config.stop_rule.max_time_s == 0.5


def test_a_measurement_round_trips_through_its_record_and_derives_latency():
    case = Case("eager", "cpu", "float32", "train", 2, 5, 7, 4, 32)
    measured = Measurement(
        case, "inaccurate", "relative error 0.5", samples_s=[0.004, 0.001, 0.002, 0.003],
        errors=AccuracyErrors(out_rel_err=1e-7, out_max_abs_err=3e-7, attn_rel_err=float("nan"), grad_rel_err=0.5),
        tolerance=2e-3, flops=8_000_000, notes={"phase_s": {"sampling": 0.1}},
    )
    assert measured.status is Status.INACCURATE and measured.timed and not Measurement(case, "oom").timed
    assert measured.latency_ms == pytest.approx(2.5) and measured.latency.minimum == 0.001
    assert measured.gflops_per_s == pytest.approx(8e6 / 2.5e-3 / 1e9)
    assert measured.worst_error == 0.5  # NaN ignored, the largest relative error wins
    row = to_row(measured)
    assert row["tokens"] == 35 and row["status"] == "inaccurate" and row["samples"] == 4 and row["latency_min_ms"] == 1.0
    again = from_record(json.loads(json.dumps(to_record(measured))))
    assert again.case == case and again.samples_s == measured.samples_s and again.notes == measured.notes
    assert again.errors.grad_rel_err == 0.5 and again.errors.attn_rel_err is None  # NaN is stored as null


def test_an_older_run_json_reads_into_typed_fields_and_keeps_what_this_version_no_longer_writes(tmp_path):
    """The committed CI baseline was written when run.json also held ``sweep`` and ``options``: it reads into
    RunMeta's fields (its ceilings typed) and a run written from it keeps those keys as they were."""
    shutil.copytree(ROOT / "results" / "baselines" / "ci", tmp_path / "run")
    stored = json.loads((tmp_path / "run" / "results.json").read_text())
    meta = load_run(tmp_path / "run").meta
    assert meta.settings == stored["settings"] and meta.environment == stored["environment"]
    assert meta.ceilings["cpu"].matmul_gflops == stored["ceilings"]["cpu"]["matmul_gflops"]
    assert meta.other["sweep"] == stored["sweep"] and meta.other["options"] == stored["options"]
    RunWriter(tmp_path / "again", meta, load_run(tmp_path / "run").measurements).finish()
    written = json.loads((tmp_path / "again" / "run.json").read_text())
    assert {key: written[key] for key in ("sweep", "options", "settings")} == {key: stored[key] for key in ("sweep", "options", "settings")}


def test_a_results_file_of_a_newer_schema_is_refused(tmp_path):
    shutil.copytree(ROOT / "results" / "baselines" / "ci", tmp_path / "run")
    assert load_run(tmp_path / "run").measurements  # schema version 1: read
    data = json.loads((tmp_path / "run" / "results.json").read_text())
    data["schema_version"] = 99
    (tmp_path / "run" / "results.json").write_text(json.dumps(data))
    with pytest.raises(UsageError, match="newer cmgm-bench .schema version 99"):
        load_run(tmp_path / "run")


def test_eager_from_another_checkout_runs_that_checkouts_model(tmp_path):
    """ab's cross-revision gate loads ../base/cmgm_bench_impls/eager.py: it must time the base checkout's model, not ours."""
    checkout = tmp_path / "base"
    (checkout / "cmgm_bench_impls").mkdir(parents=True)
    (checkout / "cmgm_bench" / "workload").mkdir(parents=True)
    shutil.copy(ROOT / "cmgm_bench_impls" / "eager.py", checkout / "cmgm_bench_impls" / "eager.py")
    model = (ROOT / "cmgm_bench" / "workload" / "model.py").read_text()
    changed = model.replace("return self.conv2(fused) + fused, attn", "return 2 * (self.conv2(fused) + fused), attn")
    assert changed != model
    (checkout / "cmgm_bench" / "workload" / "model.py").write_text(changed)
    registry.load_file(f"base-rev={checkout / 'cmgm_bench_impls' / 'eager.py'}")
    case = Case("base-rev", "cpu", "float32", "feature", 1, 4, 5, 2, 16)
    with torch.no_grad():
        theirs, _ = prepare_case(case, registry.get("base-rev"), seed=0).step()
        ours, _ = prepare_case(Case("eager", *case.key[1:]), registry.get("eager"), seed=0).step()
    torch.testing.assert_close(theirs, 2 * ours)


def test_a_record_from_before_the_typed_fields_reads_them_from_the_notes():
    """Journals written before ``Measurement.host``, ``isolated`` and ``replicate_sizes`` kept them in the notes;
    they read the same."""
    measurement = Measurement(Case("eager", "cpu", "float32", "fwd", 1, 4, 4, 2, 8), Status.OK, samples_s=(0.001, 0.002, 0.003),
                              host={"hostname": "node-1", "cpu_model": "CPU A", "gpu_name": None}, isolated=True,
                              replicate_sizes=(2, 1), notes={"phase_s": {"setup": 0.5}})
    record = to_record(measurement)
    assert record["host"]["cpu_model"] == "CPU A" and record["isolated"] is True and record["replicate_sizes"] == [2, 1]
    moved = ("host", "isolated", "replicate_sizes")
    older = {**{k: v for k, v in record.items() if k not in moved}, "notes": {**record["notes"], **{k: record[k] for k in moved}}}
    for stored in (record, older):
        read = from_record(json.loads(json.dumps(stored)))
        assert read.host == measurement.host and read.machine == "CPU A" and dict(read.notes) == {"phase_s": {"setup": 0.5}}
        assert read.isolated and read.replicate_sizes == (2, 1) and read.replicate_samples == [(0.001, 0.002), (0.003,)]
