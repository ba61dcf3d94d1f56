"""The ``cmgm-bench`` command line: parse options, call the library, terminal.

Every command reports bad usage as one line on stderr with exit code 2 (see
:func:`main`); a run that finds what it was asked to judge exits 1.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from cmgm_bench import registry
from cmgm_bench.cli_common import ClickUsageError, FormatOption, fail_with_usage_errors
from cmgm_bench.cli_history import history_app
from cmgm_bench.config import settings
from cmgm_bench.config.cases import split_list
from cmgm_bench.config.race_config import GATE_RACE, RaceConfig
from cmgm_bench.config.settings import DEFAULTS, PRESET_HELP
from cmgm_bench.errors import UsageError
from cmgm_bench.measure import contention

# Each command imports the harness (torch, pandas, scipy) when it runs, not when this module loads:
# --help, a bad option and `list` answer without waiting for imports they do not use.

app = typer.Typer(
    help="Benchmark and profile implementations of PGNet's Cross-Model Grafting Module (CMGM).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(history_app, name="history")

ImplOption = Annotated[
    Optional[list[str]],
    typer.Option("--impl", "-i", help=(
        "Implementation(s) to run, repeatable or comma separated; default: every registered one that supports"
        " --device.")),
]
ImplFileOption = Annotated[
    Optional[list[str]],
    typer.Option("--impl-file", help="Python file registering implementations (PATH or NAME=PATH); repeatable."),
]

DeviceOption = Annotated[str, typer.Option(help="cpu, cuda, or auto (cuda when available).")]
BatchOption = Annotated[str, typer.Option(help="Batch sizes, comma separated.")]
ResOption = Annotated[str, typer.Option(help="Token grids: side of a square grid (28) or HxW (32x24), comma separated.")]
HeadsOption = Annotated[str, typer.Option(help="Attention heads, comma separated; each must divide every --dim.")]
DimOption = Annotated[str, typer.Option(help="Channels C of x and y, comma separated.")]
ThreadsOption = Annotated[Optional[int], typer.Option(help="torch intra-op threads (default: torch's choice, recorded).")]
SeedOption = Annotated[int, typer.Option(help="Seed of the weights and inputs.")]


Tf32Option = Annotated[bool, typer.Option(help=(
    "Allow TF32 for float32 matmuls and convolutions on CUDA (refused on the CPU); run records it, and float32 "
    "tolerance becomes the TF32 one."))]
CudnnBenchmarkOption = Annotated[bool, typer.Option(help=(
    "Let cuDNN autotune convolution algorithms (torch.backends.cudnn.benchmark; refused on the CPU); run records it."))]


def _one_case(impl: str, impl_files, device: str, mode: str, batch, res, heads, dim):
    """The single case of ``flops`` and ``profile``, validated as ``run`` validates its cases."""
    from cmgm_bench.config.run_config import single_cases

    cases = single_cases([impl], device=device, mode=mode, batch=batch, res=res, heads=heads, dim=dim, impl_files=impl_files or ())
    if len(cases) != 1:
        raise UsageError("give one case: one --batch, --res, --heads and --dim")
    return cases


def load_impl_files(files: list[str] | None) -> None:
    registry.load_entry_points()
    for spec in files or []:
        registry.load_file(spec)


@app.command("run")
@fail_with_usage_errors
def run_command(
    ctx: typer.Context,
    impl: ImplOption = None,
    impl_file: ImplFileOption = None,
    device: DeviceOption = DEFAULTS["device"],
    mode: Annotated[str, typer.Option(help=(
        "Modes, comma separated: fwd (inference, both outputs), feature (inference, fused feature only), "
        "train (forward+backward)."))] = DEFAULTS["mode"],
    batch: BatchOption = DEFAULTS["batch"],
    res: ResOption = DEFAULTS["res"],
    heads: HeadsOption = DEFAULTS["heads"],
    dim: DimOption = DEFAULTS["dim"],
    allocator: Annotated[str, typer.Option(help=(
        "CPU allocators to time under, comma separated: pinned (default: glibc's mmap threshold pinned, the heap never "
        "trimmed, huge pages for PyTorch's large blocks: steady, fewest page faults), system (glibc as a plain Python "
        "process has it), jemalloc, tcmalloc (preloaded; apt-get install libjemalloc2 libtcmalloc-minimal4). Each one "
        "but pinned runs its cases in a process of its own, without a peak-memory measurement."
    ))] = DEFAULTS["allocator"],
    threads: ThreadsOption = DEFAULTS["threads"],
    seed: SeedOption = DEFAULTS["seed"],
    out: Annotated[Optional[Path], typer.Option(help="Run directory (default results/<UTC time>-<device>/).")] = None,
    max_time: Annotated[float, typer.Option(help="Time budget per case for samples, seconds.")] = DEFAULTS["max_time"],
    min_samples: Annotated[int, typer.Option(help="Samples to take before the adaptive stop may end a case.")] = DEFAULTS["min_samples"],
    target_rel_iqr: Annotated[float, typer.Option(help="Stop a case early once IQR/median is below this.")] = DEFAULTS["target_rel_iqr"],
    repeats: Annotated[int, typer.Option(help=(
        "Replicates of each case, in separate rounds over the sweep (slow periods of the machine spread over all cases); "
        "compare judges runs with 2 or more by Welch's t over the replicates' medians. Costs K times the sampling."
    ))] = DEFAULTS["repeats"],
    cold_cache: Annotated[bool, typer.Option(help=(
        "Flush the last-level cache (L2 on a GPU) before every timed call; recorded per case."))] = DEFAULTS["cold_cache"],
    tf32: Tf32Option = DEFAULTS["tf32"],
    cudnn_benchmark: CudnnBenchmarkOption = DEFAULTS["cudnn_benchmark"],
    memory: Annotated[bool, typer.Option(help="Measure peak memory of one call per case.")] = DEFAULTS["memory"],
    memory_guard: Annotated[bool, typer.Option(help=(
        "Record cases predicted not to fit in memory as 'oom (predicted)' without running them."))] = DEFAULTS["memory_guard"],
    timeout: Annotated[Optional[float], typer.Option(help=(
        "Seconds per case before it is stopped as 'timeout' (hard with --isolate)."))] = DEFAULTS["timeout"],
    isolate: Annotated[bool, typer.Option(help=(
        "Run each case in a fresh subprocess: survives crashes, hard timeouts, clean memory."))] = DEFAULTS["isolate"],
    shard: Annotated[Optional[str], typer.Option(help=(
        "Run shard K/N of the cases (balanced by expected cost); combine with 'merge'."))] = DEFAULTS["shard"],
    config: Annotated[Optional[Path], typer.Option(help=(
        "TOML sweep file holding any of these options (names with _); the command line overrides it."))] = None,
    preset: Annotated[Optional[str], typer.Option(help="Preset sweep: " + PRESET_HELP)] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Finish an interrupted run directory: run only its missing cases.")] = None,
    strict: Annotated[bool, typer.Option(help="Exit 1 if any case is inaccurate.")] = DEFAULTS["strict"],
    fail_on_contention: Annotated[bool, typer.Option(help=(
        f"Exit 1 if any case was timed while other work took more than {contention.CONTENDED_SHARE:.0%} of its cores "
        "(the 'contention' column): for CI, where such a run is to be repeated, not trusted."))] = DEFAULTS["fail_on_contention"],
    report: Annotated[bool, typer.Option(help="Write report.md and plots into the run directory at the end.")] = DEFAULTS["report"],
    count_instructions: Annotated[bool, typer.Option(help=(
        "Also count instructions per case with callgrind (needs valgrind; slow)."))] = DEFAULTS["count_instructions"],
    ceilings_max_age: Annotated[float, typer.Option(help=(
        "Reuse the ceilings (matmul rates, copy bandwidth) an earlier run measured on this machine under the same "
        "threads, cores, PyTorch and instruction-set caps, when at most this many seconds old; 0 measures them afresh. "
        "A measurement taken beside busy neighbours is never reused."))] = DEFAULTS["ceilings_max_age"],
    executor: Annotated[str, typer.Option(help=(
        "local: every case in this process (or a child with --isolate); ray: cases as Ray tasks, one whole GPU or one "
        "timing slot each (pip install -e '.[ray]'); slurm: cases as Slurm jobs through submitit, one GPU or a whole "
        "node each (pip install -e '.[slurm]')."
    ))] = DEFAULTS["executor"],
    ray_address: Annotated[Optional[str], typer.Option(help=(
        "With --executor ray: the cluster to join (auto, ray://host:port); default: start a local Ray "
        "instance."))] = DEFAULTS["ray_address"],
    cpu_slots: Annotated[int, typer.Option(help=(
        "With --executor ray: timed CPU cases at once per node, each pinned to its own --threads cores (default 1: one "
        "at a time); with --executor slurm --slurm-cluster local: jobs at once."
    ))] = DEFAULTS["cpu_slots"],
    slurm_cluster: Annotated[str, typer.Option(help=(
        "With --executor slurm: slurm (submit with sbatch; the run directory must be on a filesystem the nodes share) "
        "or local (submitit's local executor: jobs as processes here, to try the setup)."
    ))] = DEFAULTS["slurm_cluster"],
    slurm_partition: Annotated[Optional[str], typer.Option(help=(
        "With --executor slurm: the partition to submit to (default: the cluster's)."))] = DEFAULTS["slurm_partition"],
    allow_mixed_hosts: Annotated[bool, typer.Option(help=(
        "Keep cases that ran on different machine models in one run (grouped by the 'machine' column)."))] = DEFAULTS["allow_mixed_hosts"],
):
    """Run a sweep of cases and write results.csv and results.json into a run directory."""
    from cmgm_bench.config.run_config import RunConfig
    from cmgm_bench.execution.sweep import make_plan, plan_resume
    from cmgm_bench.views import terminal

    given = {
        name: value
        for name, value in ctx.params.items()
        if name not in ("out", "config", "preset", "resume") and ctx.get_parameter_source(name).name == "COMMANDLINE"
    }
    given = {name: settings.check_value(name, value, f"--{name.replace('_', '-')}") for name, value in given.items()}
    if resume is not None:
        if out is not None or config is not None or preset is not None:
            raise UsageError("--resume takes the settings of the run directory; drop --out, --config and --preset")
        plan = plan_resume(resume, given)
    else:
        plan = make_plan(RunConfig.from_settings(settings.combine(preset, config, given)), out)
    if plan.narrowed:
        typer.echo(plan.narrowed, err=True)
    result = execute_with_progress(plan)
    frame = result.frame()
    out_console = terminal.console()
    out_console.print(terminal.results_table(frame, result.baseline, title=f"results ({result.path})"))
    for line in terminal.problems(frame):
        out_console.print(f"  {line}", markup=False)
    written = ["results.csv", "results.json"] + (["report.md"] if plan.config.report else [])
    out_console.print(f"wrote {', '.join(str(result.path / name) for name in written)}")
    contended = [m for m in result.measurements if m.contended]
    if contended:
        out_console.print(f"{len(contended)} case(s) contended: timed while other work took more than "
                          f"{contention.CONTENDED_SHARE:.0%} of their cores; no verdict rests on them", markup=False)
    if plan.config.strict and (frame["status"] == "inaccurate").any():
        raise typer.Exit(1)
    if plan.config.fail_on_contention and contended:
        raise typer.Exit(1)


def execute_with_progress(plan):
    """Run ``plan`` under a progress line (cases done, running, failed, where the last one ran)."""
    from cmgm_bench import api
    from cmgm_bench.execution.sweep import argv
    from cmgm_bench.views import terminal
    from cmgm_bench.views.progress import SweepProgress

    done_before = len(plan.cases) - len(plan.todo)
    with SweepProgress(len(plan.cases), done_before, terminal.console(stderr=True)) as progress:
        try:
            return api.execute(plan, argv(), on_case_start=progress.started, on_case_done=progress.done)
        except KeyboardInterrupt as exc:
            progress.stop()
            typer.echo(f"interrupted: finished cases are in {plan.out_dir}", err=True)
            raise typer.Exit(128 + getattr(exc, "signal_number", signal.SIGINT)) from None


@app.command("flops")
@fail_with_usage_errors
def flops_command(
    impl: Annotated[str, typer.Option("--impl", "-i", help="Implementation to count.")] = "eager",
    impl_file: ImplFileOption = None,
    mode: Annotated[str, typer.Option(help="fwd, feature or train.")] = "fwd",
    batch: Annotated[int, typer.Option(help="Batch size.")] = 1,
    res: Annotated[str, typer.Option(help="Token grid: 28 or HxW.")] = "28",
    heads: Annotated[int, typer.Option(help="Attention heads.")] = 8,
    dim: Annotated[int, typer.Option(help="Channels C.")] = 64,
):
    """Count one case's FLOPs three ways (closed form, fvcore, FlopCounterMode), per operator family."""
    from cmgm_bench.measure.counters import count_all
    from cmgm_bench.measure.prepare import prepare_case
    from cmgm_bench.views import terminal

    (case,) = _one_case(impl, impl_file, "cpu", mode, batch, res, heads, dim)
    implementation = registry.get(impl)
    counts = count_all(prepare_case(case, implementation, seed=0), case)
    terminal.console().print(terminal.flops_table(counts, title=f"FLOPs of {impl} {mode} {case.shape_label}"))
    typer.echo(
        "conventions: analytic and fvcore count multiply-accumulates (MACs) of matmuls and convolutions, biases excluded; "
        "FlopCounterMode counts FLOPs = 2 x MACs. fvcore also counts softmax, element-wise add/mul and norms "
        "(one op per element, not MACs, not in the total). fvcore traces the forward only, so it is empty in train mode."
    )


