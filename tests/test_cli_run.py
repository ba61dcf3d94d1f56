"""`cmgm-bench run` through Typer's test runner: files, columns, rows, and bad input."""

import json

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from cmgm_bench.cli import app
from cmgm_bench.results.store import COLUMNS
from tests.helpers import FAST, write_file

runner = CliRunner()


@pytest.mark.slow
def test_tiny_sweep_writes_both_files(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "--impl", "eager", "--res", "5,3x4", "--batch", "1,2", "--threads", "1", "--out", str(out), *FAST])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out / "results.csv")
    assert list(frame.columns) == list(COLUMNS)
    assert len(frame) == 4
    assert set(zip(frame.batch, frame.height, frame.width)) == {(1, 5, 5), (1, 3, 4), (2, 5, 5), (2, 3, 4)}
    assert (frame.status == "ok").all()
    assert (frame.latency_ms > 0).all() and (frame.samples >= 3).all()
    assert (frame.latency_iqr_ms >= 0).all() and (frame.latency_min_ms <= frame.latency_ms).all()
    assert (frame.threads == 1).all()
    data = json.loads((out / "results.json").read_text())
    environment = data["environment"]
    for key in ("torch_version", "cpu_model", "threads", "git_commit", "command_line", "start_time", "project_version"):
        assert key in environment
    assert environment["threads"] == 1
    assert len(data["cases"]) == 4
    for case in data["cases"]:
        assert len(case["samples_s"]) == case["row"]["samples"]
        assert min(case["samples_s"]) * 1e3 == pytest.approx(case["row"]["latency_min_ms"])


@pytest.mark.parametrize(
    "args,message",
    [
        (["--heads", "7", "--dim", "64"], "divisible"),
        (["--res", "0"], "positive"),
        (["--batch", "-1"], "positive"),
        (["--res", "abc"], "not a size"),
        (["--impl", "nope"], "unknown implementation"),
        (["--mode", "sideways"], "unknown value"),
        (["--device", "tpu"], "unknown device"),
        (["--threads", "0"], "positive"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, args, message):
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "--out", str(out), *args])
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_exits_2(tmp_path):
    result = runner.invoke(app, ["run", "--device", "cuda", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "CUDA is not available" in result.stderr
    assert not (tmp_path / "run").exists()


def test_list_shows_the_baseline():
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0
    assert "eager" in result.output and "baseline" in result.output


def test_python_module_entry_point_exits_2_on_bad_option():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "cmgm_bench", "run", "--threads", "abc"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["history", "--help"], ["history", "check", "--help"],
                                  ["run", "--max-time", "soon"]])
def test_help_and_option_errors_answer_without_importing_the_harness(argv):
    """`--help` and a malformed option answer at once: torch, pandas, scipy and SQLAlchemy load only when a command
    runs (each costs a second or more on a busy 2-vCPU machine)."""
    import subprocess
    import sys

    probe = ("import sys\nfrom cmgm_bench.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as exc:\n"
             "    code = exc.code\nheavy = ('torch', 'pandas', 'scipy', 'sqlalchemy')\n"
             "print('LOADED', sorted(m for m in heavy if m in sys.modules), code)")
    done = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=120)
    expected_code = 2 if argv[-1] == "soon" else 0
    assert done.stdout.strip().splitlines()[-1] == f"LOADED [] {expected_code}", done.stdout[-2000:] + done.stderr[-2000:]


@pytest.mark.slow
def test_list_answers_from_its_cache_until_what_it_depends_on_changes(tmp_path):
    """The second `list` prints the same table without importing the implementations (nor torch); a change of what
    the rows depend on (here a CMGM_* variable) lists afresh; --impl-file always lists afresh."""
    import os
    import subprocess
    import sys

    probe = ("import sys\nfrom cmgm_bench.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
             "print('TORCH', 'torch' in sys.modules)")

    def listed(*args, **environment):
        done = subprocess.run([sys.executable, "-c", probe, "list", *args], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "CMGM_BENCH_CACHE": str(tmp_path / "cache"), **environment})
        table, marker = done.stdout.rsplit("TORCH", 1)
        return table, marker.strip() == "True"

    first, imported_first = listed()
    second, imported_second = listed()
    assert imported_first and not imported_second and first == second and "eager (baseline)" in first
    assert listed(CMGM_LIST_TEST="changed")[1]
    plugin = write_file(tmp_path, "extra.py", """
        from cmgm_bench.registry import register

        @register("listed-extra", description="registered by a file", modes=("fwd",))
        def build(module, case):
            return lambda x, y: module(x, y)
        """)
    table, imported = listed("--impl-file", str(plugin))
    assert imported and "listed-extra" in table
