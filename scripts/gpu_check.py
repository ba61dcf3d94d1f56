"""The one GPU check: every step a lent GPU should run, in order of value, inside a hard time budget.

Run through ``scripts/gpu_check.sh`` (which installs what the device lacks first):

    CMGM_BENCH_GIT_COMMIT=<sha> scripts/gpu_check.sh [--out DIR] [--budget SECONDS]

Steps: the environment; a timing probe (``scripts/gpu_timing_probe.py``); the GPU tests
(``compile-max`` and ``aot-inductor`` builds last, in a step of their own at the end); the
sweep (B=8 and 1 at 28x28, every implementation and mode, then B=8 at 48 and 64); eager train
B=8 48x48 with and without ``--cudnn-benchmark``; where the train-mode map's float32 error comes
from at that shape (``scripts/gpu_map_batchnorm_precision.py``); cold against warm cache on a GPU-bound case
(B=8 64x64 fwd); an ``ab`` race; then sanity checks on every run it made. Each step gets at
most its share of what is left of the budget, in proportion to the allowances of the steps not
yet run (default budget 480 s, inside the device's 10-minute limit for a command): time a step
leaves unspent goes to the steps after it. A step that runs out is stopped with SIGINT (a run
keeps its finished cases) and a step with under 5 s left is skipped. The results go to
``results/gpu/<gpu-slug>/`` as they are made: ``steps.md`` (the phase table, rewritten after
every step), one log per step, the run folders, ``probe.json``, ``map_precision.json``, ``sanity.md``, ``summary.md``;
a timeout still leaves evidence. Exit 0 only if every step and every sanity check passed.

``GPU_CHECK_DRY_RUN=1`` (or ``--dry-run``) runs the same steps on the CPU with tiny shapes into
``results/gpu/dry-run-cpu/`` (or ``--out``): the test suite runs it, so that a check on a GPU
machine lent for a few minutes does not die on a typo.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BUDGET_S = 480.0
SANITY_RESERVE_S = 15.0  # kept back from the steps for the sanity checks and the summary
MIN_STEP_S = 5.0
STOP_GRACE_S = 20.0  # after SIGINT, before SIGKILL


@dataclass
class Step:
    name: str
    allowance_s: float
    commands: list[list[str]]  # run one after another; the step fails at the first that fails
    status: str = "not run"
    seconds: float = 0.0


@dataclass
class Shapes:
    """The check's shapes and options: the real ones on a GPU, tiny ones in the CPU dry run."""

    device: str
    headline: list[str]
    large: list[str]
    train: list[str]
    cold: list[str]
    ab: list[str]
    timing: list[str]
    map_precision: list[str]
    extra_train: list[str] = field(default_factory=list)


def shapes(dry_run: bool) -> Shapes:
    if dry_run:
        tiny = ["--impl", "eager,sdpa", "--heads", "2", "--dim", "8"]
        return Shapes(
            "cpu", [*tiny, "--mode", "fwd,feature", "--batch", "2,1", "--res", "6"], [*tiny, "--mode", "fwd", "--batch", "2", "--res", "8"],
            ["--impl", "eager", "--mode", "train", "--batch", "2", "--res", "8", "--heads", "2", "--dim", "8"],
            ["--impl", "eager,sdpa", "--heads", "2", "--dim", "32", "--mode", "fwd", "--batch", "2", "--res", "16"], ["--res",
                "6", "--heads", "2", "--dim", "8", "--max-time", "0.3", "--min-pairs", "4"],
            ["--max-time", "0.05", "--min-samples", "3", "--no-report"],  # the flow and its checks, not the plots
            ["--batch", "2", "--res", "8", "--heads", "2", "--dim", "8"],
        )
    return Shapes(
        "cuda", ["--mode", "fwd,feature,train", "--batch", "8,1", "--res", "28", "--heads", "8"],
        ["--mode", "fwd,feature,train", "--batch", "8", "--res", "48,64", "--heads", "8"],
        ["--impl", "eager", "--mode", "train", "--batch", "8", "--res", "48", "--heads", "8"],
        ["--impl", "eager,sdpa", "--mode", "fwd", "--batch", "8", "--res", "64", "--heads", "8"],
        ["--mode", "fwd", "--batch", "8", "--res", "28", "--max-time", "5"],
        ["--max-time", "0.3", "--min-samples", "10", "--timeout", "60"],
        ["--batch", "8", "--res", "48", "--heads", "8", "--dim", "64"], ["--cudnn-benchmark"],
    )


