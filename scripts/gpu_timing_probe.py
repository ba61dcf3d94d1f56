"""Check the harness's GPU clock against other clocks and against a kernel of known duration.

Times the same calls four ways: the harness's blocked clock (``measure.timing``: CUDA events around
blocks of at least 1 ms), one synchronised call per sample (what a naive loop times: the host's
launch-and-wait on short calls), ``torch.utils.benchmark.Timer.blocked_autorange`` and
``triton.testing.do_bench``. The calls: eager and cudagraph at B=1 28x28 ``feature`` (the
smallest, most host-bound case of the sweep), and ``torch.cuda._sleep`` spinning for a known
number of GPU cycles, calibrated against the wall clock over a 50 ms sleep, so that its expected
duration is known. Writes a JSON file and prints a table.

    python scripts/gpu_timing_probe.py OUT.json [--device cpu]

With ``--device cpu`` (the GPU check's dry run) the same table is made on the CPU: eager and sdpa
at a tiny shape, a 2 ms ``time.sleep`` as the call of known duration, no Triton, and a tenth of the
sampling time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.utils.benchmark as benchmark

from cmgm_bench import registry
from cmgm_bench.config.cases import Case
from cmgm_bench.machine.process_setup import prepare_process
from cmgm_bench.measure.prepare import prepare_case
from cmgm_bench.measure.timing import calls_per_sample, clock_for, collect_samples, sync, warm_up
from cmgm_bench.stats import StopRule
from cmgm_bench.workload.modes import autograd_context

# (stop rule, the Timer's min_run_time): on the CPU the dry run checks the flow, in a tenth of the GPU's time
_BUDGETS = {"cuda": (StopRule(min_samples=20, min_time_s=0.3, max_time_s=1.0), 0.5),
            "cpu": (StopRule(min_samples=5, min_time_s=0.03, max_time_s=0.1), 0.05)}


def budget(device: str) -> tuple[StopRule, float]:
    return _BUDGETS["cuda" if device.startswith("cuda") else "cpu"]


def harness_ms(fn, device: str) -> tuple[float, int]:
    clock = clock_for(device)
    warm_up(fn, clock)
    calls = calls_per_sample(fn, clock)
    return 1e3 * statistics.median(collect_samples(fn, clock, budget(device)[0], calls=calls)), calls


def one_call_per_sample_ms(fn, device: str) -> float:
    clock = clock_for(device)
    return 1e3 * statistics.median(collect_samples(fn, clock, budget(device)[0], calls=1))


def timer_ms(fn, device: str) -> float:
    def synced():
        fn()
        sync(device)

    timer = benchmark.Timer(stmt="synced()", globals={"synced": synced})
    return 1e3 * timer.blocked_autorange(min_run_time=budget(device)[1]).median


def triton_ms(fn, device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=25, rep=200, return_mode="median"))


def known_duration_call(device: str) -> tuple[object, float]:
    """A call whose duration is known: a GPU spin of a calibrated number of cycles (20 us), or a CPU sleep."""
    if not device.startswith("cuda"):
        return (lambda: time.sleep(2e-3)), 2.0
    calibration_cycles = 100_000_000
    torch.cuda._sleep(1000)
    torch.cuda.synchronize()
    started = time.perf_counter()
    torch.cuda._sleep(calibration_cycles)
    torch.cuda.synchronize()
    cycles_per_s = calibration_cycles / (time.perf_counter() - started)
    target_s = 20e-6
    cycles = int(target_s * cycles_per_s)
    return (lambda: torch.cuda._sleep(cycles)), 1e3 * target_s


def probe(device: str) -> list[dict]:
    prepare_process(None, False, False)
    rows = []
    impls = ("eager", "cudagraph") if device.startswith("cuda") else ("eager", "sdpa")
    shape = (1, 28, 28, 8, 64) if device.startswith("cuda") else (1, 6, 6, 2, 8)
    for name in impls:
        case = Case(name, device, "float32", "feature", *shape)
        prepared = prepare_case(case, registry.get(name), seed=0)
        with autograd_context("feature"):
            rows.append(_row(f"{name} feature {shape[0]}x{shape[1]}x{shape[2]}", prepared.step, device, None))
    fn, expected = known_duration_call(device)
    rows.append(_row("known-duration call", fn, device, expected))
    return rows


def _row(what: str, fn, device: str, expected_ms: float | None) -> dict:
    fn()
    sync(device)
    harness, calls = harness_ms(fn, device)
    return {
        "call": what, "expected_ms": expected_ms, "harness_ms": harness, "harness_calls_per_sample": calls,
        "one_call_per_sample_ms": one_call_per_sample_ms(fn, device), "timer_ms": timer_ms(fn, device),
        "triton_do_bench_ms": triton_ms(fn, device),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    rows = probe(args.device)
    args.out.write_text(json.dumps({"device": args.device, "rows": rows}, indent=1))
    columns = list(rows[0])
    print(" | ".join(columns))
    for row in rows:
        print(" | ".join("-" if row[c] is None else f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c]) for c in columns))


if __name__ == "__main__":
    main()
