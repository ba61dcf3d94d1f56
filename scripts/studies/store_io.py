"""Time of writing a synthetic sweep through ``RunWriter``: this revision's store against another's.

Loads ``cmgm_bench/store.py`` of ``--before-rev`` from git beside the current
one and appends the same synthetic records (200 samples a case) through both,
in one process, for each count of cases.

    python scripts/studies/store_io.py --before-rev f909056 --cases 250,1000
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cmgm_bench.results import store as current
from cmgm_bench.config.cases import Case

ROOT = Path(__file__).resolve().parents[2]


def store_at(revision: str, folder: Path):
    for where in ("cmgm_bench/results/store.py", "cmgm_bench/store.py"):  # the store moved into results/ at one point
        shown = subprocess.run(["git", "show", f"{revision}:{where}"], capture_output=True, text=True, cwd=ROOT)
        if shown.returncode == 0:
            break
    else:
        raise SystemExit(f"{revision} has no results/store.py or store.py")
    source = shown.stdout
    path = folder / "store_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("store_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["store_before"] = module
    spec.loader.exec_module(module)
    return module


def write_sweep(module, folder: Path, count: int) -> float:
    started = time.perf_counter()
    writer = module.RunWriter(folder, {"environment": {"cpu_model": "synthetic"}})
    for index in range(count):
        row = {**Case("eager", "cpu", "float32", "fwd", index + 1, 7, 5, 2, 16).as_dict(), "tokens": 35, "status": "ok", "latency_ms": 1.0}
        record = {"row": row, "samples_s": [0.001] * 200, "notes": {"phase_s": {"sampling": 1.0}}, "traceback": None}
        writer.append(module.from_record(record) if hasattr(module, "from_record") else record)
    if hasattr(writer, "finish"):
        writer.finish()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before-rev", required=True, help="git revision whose store.py is the 'before'")
    parser.add_argument("--cases", default="250,1000")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        before = store_at(args.before_rev, scratch)
        for count in (int(part) for part in args.cases.split(",")):
            for label, module in ((args.before_rev, before), ("this revision", current)):
                seconds = write_sweep(module, scratch / f"{label}-{count}".replace(" ", "_"), count)
                print(f"{label}: {count} cases, {seconds:.2f} s", flush=True)


if __name__ == "__main__":
    main()