@app.command("compare")
@fail_with_usage_errors
def compare_command(
    base: Annotated[Path, typer.Argument(help="Base run directory or its results.json.")],
    cand: Annotated[Path, typer.Argument(help="Candidate run directory or its results.json.")],
    metric: Annotated[str, typer.Option(help="latency (bootstrap interval + threshold) or instructions (deterministic).")] = "latency",
    threshold: Annotated[Optional[float], typer.Option(help=(
        "Relative change that counts (default 0.05 for latency, 0.01 for instructions)."))] = None,
    mem_threshold: Annotated[float, typer.Option(help="Relative growth of peak memory that counts as a regression.")] = 0.10,
    allow_env_mismatch: Annotated[bool, typer.Option(help="Judge runs from different CPUs/GPUs, torch versions or thread counts.")] = False,
    run_spread: Annotated[Optional[float], typer.Option(help=(
        "Latency, cases with one replicate: widen their intervals by this run-to-run factor (default: the largest spread "
        "between replicates either run measured with --repeats, else 3.0; 1 on a quiet dedicated machine)."
    ))] = None,
    fail_on_regression: Annotated[bool, typer.Option(help="Exit 1 if any case is slower, less accurate or uses more memory.")] = False,
    output_format: FormatOption = "table",
):
    """Compare two runs case by case: latency or instructions, accuracy and memory."""
    from cmgm_bench import api
    from cmgm_bench.views import compare_output

    comparison = api.compare(
        base, cand, metric=metric, threshold=threshold, mem_threshold=mem_threshold, allow_env_mismatch=allow_env_mismatch,
        run_spread=run_spread,
    )
    compare_output.emit(comparison, output_format)
    if fail_on_regression and comparison.regressed:
        raise typer.Exit(1)


