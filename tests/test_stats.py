"""Statistics on synthetic samples: summaries, the adaptive stop, bootstrap intervals and verdicts."""

import numpy as np
import pytest

from cmgm_bench.stats import (
    StopRule,
    blocked_median_interval,
    bootstrap_ratio_of_medians,
    paired_ratios,
    geometric_mean,
    summarize,
    verdict,
)


def test_summary_of_known_samples():
    s = summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert s.median == 3.0
    assert s.iqr == pytest.approx(2.0)  # 4 - 2 with linear interpolation
    assert s.minimum == 1.0 and s.count == 5
    assert s.rel_iqr == pytest.approx(2 / 3)


def test_summary_rejects_empty():
    with pytest.raises(ValueError):
        summarize([])


def test_stop_rule_waits_for_min_samples_and_time():
    rule = StopRule(min_samples=10, min_time_s=0.2, max_time_s=2.0, target_rel_iqr=0.05)
    tight = [1.0] * 9
    assert not rule.should_stop(tight, elapsed_s=0.5)  # too few samples
    assert not rule.should_stop(tight + [1.0], elapsed_s=0.1)  # too little time
    assert rule.should_stop(tight + [1.0], elapsed_s=0.3)  # tight and enough


def test_stop_rule_keeps_going_while_noisy_until_budget():
    rule = StopRule(min_samples=10, min_time_s=0.0, max_time_s=2.0, target_rel_iqr=0.05)
    noisy = list(np.random.default_rng(0).uniform(1.0, 2.0, 50))
    assert not rule.should_stop(noisy, elapsed_s=1.0)
    assert rule.should_stop(noisy, elapsed_s=2.0)


def test_stop_rule_floor_and_cap():
    rule = StopRule(min_samples=10, max_time_s=1.0, max_samples=100, floor_samples=3)
    assert not rule.should_stop([5.0, 5.0], elapsed_s=10.0)  # slow calls still get 3 samples
    assert rule.should_stop([5.0, 5.0, 5.0], elapsed_s=10.0)
    assert rule.should_stop(list(np.linspace(1, 3, 100)), elapsed_s=0.0)


def test_geometric_mean_ignores_missing_values():
    assert geometric_mean([2.0, 8.0, float("nan")]) == pytest.approx(4.0)


def test_bootstrap_interval_contains_true_ratio():
    rng = np.random.default_rng(1)
    base = rng.normal(10, 0.5, 200)
    cand = rng.normal(12, 0.6, 200)
    ratio, low, high = bootstrap_ratio_of_medians(base, cand)
    assert low < 1.2 < high
    assert low < ratio < high


def test_blocked_median_interval_of_quiet_ratios():
    ratios = np.random.default_rng(2).normal(1.0, 0.01, 300)
    median, low, high = blocked_median_interval(ratios)
    assert low < 1.0 < high and high - low < 0.01 and low <= median <= high


def simulated_race(rng, true_ratio: float, calls: int) -> np.ndarray:
    """Per-quad ratios of an A B B A race on a machine like ours: Markov fast/slow periods (the slow one
    1.5-3x), lognormal noise (8%), rare 1.5-4x spikes; the candidate does ``true_ratio`` times the work."""
    fast, base, cand = True, [], []
    for index in range(calls):
        times = {}
        for who in (("base", "cand") if index % 2 == 0 else ("cand", "base")):
            if rng.random() < 0.05:
                fast = not fast
            speed = 1.0 if fast else rng.uniform(1.5, 3.0)
            spike = rng.uniform(1.5, 4.0) if rng.random() < 0.03 else 1.0
            times[who] = (true_ratio if who == "cand" else 1.0) * speed * spike * np.exp(rng.normal(0, 0.08))
        base.append(times["base"])
        cand.append(times["cand"])
    return paired_ratios(base, cand)


@pytest.mark.parametrize("true_ratio, calls", [(1.0, 160), (1.1, 160), (1.0, 40), (1.05, 400)])
def test_the_race_interval_keeps_its_95_percent_promise_under_3x_speed_swings(true_ratio, calls):
    """200 seeded races per setting: the interval covers the true ratio at least 95% of the time, and a
    race never gives a wrong-direction verdict (the percentile block bootstrap used before covered 88%)."""
    rng = np.random.default_rng(7)
    covered, wrong = 0, 0
    for _ in range(200):
        ratio, low, high = blocked_median_interval(simulated_race(rng, true_ratio, calls))
        covered += low <= true_ratio <= high
        judged = verdict(ratio, low, high, threshold=0.05)
        wrong += judged == ("faster" if true_ratio >= 1 else "slower")
    assert covered >= 190, covered
    assert wrong == 0


