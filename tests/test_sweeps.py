"""Sweeps that survive: failures as rows, isolation, timeouts, kill -9 and resume, shards, config files."""

import io
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from cmgm_bench.cli import app
from cmgm_bench.config.cases import KEY_COLUMNS
from cmgm_bench.config.run_config import RunConfig
from cmgm_bench.results.store import load_run, read_journal
from tests.helpers import FAST, write_file

runner = CliRunner()
KEY = list(KEY_COLUMNS)


def impl_file(tmp_path, name, body):
    return str(write_file(tmp_path, f"{name}.py", body))


def run(args):
    return runner.invoke(app, ["run", *args])


def keys(frame):
    return sorted(map(tuple, frame[KEY].astype(str).values.tolist()))


@pytest.mark.slow
def test_an_implementation_that_raises_on_one_shape_is_one_error_row(tmp_path):
    path = impl_file(
        tmp_path,
        "picky",
        """
        from cmgm_bench.registry import register

        @register("picky", description="fails at 5x5", modes=("fwd",))
        def build(module, case):
            if case.height == 5:
                raise RuntimeError("picky cannot do 5x5")
            return lambda x, y: module(x, y)
        """,
    )
    out = tmp_path / "run"
    result = run(["--impl-file", path, "--impl", "picky", "--res", "4,5,6", "--out", str(out), *FAST])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out / "results.csv")
    assert frame.set_index("height").status.to_dict() == {4: "ok", 5: "error", 6: "ok"}
    assert frame.set_index("height").error[5] == "RuntimeError: picky cannot do 5x5"
    failed = [m for m in load_run(out).measurements if m.case.height == 5][0]
    assert "Traceback" in failed.traceback and "picky cannot do 5x5" in failed.traceback


@pytest.mark.slow
def test_each_record_says_where_its_time_went(tmp_path):
    """The journal keeps per-phase wall times: a sweep that runs long can be explained afterwards."""
    path = impl_file(
        tmp_path,
        "slow_build",
        """
        import time
        from cmgm_bench.registry import register

        @register("slow_build", description="sleeps 0.3 s while building", modes=("fwd",))
        def build(module, case):
            time.sleep(0.3)
            return lambda x, y: module(x, y)
        """,
    )
    out = tmp_path / "run"
    assert run(["--impl-file", path, "--impl", "slow_build", "--res", "4", "--out", str(out), *FAST]).exit_code == 0
    (measured,) = load_run(out).measurements
    phases, wall = measured.notes["phase_s"], measured.notes["wall_s"]
    assert {"setup", "reference", "build_and_first_call", "warm_up", "sdpa_backend", "sampling", "cleanup"} <= set(phases)
    assert phases["build_and_first_call"] >= 0.3  # the build's sleep is counted where it happened
    # the phases are disjoint parts of the case: together no more than its wall time, and most of it (a ratio:
    # a busy machine slows the code between phases as much as the phases)
    assert 0.75 * wall <= sum(phases.values()) <= wall
    # scripts/phase_times.py (which gpu_check.sh prints) sums them per implementation
    script = Path(__file__).resolve().parent.parent / "scripts" / "phase_times.py"
    shown = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True, check=True).stdout
    impl_line = next(line for line in shown.splitlines() if line.startswith("slow_build"))
    assert float(impl_line.split()[1]) == pytest.approx(wall, abs=0.05)
    assert "1 of 1 cases finished" in shown  # the sweep's size, from the run's stored settings
    not_a_run = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True)
    assert (not_a_run.returncode, not_a_run.stderr.count("\n")) == (2, 1) and "not a run directory" in not_a_run.stderr


SLEEPY = """
import time
from cmgm_bench.registry import register

@register("sleepy", description="sleeps at 5x5", modes=("fwd",))
def build(module, case):
    def forward(x, y):
        if case.height == 5:
            time.sleep(30)
        return module(x, y)
    return forward
"""


@pytest.mark.slow
@pytest.mark.parametrize("isolate", [False, True])
def test_timeout_per_case(tmp_path, isolate):
    path = impl_file(tmp_path, "sleepy", SLEEPY)
    out = tmp_path / "run"
    args = ["--impl-file", path, "--impl", "sleepy", "--res", "4,5", "--timeout", "3", "--out", str(out), *FAST]
    result = run(args + (["--isolate"] if isolate else []))
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out / "results.csv").set_index("height")
    assert frame.status.to_dict() == {4: "ok", 5: "timeout"}
    assert "timed out after 3 s" in frame.error[5]