@app.command("ab")
@fail_with_usage_errors
def ab_command(
    base_impl: Annotated[str, typer.Argument(help="Base implementation name.")],
    cand_impl: Annotated[str, typer.Argument(help="Candidate implementation name.")],
    impl_file: ImplFileOption = None,
    device: DeviceOption = "cpu",
    mode: Annotated[str, typer.Option(help="fwd, feature or train.")] = "fwd",
    batch: BatchOption = "1",
    res: ResOption = "28",
    heads: HeadsOption = "8",
    dim: DimOption = "64",
    threads: ThreadsOption = None,
    seed: SeedOption = RaceConfig.seed,
    max_time: Annotated[float, typer.Option(help="Seconds of interleaved timing per shape.")] = RaceConfig.max_time,
    min_pairs: Annotated[int, typer.Option(help="Pairs to take at least.")] = RaceConfig.min_pairs,
    threshold: Annotated[float, typer.Option(help="Relative change that counts.")] = RaceConfig.threshold,
    gap_ms: Annotated[float, typer.Option(help=(
        "Idle milliseconds before each timed call, so that the other implementation's spinning worker threads "
        "are parked: about 50 when racing runtimes with their own thread pools (ONNX Runtime, OpenVINO) "
        "against PyTorch on more than one thread."))] = RaceConfig.gap_ms,
    until_decided: Annotated[bool, typer.Option(help=(
        "Stop each shape's race as soon as its verdict is decided (slower, faster or same), looking at 40, 80, 160, ... "
        "quads with the error rate split over the looks; --max-time is then the limit."))] = RaceConfig.until_decided,
    tf32: Tf32Option = False,
    cudnn_benchmark: CudnnBenchmarkOption = False,
    fail_on_regression: Annotated[bool, typer.Option(help="Exit 1 if the candidate is slower on any shape.")] = False,
    output_format: FormatOption = "table",
):
    """Race two implementations call by call in one process (A B B A ...): the recommended wall-clock gate."""
    from cmgm_bench import api
    from cmgm_bench.views import single_case
    from cmgm_bench.views.formats import emit

    results = api.race(
        base_impl, cand_impl, device=device, mode=mode, batch=batch, res=res, heads=heads, dim=dim, threads=threads,
        seed=seed, max_time=max_time, min_pairs=min_pairs, threshold=threshold, gap_ms=gap_ms,
        until_decided=until_decided, impl_files=impl_file or (), tf32=tf32, cudnn_benchmark=cudnn_benchmark,
    )
    frame = single_case.race_frame(results, base_impl, cand_impl)
    title = f"ab: {cand_impl} / {base_impl} ({mode}, threshold {threshold:.1%})"
    emit(frame, output_format, lambda: single_case.race_table(frame, title), single_case.RACE_ALIGN)
    if fail_on_regression and any(r.verdict == "slower" for r in results):
        raise typer.Exit(1)


