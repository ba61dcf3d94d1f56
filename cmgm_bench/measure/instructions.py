"""Instruction counts per call with callgrind: a deterministic metric for CI gates.

All cases run in one valgrind process (starting Python and torch under
valgrind costs about a minute; each further case costs little). Collection is
switched on only around the measured calls (``--collect-atstart=no`` and
torch's client-request toggles), after two warm-up calls per case. Settings
for repeatability: one thread, fixed seeds, ``PYTHONHASHSEED=0``.
Run as ``valgrind ... python -m cmgm_bench.measure.instructions SPEC.json RESULT.json``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from cmgm_bench.config.cases import Case
from cmgm_bench.errors import UsageError

CALLS_PER_CASE = 3
INSTALL_HINT = "valgrind not found: install it (Debian/Ubuntu: apt-get install valgrind) to count instructions"


def require_valgrind() -> str:
    path = shutil.which("valgrind")
    if path is None:
        raise UsageError(INSTALL_HINT)
    return path


def _totals(dump: Path) -> int:
    for line in dump.read_text(errors="replace").splitlines():
        match = re.match(r"(?:summary|totals):\s*(\d+)", line)
        if match:
            return int(match.group(1))
    raise RuntimeError(f"no totals in {dump}")


def count(cases: list[Case], seed: int, impl_files: list[str], timeout_s: float = 3600) -> list[int | None]:
    """Instructions per call of each case, in order (``None`` for a case that failed to run)."""
    valgrind = require_valgrind()
    with tempfile.TemporaryDirectory(prefix="cmgm-callgrind-") as tmp:
        spec = Path(tmp) / "spec.json"
        result = Path(tmp) / "result.json"
        spec.write_text(json.dumps({"cases": [c.as_dict() for c in cases], "seed": seed, "impl_files": impl_files}))
        command = [
            valgrind, "--tool=callgrind", "--collect-atstart=no", "--instr-atstart=yes",
            f"--callgrind-out-file={tmp}/callgrind.out", sys.executable, "-m", "cmgm_bench.measure.instructions", str(spec), str(result),
        ]
        env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s)
        if proc.returncode != 0 or not result.exists():
            tail = (proc.stderr or "").strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"callgrind run failed ({proc.returncode}): {tail[0]}")
        measured = json.loads(result.read_text())
        return [None if dump is None else _totals(Path(tmp) / f"callgrind.out.{dump}") // CALLS_PER_CASE for dump in measured]


def _child(spec_path: str, result_path: str) -> None:
    import torch

    from cmgm_bench import registry
    from cmgm_bench.workload.modes import autograd_context
    from cmgm_bench.measure.prepare import prepare_case

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(1)
    for impl_file in spec["impl_files"]:
        registry.load_file(impl_file)
    measured: list[int | None] = []  # the callgrind dump number of each case
    dumps = 0
    for entry in spec["cases"]:
        case = Case(**entry)
        try:
            prepared = prepare_case(case, registry.get(case.impl), spec["seed"])
            with autograd_context(case.mode):
                prepared.step()
                prepared.step()
        except Exception:  # a case that cannot run has no count; the sweep recorded why
            measured.append(None)
            continue
        ok = False
        torch._C._valgrind_toggle()
        try:
            with autograd_context(case.mode):
                for _ in range(CALLS_PER_CASE):
                    prepared.step()
            ok = True
        except Exception:
            pass
        finally:
            torch._C._valgrind_toggle_and_dump_stats()
            dumps += 1
        measured.append(dumps if ok else None)
    Path(result_path).write_text(json.dumps(measured))


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2])
