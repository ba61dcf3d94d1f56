"""Does ``run --allocator system`` give what a user's own program gets?

Alternates, ``--pairs`` times in a rotating order, two fresh processes on the same case
(eager fwd, B=1, 64 channels, 8 heads, ``--res``, 1 thread, the harness's seeded module
and inputs):

* ``cmgm-bench run --allocator system`` (its cases then run in a child process as a
  plain Python process has glibc), read from its ``results.csv``;
* a plain ``python`` process that times the same module with
  ``torch.utils.benchmark.Timer.blocked_autorange`` (no allocator settings at all).

Prints each pair's ratio (tool / plain) and their median, for the tool's median per
call (its ``latency_ms``) and for its mean per call, which is what a block of
``blocked_autorange`` measures (a block's time over its calls; the median is taken over
blocks). With ``--allocator pinned`` the tool's default is measured instead, to show how
far the tuned allocator is from a plain process.

Usage: python scripts/studies/allocator_vs_plain_process.py [--pairs 4] [--res 28] [--allocator system] [--seconds 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

PLAIN = """
import json, sys
import torch
from torch.utils.benchmark import Timer
from cmgm_bench.workload.reference import make_inputs, reference_module

res, seconds = int(sys.argv[1]), float(sys.argv[2])
torch.set_num_threads(1)
module = reference_module(64, 8, 0, res, res).eval()
x, y = make_inputs(1, 64, res, res, 0)
with torch.inference_mode():
    measurement = Timer("module(x, y)", globals={"module": module, "x": x, "y": y}, num_threads=1).blocked_autorange(min_run_time=seconds)
print(json.dumps({"median_ms": measurement.median * 1e3}))
"""


def tool_ms(res: int, allocator: str, seconds: float) -> tuple[float, float]:
    """The tool's median and mean milliseconds per call."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "run"
        subprocess.run([sys.executable, "-m", "cmgm_bench", "run", "--impl", "eager", "--res", str(res), "--threads", "1",
                        "--allocator", allocator, "--max-time", str(seconds), "--no-report", "--no-memory", "--out", str(out)],
                       check=True, capture_output=True, text=True)
        (case,) = json.loads((out / "results.json").read_text())["cases"]
        return float(pd.read_csv(out / "results.csv").latency_ms.iloc[0]), 1e3 * statistics.mean(case["samples_s"])


def plain_ms(res: int, seconds: float) -> float:
    out = subprocess.run([sys.executable, "-c", PLAIN, str(res), str(seconds)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["median_ms"]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--res", type=int, default=28)
    parser.add_argument("--allocator", default="system")
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    medians, means = [], []
    for index in range(args.pairs):
        if index % 2 == 0:
            (tool, tool_mean), plain = tool_ms(args.res, args.allocator, args.seconds), plain_ms(args.res, args.seconds)
        else:
            plain, (tool, tool_mean) = plain_ms(args.res, args.seconds), tool_ms(args.res, args.allocator, args.seconds)
        medians.append(tool / plain)
        means.append(tool_mean / plain)
        print(f"pair {index + 1}: cmgm-bench --allocator {args.allocator} median {tool:.2f} ms, mean {tool_mean:.2f} ms; "
              f"plain process {plain:.2f} ms; ratios {medians[-1]:.3f}, {means[-1]:.3f}", flush=True)
    print(f"eager fwd {args.res}x{args.res}, 1 thread, {args.pairs} alternating pairs, cmgm-bench / torch.utils.benchmark in a "
          f"plain process: median per call {statistics.median(medians):.3f}, mean per call {statistics.median(means):.3f}")


if __name__ == "__main__":
    main()
