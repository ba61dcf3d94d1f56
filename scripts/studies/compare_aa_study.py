"""A/A and known-slowdown compares of separate runs: how often `compare` is confidently wrong.

Runs the same sweep twice per pair, each run a separate process with ``--repeats K``, and judges each
pair four ways: over the replicates (what ``compare`` does for such runs: intervals simultaneous over
the compared cases), over the replicates with a 95 % interval per case, and with the first
replicate of each run alone, as a single-replicate run, both widened by the run-to-run spread (the
default) and not widened (``--run-spread 1``: the within-run interval, ``compare``'s old rule). Then
one pair whose candidate does 6/5 of the base's work (a plug-in that calls the model 6 times a step
instead of 5), which should be ``slower``. Also counts the A/A cases ``compare`` flags as memory
regressions, and times two runs of the sweep with one replicate (the cost of ``--repeats``).

    python scripts/studies/compare_aa_study.py --pairs 10 --repeats 3 --res 28 --max-time 1 [--isolate]
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from cmgm_bench.analysis import compare
from cmgm_bench.analysis.compare import compare_runs
from cmgm_bench.results.store import Run, load_run

WORK = """
from cmgm_bench.registry import register

@register("work", description="the model {calls} times a step", modes=("feature",))
def build(module, case):
    def forward(x, y):
        for _ in range({calls} - 1):
            module(x, y, attn_map=False)
        return module(x, y, attn_map=False)
    return forward
"""


def run(out: Path, args: list[str]) -> tuple[Run, float]:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cmgm_bench", "run", *args, "--no-report", "--out", str(out)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return load_run(out), time.perf_counter() - started


def first_replicate(run: Run) -> Run:
    return Run(run.path, run.meta, [dataclasses.replace(m, samples_s=m.replicate_samples[0], replicate_sizes=None)
                                    for m in run.measurements])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--res", default="28")
    parser.add_argument("--impl", default="eager,sdpa")
    parser.add_argument("--max-time", default="1")
    parser.add_argument("--isolate", action="store_true", help="every replicate of every case in a fresh process (run --isolate)")
    args = parser.parse_args()
    isolate = ["--isolate"] if args.isolate else []
    sweep = ["--impl", args.impl, "--res", args.res, "--mode", "fwd,feature", "--threads", "1", "--max-time", args.max_time, *isolate]
    verdicts = {"replicates (compare)": Counter(), "replicates, 95 % per case": Counter(),
                "one replicate, widened": Counter(), "one replicate, not widened": Counter()}
    seconds, memory_flags, memory_ratios = [], 0, []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        for pair in range(args.pairs):
            (base, t1), (cand, t2) = (run(root / f"{pair}-{side}", [*sweep, "--repeats", str(args.repeats)]) for side in "ab")
            seconds += [t1, t2]
            judged = compare_runs(base, cand).cases
            verdicts["replicates (compare)"].update(c.verdict for c in judged)
            memory_flags += sum(c.memory_regressed for c in judged)
            memory_ratios += [c.memory_ratio for c in judged if c.memory_ratio is not None]
            family = compare.FAMILY_ERROR
            compare.FAMILY_ERROR = 0.05 * len(base.measurements)  # 1 - FAMILY_ERROR / cases = 95 % per case
            verdicts["replicates, 95 % per case"].update(c.verdict for c in compare_runs(base, cand).cases)
            compare.FAMILY_ERROR = family
            single = first_replicate(base), first_replicate(cand)
            verdicts["one replicate, widened"].update(c.verdict for c in compare_runs(*single).cases)
            verdicts["one replicate, not widened"].update(c.verdict for c in compare_runs(*single, run_spread=1.0).cases)
            print(f"pair {pair + 1}: {dict(verdicts['replicates (compare)'])}", file=sys.stderr)
        files = []
        for calls in (5, 6):
            path = root / f"work{calls}.py"
            path.write_text(WORK.format(calls=calls))
            files.append(path)
        slow_sweep = ["--impl", "work", "--res", args.res, "--mode", "feature", "--threads", "1", "--max-time", args.max_time,
                      "--repeats", str(args.repeats), *isolate]
        base, _ = run(root / "work-base", [*slow_sweep, "--impl-file", str(files[0])])
        cand, _ = run(root / "work-cand", [*slow_sweep, "--impl-file", str(files[1])])
        slowdown = compare_runs(base, cand).cases[0]
        single_seconds = [run(root / f"single-{index}", sweep)[1] for index in range(2)]
    cases = len(args.impl.split(",")) * 2
    print(f"{args.pairs} A/A pairs of runs, {cases} cases each, --repeats {args.repeats}; a run took "
          f"{min(seconds):.0f}-{max(seconds):.0f} s (median {sorted(seconds)[len(seconds) // 2]:.0f} s)")
    print("| judged | faster | slower | same | inconclusive | inconclusive (one replicate) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, counts in verdicts.items():
        print(f"| {name} | {counts['faster']} | {counts['slower']} | {counts['same']} | {counts['inconclusive']} | "
              f"{counts['inconclusive (one replicate)']} |")
    print(f"memory: {memory_flags} of {len(memory_ratios)} A/A cases flagged as regressions; peak ratios "
          f"{min(memory_ratios):.3f}-{max(memory_ratios):.3f}")
    print(f"one replicate: a run took {min(single_seconds):.0f}-{max(single_seconds):.0f} s")
    print(f"6/5 of the work, --repeats {args.repeats}: ratio {slowdown.ratio:.3f} [{slowdown.low:.3f}, {slowdown.high:.3f}], "
          f"verdict {slowdown.verdict}")


if __name__ == "__main__":
    main()