@app.command("gate")
@fail_with_usage_errors
def gate_command(
    base_ref: Annotated[str, typer.Argument(help="The base revision (a commit, branch or tag) the working tree is judged against.")],
    impl: Annotated[Optional[list[str]], typer.Option("--impl", "-i", help=(
        "Implementations to gate (default: those whose file changed; eager when the model changed)."))] = None,
    mode: Annotated[str, typer.Option(help="fwd, feature or train.")] = "fwd",
    instr_res: Annotated[str, typer.Option(help="Grids whose instructions are counted (28x28: ~5 s a case in callgrind).")] = "8,11,28",
    instr_threshold: Annotated[float, typer.Option(help="Relative growth of instructions that counts as a regression.")] = 0.01,
    instructions: Annotated[bool, typer.Option(help="Count instructions (needs valgrind); --no-instructions races only.")] = True,
    res: ResOption = "28",
    threads: Annotated[int, typer.Option(help="torch intra-op threads for both checks.")] = 1,
    max_time: Annotated[float, typer.Option(help="Seconds of interleaved timing per race (the limit with --until-decided).")] = (
        GATE_RACE.max_time),
    threshold: Annotated[float, typer.Option(help="Relative change of wall time that counts in the race.")] = GATE_RACE.threshold,
    until_decided: Annotated[bool, typer.Option(help="Stop each race once its verdict is settled (sequential interval).")] = (
        GATE_RACE.until_decided),
    work_dir: Annotated[Optional[Path], typer.Option(help=(
        "Folder for the base worktree and the counted runs (default: a temporary one)."))] = None,
    summary: Annotated[Optional[Path], typer.Option(help=(
        "Also write the Markdown summary here (for example $GITHUB_STEP_SUMMARY)."))] = None,
):
    """Gate the working tree against BASE_REF: instruction counts and a paired race per changed implementation.

    Prints one Markdown summary; exit 1 when either check finds a regression."""
    import tempfile

    from cmgm_bench.gate import run_gate
    from cmgm_bench.views.gate_summary import summary_markdown

    with tempfile.TemporaryDirectory(prefix="cmgm-gate-") as scratch:
        result = run_gate(
            base_ref, work_dir or Path(scratch), impls=split_list(impl) if impl else None, instructions=instructions,
            instr_res=instr_res, instr_threshold=instr_threshold, mode=mode, threads=threads,
            res=res, race=RaceConfig(max_time=max_time, threshold=threshold, until_decided=until_decided),
        )
    text = summary_markdown(result, "working tree")
    typer.echo(text)
    if summary is not None:
        with open(summary, "a") as handle:
            handle.write(text + "\n")
    if result.regressed:
        raise typer.Exit(1)


