"""False-alarm and detection rates of the two CI gates on this machine.

* Paired A/B (`cmgm-bench ab`): TRIALS races of eager against itself and
  TRIALS races of eager against a variant doing ~10% more work, each a
  separate `race` of --seconds; a false alarm is a verdict of "slower" on
  identical code, a detection is "slower" on the variant.
* Instruction counts (`--count-instructions`): one callgrind process collects
  eager TRIALS+1 times and the variant TRIALS times; each collection of eager
  after the first is an identical trial against the first, each collection of
  the variant a slowed trial; judged with the default 1% threshold.

Usage: python scripts/studies/gate_rates.py [--trials 10] [--seconds 3] [--res 11]
"""

from __future__ import annotations

import argparse
import tempfile
import textwrap
from pathlib import Path

import torch

from cmgm_bench import registry

from cmgm_bench.measure import instructions
from cmgm_bench.config.cases import Case
from cmgm_bench.analysis.compare import DEFAULT_THRESHOLDS
from cmgm_bench.config.race_config import RaceConfig
from cmgm_bench.execution.paired import race
from cmgm_bench.stats import verdict

VARIANT = textwrap.dedent(
    """
    from cmgm_bench.registry import register

    @register("eager-plus10", description="eager plus ~10% more work (conv2 once more)", modes=("fwd",))
    def build(module, case):
        def forward(x, y):
            out, attn_map = module(x, y)
            return out + 0 * module.conv2(out), attn_map
        return forward
    """
)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--res", type=int, default=11)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        variant = Path(tmp) / "variant.py"
        variant.write_text(VARIANT)
        registry.load_file(str(variant))
        shape = Case("eager", "cpu", "float32", "fwd", 1, args.res, args.res, 8, 64)
        for label, cand in (("identical", "eager"), ("slowed", "eager-plus10")):
            results = [race(shape, Case(cand, *shape.key[1:]), RaceConfig(max_time=args.seconds)) for _ in range(args.trials)]
            verdicts = [r.verdict for r in results]
            ratios = ", ".join(f"{r.ratio:.3f}" for r in results)
            print(f"paired {label}: {verdicts.count('slower')}/{args.trials} slower; ratios {ratios}")
        plus = Case("eager-plus10", *shape.key[1:])
        counts = instructions.count([shape] * (args.trials + 1) + [plus] * args.trials, seed=0, impl_files=[str(variant)])
        base, same, slowed = counts[0], counts[1 : args.trials + 1], counts[args.trials + 1 :]
        threshold = DEFAULT_THRESHOLDS["instructions"]
        for label, values in (("identical", same), ("slowed", slowed)):
            ratios = [v / base for v in values]
            flagged = sum(verdict(r, r, r, threshold) == "slower" for r in ratios)
            print(f"instructions {label}: {flagged}/{len(values)} slower; ratios {', '.join(f'{r:.4f}' for r in ratios)}")


if __name__ == "__main__":
    main()
