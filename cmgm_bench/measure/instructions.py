"""Instruction counts per call with callgrind: a deterministic metric for CI gates.

All cases run in one valgrind process. Instrumentation is off until a case's
counted calls (``--instr-atstart=no``, then callgrind's start/stop client
requests through a tiny C helper, ``csrc/callgrind_switch.c``, compiled at
count time, and off again after them): starting Python and torch, building
each case and its warm-up calls run without callgrind's instrumentation, several
times faster. A dump's ``totals:`` line holds its count (its ``summary:`` line is
wrong once instrumentation has been switched off and on). Without a C compiler
or ``valgrind/callgrind.h`` everything is instrumented from the start. Collection is switched on only around the measured calls
(``--collect-atstart=no`` and torch's client-request toggles), after two
warm-up calls per case. Settings for repeatability: one thread, fixed seeds,
``PYTHONHASHSEED=0``.
Run as ``valgrind ... python -m cmgm_bench.measure.instructions SPEC.json RESULT.json``.
"""

from __future__ import annotations

import ctypes
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
SWITCH_SOURCE = Path(__file__).parent / "csrc" / "callgrind_switch.c"
INSTALL_HINT = "valgrind not found: install it (Debian/Ubuntu: apt-get install valgrind) to count instructions"


def require_valgrind() -> str:
    path = shutil.which("valgrind")
    if path is None:
        raise UsageError(INSTALL_HINT)
    return path


def _totals(dump: Path) -> int:
    """The instructions a dump counted: its ``totals:`` line."""
    for line in dump.read_text(errors="replace").splitlines():
        match = re.match(r"totals:\s*(\d+)", line)
        if match:
            return int(match.group(1))
    raise RuntimeError(f"no totals in {dump}")


def build_switch(folder: Path) -> Path | None:
    """Compile the instrumentation switch into ``folder``; ``None`` without a C compiler or callgrind's header."""
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        return None
    library = folder / "callgrind_switch.so"
    built = subprocess.run([compiler, "-shared", "-fPIC", "-O1", str(SWITCH_SOURCE), "-o", str(library)], capture_output=True)
    return library if built.returncode == 0 else None


def count(cases: list[Case], seed: int, impl_files: list[str], timeout_s: float = 3600, *, switch: bool = True) -> list[int | None]:
    """Instructions per call of each case, in order (``None`` for a case that failed to run).

    ``switch=False`` instruments from the start (the way to check that the switch changes no count).
    """
    valgrind = require_valgrind()
    with tempfile.TemporaryDirectory(prefix="cmgm-callgrind-") as tmp:
        spec = Path(tmp) / "spec.json"
        result = Path(tmp) / "result.json"
        library = build_switch(Path(tmp)) if switch else None
        spec.write_text(json.dumps({"cases": [c.as_dict() for c in cases], "seed": seed, "impl_files": impl_files,
                                    "switch": None if library is None else str(library)}))
        command = [
            valgrind, "--tool=callgrind", "--collect-atstart=no", f"--instr-atstart={'no' if library else 'yes'}",
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
    switch = None if spec.get("switch") is None else ctypes.CDLL(spec["switch"])
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
        if switch is not None:
            switch.cmgm_start_instrumentation()
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
            if switch is not None:
                switch.cmgm_stop_instrumentation()
        measured.append(dumps if ok else None)
    Path(result_path).write_text(json.dumps(measured))


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2])