@app.command("report")
@fail_with_usage_errors
def report_command(run_dir: Annotated[Path, typer.Argument(help="Run directory.")]):
    """Write report.md and PNG plots (latency vs N, speed-up, memory, roofline) into a run directory."""
    from cmgm_bench.views.report import write_report

    path = write_report(run_dir)
    typer.echo(f"wrote {path}")


@app.command("show")
@fail_with_usage_errors
def show_command(
    run_dir: Annotated[Path, typer.Argument(help="Run directory or its results.json.")],
    impl: Annotated[Optional[list[str]], typer.Option("--impl", "-i", help=(
        "Only these implementations, repeatable or comma separated."))] = None,
    mode: Annotated[Optional[str], typer.Option(help="Only these modes, comma separated.")] = None,
    sort: Annotated[Optional[str], typer.Option(help="Sort by this results.csv column (for example latency_ms).")] = None,
    output_format: FormatOption = "table",
):
    """Print a run's results again, filtered and sorted; csv, markdown and json go to stdout for piping."""
    from cmgm_bench.results.store import COLUMNS, load_run
    from cmgm_bench.views import terminal
    from cmgm_bench.views.formats import emit

    run = load_run(run_dir)
    frame = run.frame()
    for option, wanted, column in (("--impl", impl, "impl"), ("--mode", mode, "mode")):
        unknown = [value for value in split_list(wanted or []) if value not in set(frame[column])]
        if unknown:
            raise UsageError(f"{option}: {', '.join(unknown)} not in {run_dir} (it has {', '.join(dict.fromkeys(frame[column]))})")
    if impl:
        frame = frame[frame.impl.isin(split_list(impl))]
    if mode:
        frame = frame[frame["mode"].isin(split_list(mode))]
    if sort:
        if sort not in COLUMNS:
            raise UsageError(f"--sort: unknown column {sort!r}")
        frame = frame.sort_values(sort, kind="stable")
    emit(frame, output_format, lambda: terminal.results_table(frame, run.baseline, title=str(run_dir)))