def plan(out: Path, dry_run: bool) -> list[Step]:
    s = shapes(dry_run)
    py = sys.executable
    bench = [py, "-m", "cmgm_bench"]
    device = ["--device", s.device]

    def run(folder: str, *options: str) -> list[str]:
        return [*bench, "run", *device, *options, *s.timing, "--out", str(out / folder)]

    tests = [py, "-m", "pytest", "-q", "-p", "no:randomly", "-o", "addopts=-ra --benchmark-disable", "tests/test_cuda_paths.py",
             "-m", "cuda"]
    return [
        Step("environment", 15, [[py, __file__, "environment", str(out / "environment.json"), "--device", s.device]]),
        Step("timing probe", 45, [[py, str(ROOT / "scripts" / "gpu_timing_probe.py"), str(out / "probe.json"), "--device", s.device]]),
        Step("gpu tests", 100, [[*tests, "-k", "not aot and not compile"]]),
        Step("sweep 28x28", 110, [run("sweep-28", *s.headline)]),
        Step("sweep 48, 64", 60, [run("sweep-large", *s.large)]),
        Step("eager train, cudnn.benchmark off and on", 40,
             [run("train-default", *s.train), run("train-cudnn-benchmark", *s.train, *s.extra_train)]),
        Step("map precision in train mode", 20, [[py, str(ROOT / "scripts" / "gpu_map_batchnorm_precision.py"),
                                                  str(out / "map_precision.json"), "--device", s.device, *s.map_precision]]),
        Step("cold against warm cache", 30, [run("cold", *s.cold, "--cold-cache"), run("warm", *s.cold)]),
        Step("ab", 25, [[*bench, "ab", "eager", "sdpa", *device, *s.ab, "--format", "json"]]),
        Step("gpu tests: compile and aot-inductor", 45, [[*tests, "-k", "aot or compile"]]),
    ]


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def run_step(step: Step, limit_s: float, log: Path) -> None:
    """Run the step's commands with output to ``log`` (and its tail printed), stopped at ``limit_s``."""
    started = time.monotonic()
    with log.open("w") as stream:
        for command in step.commands:
            stream.write(f"$ {' '.join(command)}\n")
            stream.flush()
            left = limit_s - (time.monotonic() - started)
            child = subprocess.Popen(command, cwd=ROOT, stdout=stream, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                code = child.wait(timeout=max(left, 0.1))
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGINT)  # a run saves its finished cases on SIGINT
                try:
                    child.wait(timeout=STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    os.killpg(child.pid, signal.SIGKILL)
                    child.wait()
                step.status = f"timed out after {limit_s:.0f} s"
                break
            if code != 0:
                step.status = f"failed (exit {code})"
                break
        else:
            step.status = "ok"
    step.seconds = time.monotonic() - started
    print("".join(log.read_text().splitlines(keepends=True)[-12:]), flush=True)


def write_steps(out: Path, steps: list[Step], budget_s: float) -> None:
    lines = [f"# GPU check steps (budget {budget_s:.0f} s)", "", "| step | status | seconds | allowance |", "| --- | --- | ---: | ---: |"]
    lines += [f"| {s.name} | {s.status} | {s.seconds:.1f} | {s.allowance_s:.0f} |" for s in steps]
    (out / "steps.md").write_text("\n".join(lines) + "\n")
    (out / "steps.json").write_text(json.dumps([asdict(s) for s in steps], indent=1))


def step_limit(remaining: list[Step], left_s: float) -> float:
    """The first remaining step's share of what is left, in proportion to the allowances.

    A step that finishes early leaves its time to the steps after it, each in proportion to its
    allowance; a step that runs over its allowance (it is stopped at this limit) takes from them."""
    return min(left_s, left_s * remaining[0].allowance_s / sum(s.allowance_s for s in remaining))


def run_all(out: Path, dry_run: bool, budget_s: float) -> int:
    steps = plan(out, dry_run)
    started = time.monotonic()
    for index, step in enumerate(steps):
        left = budget_s - SANITY_RESERVE_S - (time.monotonic() - started)
        limit = step_limit(steps[index:], left)
        print(f"\n== {step.name} ({time.monotonic() - started:.0f} s of {budget_s:.0f}; limit {max(limit, 0):.0f} s)", flush=True)
        if limit < MIN_STEP_S:
            step.status = "skipped: the budget is spent"
        else:
            run_step(step, limit, out / f"{slug(step.name)}.log")
        write_steps(out, steps, budget_s)
    problems = sanity(out, "cpu" if dry_run else "cuda")
    (out / "sanity.md").write_text("# Sanity checks\n\n" + ("\n".join(f"- {p}" for p in problems) if problems else "All passed.") + "\n")
    (out / "summary.md").write_text(summary(out))
    print((out / "steps.md").read_text() + "\n" + (out / "sanity.md").read_text() + "\n" + (out / "summary.md").read_text())
    return 0 if all(s.status == "ok" for s in steps) and not problems else 1


def sanity(out: Path, device: str) -> list[str]:
    """What makes the check's numbers untrustworthy, one line each; empty when all is well."""
    from cmgm_bench.results.store import load_run

    problems = []
    runs = sorted(p.parent for p in out.glob("*/run.json"))
    if not runs:
        return ["no run finished a single case"]
    for folder in runs:
        run = load_run(folder)
        environment, settings = run.meta.environment, run.meta.settings
        if not environment.get("git_commit"):
            problems.append(f"{folder.name}: no commit recorded (set CMGM_BENCH_GIT_COMMIT where the tree has no .git)")
        recorded = environment.get("tf32_matmul")
        if device == "cuda" and recorded is not None and bool(recorded) != bool(settings.get("tf32")):
            problems.append(f"{folder.name}: TF32 matmul {environment['tf32_matmul']} while the run asked {settings.get('tf32')}")
        for m in run.measurements:
            if not m.timed:
                continue
            where = f"{folder.name}: {m.case.impl} {m.case.mode} {m.case.shape_label}"
            clock = m.notes.get("clock")
            if clock != ("cuda_event" if device == "cuda" else "perf_counter"):
                problems.append(f"{where}: timed with {clock}")
            if device == "cuda" and m.latency.median < 1e-3 and not m.notes.get("cold_cache") and m.notes.get("calls_per_sample", 1) <= 1:
                problems.append(f"{where}: a {1e3 * m.latency.median:.3f} ms call timed one call per sample")
            # on the CPU memory is read in pages: a call of a few KiB may honestly read 0
            if (device == "cuda" or (m.est_mem_mb or 0) >= 1) and not (m.resident_mb or 0) + (m.peak_mem_mb or 0) > 0:
                problems.append(f"{where}: resident + peak memory read 0")
            if "tf32=" in (m.variant or "") and f"tf32={int(bool(settings.get('tf32')))}" not in m.variant:
                problems.append(f"{where}: {m.variant} while the run asked tf32={settings.get('tf32')}")
    return problems


def summary(out: Path) -> str:
    """The headline numbers: the 28x28 sweep's B=8 cases, the cold/warm pair, the train pair."""
    from cmgm_bench.results.store import load_run

    lines = ["# Summary", ""]
    for folder in ("sweep-28", "sweep-large", "train-default", "train-cudnn-benchmark", "cold", "warm"):
        if not (out / folder / "run.json").exists():
            lines.append(f"- {folder}: no run")
            continue
        lines += [f"## {folder}", "", "| impl | mode | shape | status | median ms | calls/sample | resident MB | peak MB |",
                  "| --- | --- | --- | --- | ---: | ---: | ---: | ---: |"]
        for m in load_run(out / folder).measurements:
            median = f"{1e3 * m.latency.median:.4g}" if m.timed else "-"
            lines.append(f"| {m.case.impl} | {m.case.mode} | {m.case.shape_label} | {m.status.value} | {median} | "
                         f"{m.notes.get('calls_per_sample', '-')} | {_mb(m.resident_mb)} | {_mb(m.peak_mem_mb)} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def _mb(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def environment(path: Path, device: str) -> None:
    import torch

    from cmgm_bench.machine import env

    described = env.collect(device)
    if device == "cuda":
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.total",
                              "--format=csv"], capture_output=True, text=True)
        described["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    described["torch_cuda_available"] = torch.cuda.is_available()
    path.write_text(json.dumps(described, indent=1, default=str))
    print(json.dumps({k: described.get(k) for k in ("git_commit", "torch_version", "gpu_name", "cuda_version", "cpu_model")}))
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device visible to PyTorch")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    env_parser = sub.add_parser("environment", help="write the environment of this process as JSON (a step)")
    env_parser.add_argument("path", type=Path)
    env_parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, help="results folder (default results/gpu/<gpu-slug>/)")
    parser.add_argument("--budget", type=float, default=float(os.environ.get("GPU_CHECK_BUDGET_S", DEFAULT_BUDGET_S)))
    parser.add_argument("--dry-run", action="store_true", default=os.environ.get("GPU_CHECK_DRY_RUN") == "1",
                        help="the same steps on the CPU with tiny shapes")
    args = parser.parse_args()
    if args.command == "environment":
        environment(args.path, args.device)
        return
    if args.dry_run:
        name = "dry-run-cpu"
    else:
        import torch

        if not torch.cuda.is_available():
            sys.exit("error: no CUDA device visible to PyTorch (GPU_CHECK_DRY_RUN=1 runs the steps on the CPU)")
        name = slug(torch.cuda.get_device_name())
    out = args.out or ROOT / "results" / "gpu" / name
    if out.exists() and any(out.iterdir()):
        print(f"error: {out} is not empty; give --out a fresh folder", file=sys.stderr)
        sys.exit(2)
    out.mkdir(parents=True, exist_ok=True)
    sys.exit(run_all(out, args.dry_run, args.budget))


if __name__ == "__main__":
    main()