DEADLINE_AFTER_DYNAMO = """
import contextlib, sys
import torch
from cmgm_bench.config.cases import Case
from cmgm_bench.measure import case_runner
from tests.helpers import measure_config

real_deadline = case_runner.deadline

@contextlib.contextmanager
def checked_deadline(seconds):
    dynamo = sys.modules.get("torch._dynamo")
    assert dynamo is not None and hasattr(dynamo, "utils"), "the case's deadline started before Dynamo was imported"
    with real_deadline(seconds):
        yield

case_runner.deadline = checked_deadline
measured = case_runner.CaseRunner(measure_config()).run(Case("eager", "cpu", "float32", "fwd", 1, 4, 4, 2, 16))
assert measured.status.value == "ok", measured.error
print("ok")
"""


@pytest.mark.slow
def test_the_case_deadline_starts_after_dynamo_is_imported():
    """In a fresh process: a --timeout that fired inside the first case's import of Dynamo left it half-imported,
    the clean-up's ``torch._dynamo.reset()`` raised, and the run ended with no rows. The import comes first now."""
    done = subprocess.run([sys.executable, "-c", DEADLINE_AFTER_DYNAMO], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_a_failed_clean_up_is_noted_and_the_case_kept(monkeypatch):
    import torch

    from cmgm_bench.config.cases import Case
    from cmgm_bench.measure.case_runner import CaseRunner
    from tests.helpers import measure_config

    def broken_reset():
        raise AttributeError("module 'torch._dynamo' has no attribute 'utils'")

    monkeypatch.setattr(torch._dynamo, "reset", broken_reset)
    measured = CaseRunner(measure_config()).run(Case("eager", "cpu", "float32", "fwd", 1, 4, 4, 2, 16))
    assert measured.status.value == "ok" and measured.notes["cleanup_error"].startswith("AttributeError: module")


@pytest.mark.slow
def test_a_crashing_child_under_isolate_is_recorded_and_the_sweep_goes_on(tmp_path):
    path = impl_file(
        tmp_path,
        "crashy",
        """
        import os
        from cmgm_bench.registry import register

        @register("crashy", description="aborts at 5x5", modes=("fwd",))
        def build(module, case):
            if case.height == 5:
                os.abort()
            return lambda x, y: module(x, y)
        """,
    )
    out = tmp_path / "run"
    result = run(["--impl-file", path, "--impl", "crashy", "--res", "4,5,6", "--isolate", "--out", str(out), *FAST])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out / "results.csv").set_index("height")
    assert frame.status.to_dict() == {4: "ok", 5: "error", 6: "ok"}
    assert "SIGABRT" in frame.error[5]


def test_predicted_oom_is_recorded_without_running(tmp_path):
    out = tmp_path / "run"
    result = run(["--impl", "eager", "--res", "4,300", "--out", str(out), *FAST])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out / "results.csv").set_index("height")
    assert frame.status[300] == "oom" and frame.error[300].startswith("oom (predicted)")
    assert frame.status[4] == "ok"