@app.command("profile")
@fail_with_usage_errors
def profile_command(
    impl: Annotated[str, typer.Option("--impl", "-i", help="Implementation to profile.")] = "eager",
    impl_file: ImplFileOption = None,
    device: DeviceOption = "cpu",
    mode: Annotated[str, typer.Option(help="fwd, feature or train.")] = "fwd",
    batch: Annotated[int, typer.Option(help="Batch size.")] = 1,
    res: Annotated[str, typer.Option(help="Token grid: 28 or HxW.")] = "28",
    heads: Annotated[int, typer.Option(help="Attention heads.")] = 8,
    dim: Annotated[int, typer.Option(help="Channels C.")] = 64,
    threads: ThreadsOption = None,
    memory: Annotated[bool, typer.Option(help="Record allocations; report the peak and the operator at the peak.")] = False,
    top: Annotated[int, typer.Option(help="Operators to list.")] = 15,
    trace: Annotated[Optional[Path], typer.Option(help="Chrome/Perfetto trace file (default results/profile-<impl>-<mode>.json).")] = None,
    tf32: Tf32Option = False,
    cudnn_benchmark: CudnnBenchmarkOption = False,
):
    """Profile one case with torch.profiler: top operators by self time, a trace file, the memory peak."""
    from cmgm_bench.config.run_config import check_cuda_options
    from cmgm_bench.machine.process_setup import prepare_process
    from cmgm_bench.measure.prepare import prepare_case
    from cmgm_bench.measure.profiling import profile_case
    from cmgm_bench.views import single_case, terminal

    if top < 1:
        raise UsageError(f"--top: {top} must be at least 1")
    check_cuda_options(device, tf32, cudnn_benchmark)
    trace = trace or Path("results") / f"profile-{impl}-{mode}.json"
    if trace.is_dir():
        raise UsageError(f"--trace {trace} is a directory; give the trace file's path")
    (case,) = _one_case(impl, impl_file, device, mode, batch, res, heads, dim)
    prepare_process(threads, tf32, cudnn_benchmark)  # as run sets up: threads, CUDA arithmetic, allocator pinned
    result = profile_case(prepare_case(case, registry.get(impl), seed=0), mode, case.device, trace, memory=memory, top=top)
    console = terminal.console()
    console.print(single_case.operators_table(result, f"top operators by self time: {impl} {mode} {case.shape_label} (3 calls)"))
    if memory:
        console.print(f"peak allocated during the calls: {(result.peak_bytes or 0) / 2**20:.1f} MiB, at {result.peak_operator}",
                      markup=False)
    console.print(f"trace written to {result.trace} (open in chrome://tracing or ui.perfetto.dev)", markup=False)


