"""Coverage of compare's interval over replicates (``run --repeats K``) on simulated A/A pairs of runs.

Each replicate's level is lognormal(0, --between) (the machine's slow and fast periods, separate
processes), its samples lognormal(level, 0.05). Prints how often Welch's t interval on the replicates'
log medians (what ``compare`` uses) and a two-level percentile bootstrap (replicates, then samples)
cover the true ratio 1, and their median widths.

    python scripts/studies/replicate_interval_coverage.py --pairs 300
"""

from __future__ import annotations

import argparse

import numpy as np

from cmgm_bench.stats import replicate_ratio_interval


def two_level_bootstrap(rng, base, cand, resamples=500) -> tuple[float, float]:
    def resampled(groups):
        picks = rng.integers(0, len(groups), (resamples, len(groups)))
        medians = np.array([[np.median(rng.choice(groups[i], groups[i].size)) for i in row] for row in picks])
        return np.median(medians, axis=1)

    low, high = np.quantile(resampled(cand) / resampled(base), [0.025, 0.975])
    return float(low), float(high)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    print("| replicates | between-replicate sd | Welch t coverage | median width | two-level bootstrap coverage | median width |")
    print("|---:|---:|---:|---:|---:|---:|")
    for replicates in (3, 5):
        for between in (0.05, 0.2):
            welch, boot = [], []
            for _ in range(args.pairs):
                base, cand = ([rng.lognormal(rng.normal(0, between), 0.05, 60) for _ in range(replicates)] for _ in range(2))
                _, low, high = replicate_ratio_interval(base, cand)
                welch.append((low <= 1 <= high, high / low))
                low, high = two_level_bootstrap(rng, base, cand)
                boot.append((low <= 1 <= high, high / low))
            w, b = np.array(welch), np.array(boot)
            print(f"| {replicates} | {between} | {w[:, 0].mean():.1%} | x{np.median(w[:, 1]):.2f} "
                  f"| {b[:, 0].mean():.1%} | x{np.median(b[:, 1]):.2f} |")


if __name__ == "__main__":
    main()