def test_a_ten_percent_slowdown_is_seen_in_a_long_race():
    rng = np.random.default_rng(11)
    verdicts = [verdict(*blocked_median_interval(simulated_race(rng, 1.10, 800)), threshold=0.05) for _ in range(20)]
    assert verdicts.count("slower") >= 15, verdicts


@pytest.mark.parametrize(
    "ratio,low,high,expected",
    [(1.10, 1.06, 1.14, "slower"), (0.90, 0.87, 0.93, "faster"), (1.0, 0.98, 1.02, "same"), (1.06, 0.99, 1.12, "inconclusive"),
     (1.06, 1.01, 1.09, "slower")],
)
def test_verdict_needs_threshold_and_interval(ratio, low, high, expected):
    assert verdict(ratio, low, high, threshold=0.05) == expected


def _trial_verdicts(shift: float, trials: int, noise: float = 0.05, n: int = 40) -> list[str]:
    rng = np.random.default_rng(1234)
    out = []
    for trial in range(trials):
        base = rng.normal(1.0, noise, n)
        cand = rng.normal(1.0 + shift, noise * (1 + shift), n)
        out.append(verdict(*bootstrap_ratio_of_medians(base, cand, resamples=500, seed=trial), threshold=0.05))
    return out


def test_identical_distributions_are_not_called_different():
    verdicts = _trial_verdicts(0.0, 200)
    assert sum(v in ("same", "inconclusive") for v in verdicts) >= 198


def test_ten_percent_slowdown_is_caught():
    verdicts = _trial_verdicts(0.10, 200)
    assert sum(v == "slower" for v in verdicts) >= 190


def test_ten_percent_speedup_is_caught():
    verdicts = _trial_verdicts(-0.10, 200)
    assert sum(v == "faster" for v in verdicts) >= 190


def test_paired_ratios_cancel_a_position_advantage():
    # Identical code, but whichever runs second in a pair is 10% faster.
    base = [1.0 if i % 2 == 0 else 0.9 for i in range(100)]
    cand = [0.9 if i % 2 == 0 else 1.0 for i in range(100)]
    assert np.allclose(paired_ratios(base, cand), 1.0)


def test_a_drifting_series_gets_an_interval_that_spans_both_periods():
    drifting = np.concatenate([np.full(260, 0.97), np.full(140, 1.03)])  # a slow period of the run
    median, low, high = blocked_median_interval(drifting)
    assert low == 0.97 and high == 1.03 and median == 0.97


def race_until_decided(rng, true_ratio: float, looks: int = 5) -> tuple[str, int]:
    """``ab --until-decided`` on a simulated race: look at 40, 80, ... quads, stop at the first decision."""
    from cmgm_bench.stats import FIRST_LOOK_QUADS, interim_look

    ratios = simulated_race(rng, true_ratio, 2 * 2 * FIRST_LOOK_QUADS * 2 ** (looks - 1))
    for look in range(looks):
        quads = FIRST_LOOK_QUADS * 2**look
        _, judged = interim_look(ratios[:quads], look, threshold=0.05)
        if judged != "inconclusive":
            return judged, quads
    return "inconclusive", len(ratios)


@pytest.mark.slow
def test_racing_until_decided_keeps_the_error_rate_and_stops_early_on_a_clear_difference():
    """Looking again and again must not inflate false alarms (the error rate is split over the looks);
    a 10% slowdown is decided long before the limit, A/A at worst runs to it."""
    rng = np.random.default_rng(3)
    same = [race_until_decided(rng, 1.0) for _ in range(100)]
    slower = [race_until_decided(rng, 1.10) for _ in range(100)]
    assert sum(judged in ("slower", "faster") for judged, _ in same) <= 2
    assert sum(judged == "slower" for judged, _ in slower) >= 95
    assert np.median([quads for _, quads in slower]) <= 160  # at the first, second or third look of five