@app.command("merge")
@fail_with_usage_errors
def merge_command(
    runs: Annotated[list[Path], typer.Argument(help="Run directories (for example the shards of one sweep).")],
    out: Annotated[Path, typer.Option(help="Directory for the merged run.")],
):
    """Merge run directories of one sweep on one machine (shards) into one run directory."""
    from cmgm_bench.results.merge import merge_runs

    writer = merge_runs(runs, out)
    typer.echo(f"merged {len(writer.measurements)} cases from {len(runs)} runs into {writer.path}")


@app.command("list")
@fail_with_usage_errors
def list_command(impl_file: ImplFileOption = None):
    """List every registered implementation: what it is, where it runs, where it was loaded from."""
    from cmgm_bench import listing
    from cmgm_bench.views.implementations import print_table

    if impl_file:
        load_impl_files(impl_file)
        print_table(listing.computed_rows())
    else:  # from the cache while nothing it depends on changed: no import of the implementations (nor torch)
        print_table(listing.rows())


@app.command("env")
@fail_with_usage_errors
def env_command(device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto"):
    """Print the environment that a run would record."""
    from cmgm_bench.config.run_config import resolve_device
    from cmgm_bench.machine import env as env_module
    from cmgm_bench.views import terminal

    terminal.console().print(terminal.mapping_table(env_module.collect(resolve_device(device)), "environment"))


def main(args: list[str] | None = None) -> None:
    """Entry point: like ``app()`` but click's own usage errors are one line too."""
    try:
        code = app(args=args, standalone_mode=False)
    except ClickUsageError as exc:
        typer.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