def cli_process(args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "cmgm_bench", "run", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def wait_for_cases(run_dir: Path, count: int, proc, limit_s: float = 120):
    """Wait until the run's journal holds ``count`` finished cases (the summaries come at the end)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if (run_dir / "cases.jsonl").exists() and len(read_journal(run_dir / "cases.jsonl")) >= count:
            return
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.2)
    raise AssertionError("rows never appeared")


SWEEP = ["--impl", "eager,sdpa", "--res", "4,5,6,7", "--batch", "1,2", "--max-time", "0.3", "--min-samples", "3", "--no-report"]


@pytest.mark.slow
def test_kill_9_loses_nothing_and_resume_completes(tmp_path):
    out = tmp_path / "run"
    proc = cli_process([*SWEEP, "--out", str(out)])
    wait_for_cases(out, 3, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "results.csv").exists()  # killed before the summaries: the journal holds the run
    before = load_run(out).frame()
    assert 3 <= len(before) < 16 and (before.status == "ok").all()
    shown = runner.invoke(app, ["show", str(out), "--format", "csv"])
    assert shown.exit_code == 0 and len(pd.read_csv(io.StringIO(shown.output))) == len(before)
    result = run(["--resume", str(out)])
    assert result.exit_code == 0, result.output
    after = pd.read_csv(out / "results.csv")
    assert len(after) == 16 and not after.duplicated(KEY).any()
    planned = RunConfig.build(impl="eager,sdpa", res="4,5,6,7", batch="1,2").cases()  # SWEEP's cases
    assert keys(after) == sorted(tuple(str(value) for value in case.key) for case in planned)
    merged_before = after.set_index(KEY).loc[before.set_index(KEY).index]
    assert (merged_before.latency_ms.values == before.latency_ms.values).all()  # finished rows untouched


INTERRUPTER = """
import os, signal
from cmgm_bench.registry import register

@register("interrupter", description="sends SIGINT to its own process in its first call at 5x5", modes=("fwd",))
def build(module, case):
    calls = []
    def forward(x, y):
        if case.height == 5 and not calls:
            calls.append(1)
            try:
                os.kill(os.getpid(), signal.SIGINT)
            except BaseException:
                if {swallow}:
                    pass  # as a finalizer or a library that catches BaseException drops it
                else:
                    raise
        return module(x, y)
    return forward
"""


@pytest.mark.slow
@pytest.mark.parametrize("swallowed", [False, True])
def test_ctrl_c_keeps_finished_cases_and_exits_130(tmp_path, swallowed):
    """SIGINT at a known point of a known case (no race with the sweep's progress): the finished cases are kept,
    no later case runs, the exit code is 130; also when the ``KeyboardInterrupt`` was dropped where it landed."""
    path = impl_file(tmp_path, "interrupter", INTERRUPTER.format(swallow=swallowed))
    out = tmp_path / "run"
    proc = cli_process(["--impl-file", path, "--impl", "interrupter", "--res", "4,5,6,7", *FAST, "--no-report", "--out", str(out)])
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr
    assert "interrupted: finished cases are in" in stderr
    frame = pd.read_csv(out / "results.csv")
    # swallowed, the case at 5x5 finished before the sweep stopped; raised, it ended there
    assert list(frame.height) == ([4, 5] if swallowed else [4])
    assert (frame.status == "ok").all() and len(load_run(out).measurements) == len(frame)


@pytest.mark.slow
def test_shards_merge_to_the_unsharded_sweep(tmp_path):
    sweep = ["--impl", "eager,sdpa", "--res", "4,6,9", "--mode", "fwd,feature", *FAST, "--no-report"]
    dirs = []
    for k in (1, 2, 3):
        shard_dir = tmp_path / f"shard{k}"
        assert run([*sweep, "--shard", f"{k}/3", "--out", str(shard_dir)]).exit_code == 0
        dirs.append(str(shard_dir))
    sizes = [len(pd.read_csv(Path(d) / "results.csv")) for d in dirs]
    assert sum(sizes) == 12 and min(sizes) >= 2
    merged = tmp_path / "merged"
    result = runner.invoke(app, ["merge", *dirs, "--out", str(merged)])
    assert result.exit_code == 0, result.output
    whole = tmp_path / "whole"
    assert run([*sweep, "--out", str(whole)]).exit_code == 0
    frame = pd.read_csv(merged / "results.csv")
    assert not frame.duplicated(KEY).any()
    assert keys(frame) == keys(pd.read_csv(whole / "results.csv"))
    duplicate = runner.invoke(app, ["merge", dirs[0], dirs[0], "--out", str(tmp_path / "dup")])
    assert duplicate.exit_code == 2 and "in both" in duplicate.stderr


def test_shard_assignment_is_balanced_by_cost():
    from cmgm_bench.config.cases import Case
    from cmgm_bench.config.shard import assign, expected_cost

    cases = [Case("eager", "cpu", "float32", "fwd", 1, n, n, 8, 64) for n in (4, 8, 16, 28, 40, 48)] * 2
    shard_of = assign(cases, 2)
    loads = [sum(expected_cost(c) for c, s in zip(cases, shard_of) if s == k) for k in (0, 1)]
    assert abs(loads[0] - loads[1]) / max(loads) < 0.05
    assert assign(cases, 2) == shard_of


def test_config_file_and_command_line_override(tmp_path):
    config = tmp_path / "sweep.toml"
    config.write_text('impl = ["eager"]\nres = [4, "3x5"]\nmode = "fwd,feature"\nmax_time = 0.05\nmin_samples = 3\n')
    out = tmp_path / "run"
    result = run(["--config", str(config), "--mode", "feature", "--out", str(out)])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out / "results.csv")
    assert sorted(zip(frame.height, frame.width)) == [(3, 5), (4, 4)]
    assert set(frame["mode"]) == {"feature"}


def test_resume_refuses_a_different_sweep(tmp_path):
    out = tmp_path / "run"
    assert run(["--impl", "eager", "--res", "4", "--out", str(out), *FAST]).exit_code == 0
    result = run(["--resume", str(out), "--res", "5"])
    assert result.exit_code == 2 and "different sweep" in result.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        (["--preset", "huge"], "unknown preset"),
        (["--shard", "3/2"], "between 1 and N"),
        (["--shard", "0/2"], "between 1 and N"),
        (["--shard", "half"], "not K/N"),
        (["--mode", "fwd,sideways"], "unknown value"),
        (["--timeout", "-1"], "positive"),
        (["--resume", "/nonexistent/run"], "no results.json"),
    ],
)
def test_more_bad_input(tmp_path, args, message):
    result = run([*args, "--res", "4"] if "--resume" not in args else args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "text,message",
    [("res = [4\n", "not valid TOML"), ("resolution = 4\n", "unknown key 'resolution'"), ("max_time = 'fast'\n",
        "'max_time' must be"), ("isolate = 1\n", "'isolate' must be true or false")],
)
def test_bad_config_files(tmp_path, text, message):
    config = tmp_path / "sweep.toml"
    config.write_text(text)
    out = tmp_path / "run"
    result = run(["--config", str(config), "--out", str(out)])
    assert result.exit_code == 2 and message in result.stderr
    assert not out.exists()


def test_results_file_with_missing_columns_is_refused(tmp_path):
    import json

    out = tmp_path / "run"
    assert run(["--impl", "eager", "--res", "4", "--out", str(out), *FAST]).exit_code == 0
    data = json.loads((out / "results.json").read_text())
    del data["cases"][0]["row"]["latency_ms"]
    (out / "results.json").write_text(json.dumps(data))
    (out / "cases.jsonl").unlink()
    result = runner.invoke(app, ["merge", str(out), "--out", str(tmp_path / "merged")])
    assert result.exit_code == 2 and "missing columns latency_ms" in result.stderr


def test_appending_a_case_writes_one_journal_line_not_the_summaries(tmp_path, monkeypatch):
    """A 1,000-case sweep costs 1,000 journal lines and one write of each summary, not 1,000 rewrites."""
    from cmgm_bench.config.cases import Case
    from cmgm_bench.measure.measurement import Measurement, Status
    from cmgm_bench.results import store

    writes = []
    real_write = store._atomic_write
    monkeypatch.setattr(store, "_atomic_write", lambda path, text: (writes.append(path.name), real_write(path, text)))
    writer = store.RunWriter(tmp_path / "run", {"environment": {"cpu_model": "test"}, "settings": {}})
    for index in range(1000):
        case = Case("eager", "cpu", "float32", "fwd", index + 1, 7, 5, 2, 16)
        writer.append(Measurement(case, Status.OK, samples_s=[0.001 + index * 1e-6] * 10))
    assert writes == ["cases.jsonl", "run.json"]  # set-up only
    assert len(load_run(tmp_path / "run").measurements) == 1000  # readable from the journal before the summaries exist
    writer.finish()
    assert writes[2:] == ["results.csv", "results.json"]
    assert len(pd.read_csv(tmp_path / "run" / "results.csv")) == 1000


@pytest.mark.slow
def test_a_run_stops_before_mixing_machine_models_and_resumes_with_the_flag(tmp_path, monkeypatch):
    """Each case records its host; a case from a second machine model is refused (nothing of it stored)
    until --resume --allow-mixed-hosts keeps both. The host is faked: a new model at every case after the first."""
    from cmgm_bench.machine import env

    models = iter(["CPU A", "CPU A", "CPU B", "CPU C"])  # the driver's ceilings, then one per case
    monkeypatch.setattr(env, "host_description", lambda device: {"hostname": "h", "cpu_model": next(models), "gpu_name": None})
    out = tmp_path / "run"
    refused = run(["--impl", "eager", "--res", "4,5", "--threads", "1", "--out", str(out), *FAST])
    assert refused.exit_code == 2 and "2 machine models (CPU A; CPU B)" in refused.stderr
    assert [m.machine for m in load_run(out).measurements] == ["CPU A"]
    resumed = run(["--resume", str(out), "--allow-mixed-hosts"])
    assert resumed.exit_code == 0, resumed.output
    assert sorted(pd.read_csv(out / "results.csv").machine) == ["CPU A", "CPU C"]


def test_the_default_sweep_measures_emulated_dtypes_at_its_smallest_grid_only(monkeypatch, tmp_path):
    """Libraries kept below AVX-512 emulate bfloat16 (and no CPU here has AMX-FP16): the default sweep measures the
    implementations that compute in those dtypes at 11x11 alone and says why; naming them, or any other grids,
    measures every grid."""
    from cmgm_bench.execution.sweep import make_plan

    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    default = make_plan(RunConfig.build(), tmp_path / "a")
    assert "emulates bfloat16 and float16" in default.narrowed and "amp-bf16" in default.narrowed
    grids = {(case.impl, case.height) for case in default.cases}
    assert {height for impl, height in grids if impl == "amp-bf16"} == {11}
    assert {height for impl, height in grids if impl == "eager"} == {11, 28, 48}
    for explicit in (RunConfig.build(impl="amp-bf16,eager"), RunConfig.build(res="11,48")):
        plan = make_plan(explicit, tmp_path / "b")
        assert plan.narrowed is None and len(plan.cases) == len(explicit.cases())
    monkeypatch.delenv("ATEN_CPU_CAPABILITY")
    assert all(case.height == 11 for case in make_plan(RunConfig.build(), tmp_path / "c").cases if case.dtype == "float16")
