"""`cmgm-bench gate BASE_REF` end to end, in a clone of this repository with a change in its working tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import require_tool

ROOT = Path(__file__).resolve().parent.parent
MODEL = "cmgm_bench/workload/model.py"
# More work in the model, whatever its lines look like: a wrapper of CMGM.forward appended to the module.
MORE_WORK = """

_measured_forward = CMGM.forward


def _forward_with_more_work(self, *args, **kwargs):
    out, attn_map = _measured_forward(self, *args, **kwargs)
    return out + 0 * self.conv2(out), attn_map


CMGM.forward = _forward_with_more_work
"""


@pytest.fixture
def clone(tmp_path) -> Path:
    """A clone of this repository's last commit (what CI checks out), its working tree clean."""
    repo = tmp_path / "repo"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
    return repo


def gate(repo: Path, *args: str) -> subprocess.CompletedProcess:
    """The gate of the code under test, run in ``repo`` (PYTHONSAFEPATH: not the clone's package from the folder)."""
    return subprocess.run([sys.executable, "-m", "cmgm_bench", "gate", *args], cwd=repo, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONSAFEPATH": "1"})


@pytest.mark.slow
def test_gate_flags_a_change_that_adds_work_to_the_model(clone, tmp_path):
    require_tool(None if shutil.which("valgrind") else "valgrind is not installed (.ci/run installs it)")
    model = clone / MODEL
    model.write_text(model.read_text() + MORE_WORK)
    summary = tmp_path / "summary.md"
    result = gate(clone, "HEAD", "--instr-res", "4", "--res", "4", "--max-time", "3", "--summary", str(summary))
    assert result.returncode == 1, result.stderr
    assert "**regression**" in result.stdout and "Implementations: eager" in result.stdout
    instructions = result.stdout.split("### Instruction counts (regression)")[1].split("###")[0]
    assert "| eager cpu fwd B1 64x4x4 h8 |" in instructions and "| slower |" in instructions
    race = result.stdout.split("### Paired race")[1]
    assert "| eager | cpu fwd B1 64x4x4 h8 |" in race
    assert summary.read_text().strip() == result.stdout.strip()
    assert subprocess.run(["git", "-C", str(clone), "worktree", "list"], capture_output=True, text=True).stdout.count("\n") == 1


def test_gate_with_nothing_changed_passes_without_measuring(clone):
    result = gate(clone, "HEAD")
    assert result.returncode == 0, result.stderr
    assert "No implementation changed" in result.stdout


def test_gate_with_an_unknown_base_exits_2(clone):
    result = gate(clone, "no-such-branch")
    assert result.returncode == 2
    assert result.stderr.startswith("error: git rev-parse") and len(result.stderr.strip().splitlines()) == 1
