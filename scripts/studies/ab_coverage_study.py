"""Coverage and verdicts of `ab`'s 95 % interval in real races on this machine.

Per grid (``--res``, one thread): ``--races`` A/A races of eager against eager
and as many of eager against ``eager-plus10`` (eager plus ``--extra-convs``
more ``conv2`` calls: its extra instructions are counted once with callgrind
and printed). An A/A
interval covers when it holds 1; a slowed one when it holds the slowdown's
ratio, estimated as the median ratio of all of that grid's slowed races
(the wall-time cost of the extra work is not known in advance). A
wrong-direction verdict is ``faster`` on the slowed variant or any direction
on A/A (``same`` and ``inconclusive`` are right there). With
``--until-decided`` each race stops at its first deciding look; the stopping
times are printed.

Usage: python scripts/studies/ab_coverage_study.py [--res 11,28] [--races 25] [--seconds 4,10] [--until-decided] [--extra-convs 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import textwrap
from pathlib import Path

import torch

from cmgm_bench import registry
from cmgm_bench.config.cases import Case
from cmgm_bench.config.race_config import RaceConfig
from cmgm_bench.execution.paired import race
from cmgm_bench.measure import instructions

VARIANT = textwrap.dedent(
    """
    from cmgm_bench.registry import register

    @register("eager-plus10", description="eager plus conv2 {convs} more time(s)", modes=("fwd",))
    def build(module, case):
        def forward(x, y):
            out, attn_map = module(x, y)
            extra = out
            for _ in range({convs}):
                extra = module.conv2(extra)
            return out + 0 * extra, attn_map
        return forward
    """
)


def study(res: int, races: int, seconds: float, until_decided: bool, threshold: float) -> None:
    base = Case("eager", "cpu", "float32", "fwd", 1, res, res, 8, 64)
    plus = Case("eager-plus10", *base.key[1:])
    for label, cand in (("A/A", base), ("slowed", plus)):
        results = [race(base, cand, RaceConfig(max_time=seconds, threshold=threshold, until_decided=until_decided)) for _ in range(races)]
        truth = 1.0 if cand is base else statistics.median(r.ratio for r in results)
        covered = sum(r.low <= truth <= r.high for r in results)
        verdicts = {v: sum(r.verdict == v for r in results) for v in ("slower", "faster", "same", "inconclusive")}
        wrong = verdicts["faster"] + (verdicts["slower"] if cand is base else 0)
        widths = sorted(r.high / r.low - 1 for r in results)
        stops = sorted(r.seconds for r in results)
        print(f"{res}x{res} {label}: truth {truth:.4f}; covered {covered}/{races}; verdicts {verdicts}; wrong direction {wrong}; "
              f"median width {100 * widths[len(widths) // 2]:.1f} %; seconds median {stops[len(stops) // 2]:.1f}, "
              f"90th pct {stops[int(0.9 * (len(stops) - 1))]:.1f}, max {stops[-1]:.1f}; "
              f"ratios {min(r.ratio for r in results):.3f}-{max(r.ratio for r in results):.3f}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--res", default="11,28")
    parser.add_argument("--races", type=int, default=25)
    parser.add_argument("--seconds", default="4,10", help="per grid: each race's length (the limit with --until-decided)")
    parser.add_argument("--threshold", type=float, default=0.05)
    parser.add_argument("--until-decided", action="store_true")
    parser.add_argument("--extra-convs", type=int, default=1, help=(
        "conv2 calls the slowed variant adds (1: ~33 %% more instructions at 11x11, 3.4 %% at 28x28)"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    grids = [int(r) for r in args.res.split(",")]
    seconds = [float(s) for s in args.seconds.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        variant = Path(tmp) / "variant.py"
        variant.write_text(VARIANT.format(convs=args.extra_convs))
        registry.load_file(str(variant))
        cases = [Case(impl, "cpu", "float32", "fwd", 1, r, r, 8, 64) for r in grids for impl in ("eager", "eager-plus10")]
        counts = instructions.count(cases, 0, [str(variant)])
        for index, r in enumerate(grids):
            print(f"{r}x{r}: eager-plus10 has {100 * (counts[2 * index + 1] / counts[2 * index] - 1):.2f} % more instructions", flush=True)
        for r, s in zip(grids, seconds):
            study(r, args.races, s, args.until_decided, args.threshold)


if __name__ == "__main__":
    main()
