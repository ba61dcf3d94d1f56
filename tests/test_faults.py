"""Faults, for real: a killed or terminated parent of an isolated case, a child hung in native code, a full disk
and a read-only folder (small tmpfs mounts), names that carry HTML, secrets in the environment of a gate."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cmgm_bench.cli import app
from cmgm_bench.execution import isolate
from tests.helpers import FAST, require_tool, write_file

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent

HUNG = """
import ctypes, os
from cmgm_bench.registry import register

@register("hung", description="hangs in native code (libc sleep) at 5x5", modes=("fwd",))
def build(module, case):
    def forward(x, y):
        if case.height == 5:
            with open({pids!r}, "a") as handle:
                handle.write(f"{{os.getpid()}} {{os.getppid()}}\\n")
            ctypes.CDLL(None).sleep(600)
        return module(x, y)
    return forward
"""


def hung_run(tmp_path: Path) -> tuple[subprocess.Popen, Path, Path]:
    """A run --isolate whose second case hangs; returns the parent process, the pids file and the run folder."""
    pids = tmp_path / "pids.txt"
    plugin = write_file(tmp_path, "hung.py", HUNG.format(pids=str(pids)))
    out = tmp_path / "run"
    parent = subprocess.Popen([sys.executable, "-m", "cmgm_bench", "run", "--impl-file", str(plugin), "--impl", "hung",
                               "--res", "4,5", "--heads", "2", "--dim", "16", "--threads", "1", *FAST, "--isolate",
                               "--timeout", "600", "--no-report", "--out", str(out)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    for _ in range(600):  # until the child hangs (its pid written), at most ~2 minutes
        if pids.exists() and pids.read_text().strip():
            return parent, pids, out
        assert parent.poll() is None, parent.stderr.read()
        time.sleep(0.2)
    raise AssertionError("the hung case never started")


def gone(pid: int, seconds: float = 30.0) -> bool:
    """Whether process ``pid`` has ended (is gone or a zombie) within ``seconds``."""
    for _ in range(int(seconds / 0.1)):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.1)
    return False


def child_folders(parent_pid: int) -> list[Path]:
    return list(Path(tempfile.gettempdir()).glob(f"{isolate.FOLDER_PREFIX}{parent_pid}-*"))


@pytest.mark.slow
def test_sigterm_of_an_isolated_run_stops_the_hung_child_saves_and_removes_its_folder(tmp_path):
    parent, pids, out = hung_run(tmp_path)
    child = int(pids.read_text().split()[0])
    assert child_folders(parent.pid)
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=120) == 128 + signal.SIGTERM
    assert gone(child) and not child_folders(parent.pid)
    finished = [json.loads(line)["row"]["height"] for line in (out / "cases.jsonl").read_text().splitlines()]
    assert finished == [4] and (out / "results.csv").exists()  # the finished case saved, the summaries written


@pytest.mark.slow
def test_a_killed_parent_takes_its_child_along_and_the_next_run_removes_its_folder(tmp_path):
    parent, pids, _ = hung_run(tmp_path)
    child, recorded_parent = (int(value) for value in pids.read_text().split())
    assert recorded_parent == parent.pid
    parent.kill()
    parent.wait()
    assert gone(child)  # PR_SET_PDEATHSIG: no orphan left running
    assert child_folders(parent.pid)  # a SIGKILL leaves no time to clean up ...
    isolate.remove_orphaned_folders()  # ... the next isolated case does it
    assert not child_folders(parent.pid)


@pytest.mark.slow
def test_an_isolated_child_enforces_its_own_limit(tmp_path):
    """The child alone (no parent watching its clock): hung in native code, it still ends at its limit."""
    pids = tmp_path / "pids.txt"
    plugin = write_file(tmp_path, "hung.py", HUNG.format(pids=str(pids)))
    spec = {"case": {"impl": "hung", "device": "cpu", "dtype": "float32", "mode": "fwd", "batch": 1, "height": 5, "width": 5,
                     "heads": 2, "dim": 16, "allocator": "pinned"},
            "settings": {"impl_file": [str(plugin)], "impl": "hung", "max_time": 0.05, "min_samples": 3, "memory": False},
            "ceilings": {}, "threads": 1, "parent": os.getpid(), "limit_s": 3}
    from cmgm_bench.config import settings

    spec["settings"] = {**settings.DEFAULTS, **spec["settings"]}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    child = subprocess.run([sys.executable, "-m", "cmgm_bench.execution.isolate", str(tmp_path / "spec.json"),
                            str(tmp_path / "record.json")], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert child.returncode == 1 and isolate.WATCHDOG_MARK in child.stderr
    assert pids.exists() and not (tmp_path / "record.json").exists()


@pytest.fixture
def small_mount(tmp_path):
    """A 2 MiB tmpfs at ``tmp_path / "mnt"``, unmounted afterwards; ``remount(options)`` changes it."""
    point = tmp_path / "mnt"
    point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(point)], capture_output=True, text=True)
    require_tool(None if done.returncode == 0 else f"cannot mount a tmpfs here: {done.stderr.strip()}")

    def remount(options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(point)], check=True)

    yield point, remount
    subprocess.run(["umount", "-l", str(point)], check=False)


def leftovers(folder: Path) -> list[Path]:
    """Temporary or empty files a failed write left behind."""
    return [path for path in folder.rglob("*") if path.is_file() and (path.name.endswith(".tmp") or path.stat().st_size == 0)]


def one_line_error(result, says: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], result.stderr
    assert "Traceback" not in result.output


def test_a_full_disk_is_one_line_and_leaves_no_partial_file(small_mount):
    point, _ = small_mount
    ballast = point / "ballast"
    free = os.statvfs(point).f_bavail * os.statvfs(point).f_frsize
    ballast.write_bytes(b"\1" * (free - 48 * 1024))  # room for the journal and run.json, not for the report's plots
    out = point / "run"
    result = runner.invoke(app, ["run", "--impl", "eager", "--res", "4", "--heads", "2", "--dim", "16", "--threads", "1",
                                 *FAST, "--out", str(out)])
    one_line_error(result, "No space left on device")
    assert not leftovers(point)


@pytest.mark.slow
def test_a_read_only_folder_is_one_line_for_every_writer(small_mount, tmp_path):
    point, remount = small_mount
    run_dir = tmp_path / "run"
    made = runner.invoke(app, ["run", "--impl", "eager", "--res", "4", "--heads", "2", "--dim", "16", "--threads", "1", *FAST,
                               "--no-report", "--out", str(run_dir)])
    assert made.exit_code == 0, made.output
    db = point / "history.sqlite"
    assert runner.invoke(app, ["history", "add", str(run_dir), "--db", str(db)]).exit_code == 0
    copy = point / "copy"
    assert runner.invoke(app, ["merge", str(run_dir), "--out", str(copy)]).exit_code == 0
    remount("ro")
    one_line_error(runner.invoke(app, ["run", "--impl", "eager", "--res", "4", "--out", str(point / "new")]), "Read-only file system")
    one_line_error(runner.invoke(app, ["report", str(copy)]), "Read-only file system")
    one_line_error(runner.invoke(app, ["merge", str(run_dir), "--out", str(point / "merged")]), "Read-only file system")
    one_line_error(runner.invoke(app, ["history", "html", str(point / "dash"), "--db", str(db)]), "Read-only file system")
    other = tmp_path / "other"
    assert runner.invoke(app, ["run", "--impl", "sdpa", "--res", "4", "--heads", "2", "--dim", "16", "--threads", "1", *FAST,
                               "--no-report", "--out", str(other)]).exit_code == 0
    one_line_error(runner.invoke(app, ["history", "add", str(other), "--db", str(db)]), "readonly database")


@pytest.mark.slow
def test_names_and_errors_from_a_run_are_shown_as_text_in_markdown(tmp_path):
    name = "x<img src=x onerror=alert(1)>"
    plugin = write_file(tmp_path, "html.py", f"""
        from cmgm_bench.registry import register

        @register({name!r}, description="a name with HTML in it", modes=("fwd",))
        def build(module, case):
            if case.height == 5:
                raise RuntimeError("<script>alert(2)</script>")
            return lambda x, y: module(x, y)
        """)
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", "--impl-file", str(plugin), "--impl", name, "--res", "4,5", "--heads", "2", "--dim", "16",
                                 "--threads", "1", *FAST, "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = (out / "report.md").read_text()
    compared = runner.invoke(app, ["compare", str(out), str(out), "--format", "markdown"]).output
    for text in (report, compared):
        assert "<img" not in text and "<script>" not in text
        assert "x&lt;img src=x onerror=alert(1)&gt;" in text
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in report  # the error of the failed case, as text


def test_the_gate_counts_the_base_revision_without_secrets(monkeypatch, tmp_path):
    from cmgm_bench import gate

    seen = {}

    def record(command, cwd, env, capture_output, text):
        seen.update(env)
        return subprocess.CompletedProcess(command, 0, "", "")

    for name in ("GITHUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "PGPASSWORD", "NPM_AUTH_TOKEN", "MY_API_KEY"):
        monkeypatch.setenv(name, "value-that-must-not-leak")
    monkeypatch.setenv("CMGM_SOMETHING_PLAIN", "kept")
    monkeypatch.setattr(gate.subprocess, "run", record)
    gate.count_instructions(tmp_path, ["eager"], tmp_path / "out", res="8", mode="fwd", threads=1)
    assert "value-that-must-not-leak" not in seen.values()
    assert seen["CMGM_SOMETHING_PLAIN"] == "kept" and str(tmp_path) in seen["PYTHONPATH"] and "PATH" in seen
