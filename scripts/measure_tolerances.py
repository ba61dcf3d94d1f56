"""Measure each implementation's worst relative error per compute dtype over many shapes.

Used to choose the tolerances in cmgm_bench/measure/accuracy.py; the output table is in
docs/performance.md#tolerances. Usage: python scripts/measure_tolerances.py [--impl NAME ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import random

import pandas as pd

from cmgm_bench import registry
from cmgm_bench.config.cases import Case
from cmgm_bench.config.run_config import RunConfig
from cmgm_bench.measure.case_runner import CaseRunner
from cmgm_bench.stats import StopRule
from cmgm_bench.results.store import to_row


def shapes(count: int, seed: int):
    rng = random.Random(seed)
    out = [(1, 64, 8, 28, 28), (2, 64, 8, 11, 11)]
    while len(out) < count:
        heads = rng.choice([1, 2, 4, 8, 16])
        dim = rng.choice([d for d in (32, 64, 96) if d % heads == 0])
        out.append((rng.choice([1, 2]), dim, heads, rng.randint(3, 20), rng.randint(3, 20)))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--impl", action="append")
    parser.add_argument("--shapes", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    config = RunConfig.build(memory=False)  # loads the registered implementations
    impls = args.impl or list(registry.all_implementations())
    runner = CaseRunner(dataclasses.replace(config, stop_rule=StopRule(min_samples=1, max_time_s=0.0, floor_samples=1)))
    rows = []
    for batch, dim, heads, height, width in shapes(args.shapes, args.seed):
        for name in impls:
            impl = registry.get(name)
            for mode in impl.modes:
                measured = runner.run(Case(name, "cpu", impl.dtype, mode, batch, height, width, heads, dim))
                if measured.timed:
                    rows.append(to_row(measured))
                else:
                    print(name, mode, measured.status, measured.error)
    frame = pd.DataFrame(rows)
    cols = ["out_rel_err", "attn_rel_err", "grad_rel_err"]
    print(frame.groupby(["dtype", "impl", "mode"])[cols].max().to_string(float_format="%.2e"))


if __name__ == "__main__":
    main()
