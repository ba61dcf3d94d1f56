"""``cmgm-bench gate BASE_REF``: one command for a pull request's performance check.

It compares the working tree of the repository it is run in (the head) with a
base revision checked out in a git worktree:

1. the implementations the change touches: those whose file changed, plus
   ``eager`` when the model (``cmgm_bench/workload/``) changed; ``--impl``
   names them instead;
2. instruction counts (callgrind) of those implementations, each revision's
   harness and code in its own process (``python -m cmgm_bench run
   --count-instructions``), judged by ``compare --metric instructions``;
3. a paired wall-clock race per implementation, both revisions' files loaded
   side by side in this process (``base:NAME`` against ``head:NAME``).

A regression is an instruction count above its threshold, a case that became
inaccurate, or a race that ends ``slower``; the Markdown summary holds both
verdicts. What each race loads from the base revision is the implementation's
file (and, for ``eager``, the model it loads by path); helpers it imports come
from the installed package.

Trust: the base revision's code runs on the machine that runs the gate. Its
instruction counts run in processes whose environment has no variable named like a
credential (:func:`without_secrets`); its implementation files are loaded into this
process for the race. Run the gate only where the base revision is trusted (a
pull request's own job, never ``pull_request_target``, and no secrets in that job).
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cmgm_bench import api, registry
from cmgm_bench.analysis.compare import Comparison
from cmgm_bench.config.race_config import GATE_RACE, RaceConfig
from cmgm_bench.errors import UsageError
from cmgm_bench.execution.paired import PairedResult

MODEL_FOLDER = "cmgm_bench/workload/"
BASE_PREFIX, HEAD_PREFIX = "base:", "head:"


@dataclass
class GateResult:
    base_commit: str
    impls: list[str]
    instructions: Comparison | None = None
    races: list[PairedResult] = field(default_factory=list)

    @property
    def instructions_regressed(self) -> bool:
        return self.instructions is not None and any(c.verdict == "slower" or c.accuracy for c in self.instructions.cases)

    @property
    def race_regressed(self) -> bool:
        return any(r.verdict == "slower" for r in self.races)

    @property
    def regressed(self) -> bool:
        return self.instructions_regressed or self.race_regressed

    @staticmethod
    def impl_of(race: PairedResult) -> str:
        """The implementation a race judged, without the revision prefix its head side was loaded under."""
        return race.cand.impl.removeprefix(HEAD_PREFIX)


def _git(repo: Path, *args: str) -> str:
    result = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise UsageError(f"git {' '.join(args)}: {(result.stderr.strip().splitlines() or ['failed'])[-1]}")
    return result.stdout.strip()


def repository_root(start: Path) -> Path:
    return Path(_git(start, "rev-parse", "--show-toplevel"))


def _impl_file(repo: Path, impl: registry.Implementation) -> str | None:
    """``cmgm_bench_impls/eager.py``: an implementation's file relative to a checkout, where it is one of the checkout's."""
    source = Path(impl.source)
    return f"{source.parent.name}/{source.name}" if (repo / source.parent.name / source.name).is_file() else None


def changed_impls(repo: Path, base_commit: str) -> list[str]:
    """The registered implementations whose file differs between ``base_commit`` and the working tree."""
    changed = set(_git(repo, "diff", "--name-only", base_commit, "--").splitlines())
    registry.load_entry_points()
    names = [name for name, impl in registry.all_implementations().items() if _impl_file(repo, impl) in changed]
    if any(path.startswith(MODEL_FOLDER) for path in changed) and "eager" not in names:
        names.insert(0, "eager")
    return names


# Names of environment variables that hold credentials, as CI systems name them (GITHUB_TOKEN, AWS_SECRET_ACCESS_KEY,
# PGPASSWORD, NPM_AUTH_TOKEN, ...): the base revision's code never sees them.
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|PRIVATE|API_?KEY|ACCESS_KEY|AUTH", re.IGNORECASE)


def without_secrets(environment) -> dict[str, str]:
    """``environment`` less the variables whose names look like credentials."""
    return {name: value for name, value in environment.items() if not SECRET_NAME.search(name)}


def count_instructions(checkout: Path, impls: list[str], out: Path, *, res: str, mode: str, threads: int) -> Path:
    """Count instructions of ``impls`` with ``checkout``'s harness and code, in a process of its own."""
    command = [
        sys.executable, "-m", "cmgm_bench", "run", "--impl", ",".join(impls), "--res", res, "--mode", mode,
        "--threads", str(threads), "--count-instructions", "--no-memory", "--no-report", "--max-time", "0.2",
        "--device", "cpu", "--out", str(out),
    ]
    environment = {**without_secrets(os.environ),
                   "PYTHONPATH": os.pathsep.join(filter(None, [str(checkout), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(command, cwd=checkout, env=environment, capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise UsageError(f"counting instructions in {checkout} failed (exit {result.returncode}): {tail}")
    return out


def race_revisions(base_checkout: Path, repo: Path, impls: list[str], race: RaceConfig, **case_options) -> list[PairedResult]:
    """Race ``base:NAME`` (the base revision's file) against ``head:NAME`` (the working tree's) per implementation."""
    registry.load_entry_points()
    results = []
    loaded: set[str] = set()
    for impl in impls:
        relative = _impl_file(repo, registry.get(impl))
        if relative is None:
            raise UsageError(f"{impl}: its file is not part of {repo}; name implementations of this repository")
        if relative not in loaded:
            if not (base_checkout / relative).is_file():
                continue  # new in this change: nothing to race against
            registry.load_file(str(base_checkout / relative), prefix=BASE_PREFIX)
            registry.load_file(str(repo / relative), prefix=HEAD_PREFIX)
            loaded.add(relative)
        results += api.race(BASE_PREFIX + impl, HEAD_PREFIX + impl, **case_options, **dataclasses.asdict(race))
    return results


def run_gate(base_ref: str, work: Path, *, repo: Path | None = None, impls: list[str] | None = None, instructions: bool = True,
             instr_res: str = "8,11,28", instr_threshold: float = 0.01, mode: str = "fwd", threads: int = 1, res: str = "28",
             race: RaceConfig = GATE_RACE) -> GateResult:
    """Both checks of ``base_ref`` against the working tree; ``work`` holds the worktree and the counted runs."""
    repo = repository_root(repo or Path.cwd())
    base_commit = _git(repo, "rev-parse", "--verify", f"{base_ref}^{{commit}}")
    names = impls if impls else changed_impls(repo, base_commit)
    result = GateResult(base_commit, names)
    if not names:
        return result
    work.mkdir(parents=True, exist_ok=True)
    base_checkout = work / "base"
    _git(repo, "worktree", "add", "--detach", "--force", str(base_checkout), base_commit)
    try:
        if instructions:
            base_run = count_instructions(base_checkout, names, work / "base-run", res=instr_res, mode=mode, threads=threads)
            head_run = count_instructions(repo, names, work / "head-run", res=instr_res, mode=mode, threads=threads)
            result.instructions = api.compare(base_run, head_run, metric="instructions", threshold=instr_threshold)
        result.races = race_revisions(base_checkout, repo, names, race, mode=mode, threads=threads, res=res)
    finally:
        _git(repo, "worktree", "remove", "--force", str(base_checkout))
    return result
