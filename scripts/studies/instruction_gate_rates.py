"""False alarms and detections of the instruction-count gate at PGNet's shape, across processes.

Each trial is one ``instructions.count`` call (its own valgrind processes, as a
base run and a head run are) of four cases: ``eager`` fwd and feature, and the
plug-in ``eager-plus`` in both modes, which adds one element-wise pass over a
tensor sized to ~1.5 % of eager's instructions (``--extra-fwd`` /
``--extra-feature`` elements). The first trial's eager counts are the base:
every later trial's eager is an A/A comparison, every trial's eager-plus a
slowed one, judged by ``compare``'s instruction verdict at its default 1 %
threshold. Prints the verdict counts, the ratios and the wall time per trial.

Usage: python scripts/studies/instruction_gate_rates.py [--trials 11] [--res 28]
"""

from __future__ import annotations

import argparse
import tempfile
import textwrap
import time
from pathlib import Path

from cmgm_bench.analysis.compare import DEFAULT_THRESHOLDS
from cmgm_bench.config.cases import Case
from cmgm_bench.measure import instructions
from cmgm_bench.stats import verdict

PLUGIN = textwrap.dedent(
    """
    import torch
    from cmgm_bench.registry import register

    EXTRA = {{"fwd": {fwd}, "feature": {feature}}}

    @register("eager-plus", description="eager plus one element-wise pass over EXTRA[mode] floats", modes=("fwd", "feature"))
    def build(module, case):
        extra = torch.rand(EXTRA[case.mode], generator=torch.Generator().manual_seed(1))

        def forward(x, y):
            extra.add_(1.0)
            return module(x, y, attn_map=case.mode != "feature")
        return forward
    """
)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=11)
    parser.add_argument("--res", type=int, default=28)
    parser.add_argument("--extra-fwd", type=int, default=3_300_000)
    parser.add_argument("--extra-feature", type=int, default=2_000_000)
    args = parser.parse_args()
    threshold = DEFAULT_THRESHOLDS["instructions"]
    with tempfile.TemporaryDirectory() as tmp:
        plugin = Path(tmp) / "plus.py"
        plugin.write_text(PLUGIN.format(fwd=args.extra_fwd, feature=args.extra_feature))
        cases = [Case(impl, "cpu", "float32", mode, 1, args.res, args.res, 8, 64)
                 for impl in ("eager", "eager-plus") for mode in ("fwd", "feature")]
        trials, seconds = [], []
        for _ in range(args.trials):
            started = time.perf_counter()
            trials.append(dict(zip([(c.impl, c.mode) for c in cases], instructions.count(cases, 0, [str(plugin)]))))
            seconds.append(time.perf_counter() - started)
    for mode in ("fwd", "feature"):
        base = trials[0][("eager", mode)]
        for label, impl, compared in (("A/A", "eager", trials[1:]), ("+extra", "eager-plus", trials)):
            ratios = [trial[(impl, mode)] / base for trial in compared]
            if not ratios:
                continue
            verdicts = [verdict(r, r, r, threshold) for r in ratios]
            print(f"{mode} {label}: slower {verdicts.count('slower')}/{len(ratios)}, same {verdicts.count('same')}, "
                  f"faster {verdicts.count('faster')}; ratios {min(ratios):.5f}-{max(ratios):.5f}")
    print(f"wall per trial (4 cases, two valgrind processes): {min(seconds):.1f}-{max(seconds):.1f} s")


if __name__ == "__main__":
    main()
