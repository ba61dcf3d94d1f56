"""Instruction counts per call with callgrind: a deterministic metric for CI gates.

Cases run in valgrind processes (two at once where there are two CPUs: counts
do not depend on what else runs). Instrumentation is off until a case's
counted call (``--instr-atstart=no``, then callgrind's start/stop client
requests through a tiny C helper, ``csrc/callgrind_switch.c``, compiled at
count time, and off again after it): starting Python and torch, building each
case and its warm-up call run without callgrind's instrumentation. A dump's
``totals:`` line holds its count (its ``summary:`` line is wrong once
instrumentation has been switched off and on). Without a C compiler or
``valgrind/callgrind.h`` everything is instrumented from the start. Collection
is switched on only around the counted call (``--collect-atstart=no`` and
torch's client-request toggles), after one warm-up call. One counted call per
case: the count of a call repeats to about 0.005 % (measured), so more calls
would only cost time.

**The counted code is the portable x86 path** (:data:`PORTABLE_ISA`): valgrind
emulates each fused multiply-add lane by lane in a helper function, so
FMA-heavy code (MKL's and oneDNN's AVX2 kernels, ATen's AVX2 vector code,
glibc's FMA ``exp``) runs ~300x slower than natively against ~40x for the
rest: a 28x28 ``eager`` call took 26 s in valgrind. The count process tells
MKL, oneDNN, ATen and glibc to use their SSE4.2/AVX code paths (``eager`` fwd
at 28x28: 2 s a call). The counts are of that code, not of the AVX2/AVX-512
code the timings run: a change's extra work shows in both, and the counts no
longer depend on which vector units the CI machine has.
Settings for repeatability: one thread, fixed seeds, ``PYTHONHASHSEED=0``.
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

CALLS_PER_CASE = 1
WARM_UP_CALLS = 1
# Environment of the count processes: the libraries' code paths without FMA and AVX2 (see the module's docstring).
PORTABLE_ISA = {
    "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
    "DNNL_MAX_CPU_ISA": "AVX",  # oneDNN's AVX kernels (no FMA): 5x faster in valgrind than its SSE4.1 ones
    "ATEN_CPU_CAPABILITY": "default",
    "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2,-FMA,-FMA4",
    # This repository's own C++ kernels (cmgm_bench_impls/builders/kernels.py) would pick their widest target from
    # /proc/cpuinfo, which valgrind does not hide: AVX-512 code dies with SIGILL in valgrind 3.19.
    "CMGM_FUSED_TARGET": "portable",
}
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


def describe() -> dict:
    """How counts are made, for the run's metadata: valgrind's version, calls, the code path counted."""
    version = subprocess.run([require_valgrind(), "--version"], capture_output=True, text=True).stdout.strip()
    return {"valgrind": version, "calls_per_case": CALLS_PER_CASE, "warm_up_calls": WARM_UP_CALLS, "environment": dict(PORTABLE_ISA)}


def count(cases: list[Case], seed: int, impl_files: list[str], timeout_s: float = 3600, *, switch: bool = True,
          processes: int | None = None) -> list[int | None]:
    """Instructions per call of each case, in order (``None`` for a case that failed to run).

    ``switch=False`` instruments from the start (the way to check that the switch changes no count).
    ``processes``: valgrind processes at once (default: two where there are two CPUs); case ``i``
    goes to process ``i mod processes``, so the same list is always split the same way.
    """
    valgrind = require_valgrind()
    if not cases:
        return []
    processes = max(1, min(processes or min(2, os.cpu_count() or 1), len(cases)))
    with tempfile.TemporaryDirectory(prefix="cmgm-callgrind-") as tmp:
        library = build_switch(Path(tmp)) if switch else None
        running = []
        try:
            for index in range(processes):
                running.append(_start(valgrind, Path(tmp) / f"p{index}", cases[index::processes], seed, impl_files, library))
            counted = [_finish(*started, timeout_s) for started in running]
        finally:  # a failed or interrupted count leaves no valgrind behind
            for proc, _, _ in running:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    merged: list[int | None] = [None] * len(cases)
    for index, group_counts in enumerate(counted):
        merged[index::processes] = group_counts
    return merged


def _start(valgrind: str, folder: Path, cases: list[Case], seed: int, impl_files: list[str], library: Path | None):
    folder.mkdir()
    spec, result = folder / "spec.json", folder / "result.json"
    spec.write_text(json.dumps({"cases": [c.as_dict() for c in cases], "seed": seed, "impl_files": impl_files,
                                "switch": None if library is None else str(library)}))
    command = [
        valgrind, "--tool=callgrind", "--collect-atstart=no", f"--instr-atstart={'no' if library else 'yes'}",
        f"--callgrind-out-file={folder}/callgrind.out", sys.executable, "-m", "cmgm_bench.measure.instructions", str(spec), str(result),
    ]
    env = {**os.environ, **PORTABLE_ISA, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    # stderr to a file, not a pipe: a pipe nobody reads while the other process is awaited could fill and stall it
    with open(folder / "stderr.txt", "w") as stderr:
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    return proc, folder, result


def _finish(proc: subprocess.Popen, folder: Path, result: Path, timeout_s: float) -> list[int | None]:
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise RuntimeError(f"callgrind run timed out after {timeout_s:g} s") from None
    if proc.returncode != 0 or not result.exists():
        stderr = (folder / "stderr.txt").read_text(errors="replace")
        own = [line for line in stderr.strip().splitlines() if not line.startswith("==")]  # not valgrind's summary
        tail = own[-1:] or ["no output"]
        raise RuntimeError(f"callgrind run failed ({proc.returncode}): {tail[0]}")
    dumps = json.loads(result.read_text())
    return [None if dump is None else _totals(folder / f"callgrind.out.{dump}") // CALLS_PER_CASE for dump in dumps]


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
                for _ in range(WARM_UP_CALLS):
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
