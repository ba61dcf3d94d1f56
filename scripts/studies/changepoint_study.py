"""Detection rate and false steps of history's change-point detection on synthetic series.

Noise models of this project's machines (docs/performance.md#history):
  instructions: each point x lognormal(0, 0.001) (0.1 %);
  quiet latency (a dedicated machine): each point x lognormal(0, 0.03);
  latency (this shared host): each point x 2 in a slow period (periods persist: stay probability --stay) x lognormal(0, 0.03).
A 10 % step at the series' middle counts as found when a step with ratio > 1 lies within one commit of it.

    python scripts/studies/changepoint_study.py --series 200 --length 40
"""

from __future__ import annotations

import argparse

import numpy as np

from cmgm_bench.history import changepoints


def noise(rng, kind: str, length: int, stay: float) -> np.ndarray:
    jitter = rng.lognormal(0.0, 0.001 if kind == "instructions" else 0.03, length)
    if kind != "latency":
        return jitter
    slow = np.zeros(length, dtype=bool)
    slow[0] = rng.random() < 0.5
    for i in range(1, length):
        slow[i] = slow[i - 1] if rng.random() < stay else not slow[i - 1]
    return jitter * np.where(slow, 2.0, 1.0)


def study(kind: str, series: int, length: int, step: float, stay: float, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    middle = length // 2
    found = false_steps = 0
    for _ in range(series):
        level = np.where(np.arange(length) >= middle, 1.0 + step, 1.0)
        steps = changepoints.find_steps(100.0 * level * noise(rng, kind, length, stay))
        found += any(abs(s.index - middle) <= 1 and s.ratio > 1 for s in steps)
        false_steps += len(changepoints.find_steps(100.0 * noise(rng, kind, length, stay)))
    return found / series, 100.0 * false_steps / (series * length)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=int, default=200)
    parser.add_argument("--length", type=int, default=40)
    parser.add_argument("--step", type=float, default=0.10)
    parser.add_argument("--stay", type=float, default=0.8, help="probability that a slow or fast period goes on at the next point")
    parser.add_argument("--penalties", default=str(changepoints.PENALTY_PER_LOG_N), help="comma-separated PENALTY_PER_LOG_N values to try")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print("| noise | penalty per log n | 10% step found | false steps per 100 A/A points |")
    print("|---|---:|---:|---:|")
    for penalty in (float(p) for p in args.penalties.split(",")):
        changepoints.PENALTY_PER_LOG_N = penalty
        for kind in ("instructions", "quiet latency", "latency"):
            rate, false = study(kind, args.series, args.length, args.step, args.stay, args.seed)
            print(f"| {kind} | {penalty:g} | {rate:.1%} | {false:.2f} |")


if __name__ == "__main__":
    main()
