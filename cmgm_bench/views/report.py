"""A run's report: ``report.md`` with tables and PNG plots, written into the run directory.

Plots (matplotlib, headless): latency against tokens N on log-log axes with
the fitted scaling exponent per line, speed-up over the baseline per shape,
peak memory against N, and a roofline: achieved GFLOP/s against arithmetic
intensity under the measured compute and bandwidth roofs.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from cmgm_bench.analysis.speedups import speedups  # noqa: E402
from cmgm_bench.config.cases import DEFAULT_ALLOCATOR, shape_label  # noqa: E402
from cmgm_bench.errors import UsageError  # noqa: E402
from cmgm_bench.measure.ceilings import Ceilings  # noqa: E402
from cmgm_bench.measure.measurement import TIMED_STATUSES  # noqa: E402
from cmgm_bench.results.run_meta import RunMeta  # noqa: E402
from cmgm_bench.results.store import Run, atomic_write_bytes, load_run  # noqa: E402
from cmgm_bench.views import markdown  # noqa: E402
from cmgm_bench.views.terminal import contention_cell  # noqa: E402
from cmgm_bench.workload import flops  # noqa: E402


def fit_exponent(tokens, latency) -> float:
    """Slope of log(latency) against log(N): 2 for work that grows as N²."""
    return float(np.polyfit(np.log(np.asarray(tokens, float)), np.log(np.asarray(latency, float)), 1)[0])


def _shape_label(row) -> str:
    return shape_label(row.batch, row.dim, row.height, row.width, row.heads)


def _timed(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame.status.isin(TIMED_STATUSES) & frame.latency_ms.notna()].copy()


def _save(fig, path: Path) -> Path:
    """Write the figure as a PNG, whole or not at all (drawn into memory, then written atomically)."""
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, dpi=110, format="png")
    plt.close(fig)
    atomic_write_bytes(path, image.getvalue())
    return path


def plot_latency_vs_tokens(frame: pd.DataFrame, path: Path) -> Path | None:
    """One panel per mode, a line per (implementation, batch, heads, dim), legends beside the panels."""
    timed = _timed(frame)
    groups = {
        mode: [(key, g.sort_values("tokens")) for key, g in part.groupby(["impl", "batch", "heads", "dim"]) if g.tokens.nunique() >= 2]
        for mode, part in timed.groupby("mode", sort=False)
    }
    groups = {mode: lines for mode, lines in groups.items() if lines}
    if not groups:
        return None
    heights = [max(3.5, 0.24 * len(lines)) for lines in groups.values()]
    fig, axes = plt.subplots(len(groups), 1, figsize=(10, sum(heights)), squeeze=False, gridspec_kw={"height_ratios": heights})
    for ax, (mode, lines) in zip(axes[:, 0], groups.items()):
        for (impl, batch, heads, dim), group in lines:
            slope = fit_exponent(group.tokens, group.latency_ms)
            ax.plot(group.tokens, group.latency_ms, marker="o", label=f"{impl} B{batch} h{heads} C{dim}: N^{slope:.2f}")
        ax.set(xscale="log", yscale="log", xlabel="tokens N = H x W", ylabel="latency (ms, median)",
               title=f"{mode}: latency vs tokens (log-log, fitted exponent)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return _save(fig, path)


def plot_speedups(frame: pd.DataFrame, baseline: str | None, path: Path) -> Path | None:
    timed = _timed(frame)
    timed["speedup"] = speedups(timed, baseline)
    timed = timed[timed.impl != baseline].dropna(subset=["speedup"])
    if timed.empty:
        return None
    timed = timed.sort_values(["mode", "tokens", "batch", "heads", "dim"])
    timed["shape"] = [f"{m} {_shape_label(r)}" for m, r in zip(timed["mode"], timed.itertuples())]
    order = list(dict.fromkeys(timed["shape"]))
    table = timed.pivot_table(index="shape", columns="impl", values="speedup").reindex(order)
    width = min(16.0, max(8.0, 0.12 * len(table) * len(table.columns) + 2))  # readable, never a banner
    fig, ax = plt.subplots(figsize=(width, 5.5))
    table.plot.bar(ax=ax, width=0.8)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set(ylabel=f"speed-up over {baseline} (x)", xlabel="", title=f"Speed-up over {baseline} (higher is faster)")
    ax.tick_params(axis="x", labelrotation=30)
    plt.setp(ax.get_xticklabels(), ha="right")
    ax.legend(fontsize=8, title="implementation")
    return _save(fig, path)


def plot_memory(frame: pd.DataFrame, path: Path) -> Path | None:
    timed = _timed(frame).dropna(subset=["peak_mem_mb"])
    if timed.empty:
        return None
    fig, ax = plt.subplots(figsize=(11, max(5, 0.1 * timed.groupby(["impl", "mode", "batch"]).ngroups)))
    for (impl, mode, batch), group in timed.groupby(["impl", "mode", "batch"]):
        group = group.sort_values("tokens")
        ax.plot(group.tokens, group.peak_mem_mb.clip(lower=0.01), marker="o", label=f"{impl} {mode} B{batch}")
    ax.set(xscale="log", yscale="log", xlabel="tokens N = H x W", ylabel="peak extra memory per call (MiB)", title="Peak memory vs tokens")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, ncol=1 + len(ax.lines) // 30)
    return _save(fig, path)


def plot_roofline(frame: pd.DataFrame, device: Ceilings, path: Path, machine: str | None = None) -> Path | None:
    """Each case at its arithmetic intensity (closed-form FLOPs / minimum bytes) against the
    machine's measured roofs (``device``: one device's ceilings): matmul per dtype (native solid,
    effective dashed) and copy bandwidth. ``machine``: the model named in the title (mixed hosts)."""
    timed = _timed(frame).dropna(subset=["gflops_per_s"])
    if timed.empty:
        return None
    intensity = np.array([
        r.flops / flops.min_bytes(r.mode, r.batch, r.tokens, r.dim, r.heads, r.dtype) for r in timed.itertuples()
    ])
    fig, ax = plt.subplots(figsize=(10, 6))
    for (impl, dtype), group in timed.assign(intensity=intensity).groupby(["impl", "dtype"]):
        ax.scatter(group.intensity, group.gflops_per_s, s=18, label=f"{impl} ({dtype})")
    span = np.logspace(np.log10(intensity.min() / 3), np.log10(intensity.max() * 3), 50)
    bandwidth = device.copy_gbytes_per_s
    native = device.matmul_gflops_native or device.matmul_gflops  # older runs stored only the effective rates
    effective = device.matmul_gflops
    for index, dtype in enumerate(sorted(native)):
        for peaks, style, kind in ((native, "-", "native"), (effective, "--", "effective")):
            if peaks.get(dtype) and (kind == "native" or peaks[dtype] != native.get(dtype)):
                roof = np.full_like(span, peaks[dtype]) if not bandwidth else np.minimum(peaks[dtype], bandwidth * span)
                ax.plot(span, roof, style, color=f"C{index}", alpha=0.6, label=f"{dtype} matmul, {kind}: {peaks[dtype]:.0f} GFLOP/s")
    if bandwidth:
        ax.plot(span, bandwidth * span, ":", color="grey", label=f"copy bandwidth {bandwidth:.0f} GB/s")
    ax.set(xscale="log", yscale="log", xlabel="arithmetic intensity (FLOPs / minimum bytes)", ylabel="achieved GFLOP/s",
           title=f"Roofline: each case against {machine or 'this machine'}'s measured roofs")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return _save(fig, path)


def rooflines(frame: pd.DataFrame, meta: RunMeta, folder: Path) -> list[Path | None]:
    """One roofline per machine model and device that has ceilings: the cases that ran there against them."""
    stored, mixed = meta.all_ceilings(), meta.several_machines
    plots = []
    for index, (machine, device, values) in enumerate(stored):
        cases = frame[frame.device == device]
        if mixed:
            cases = cases[cases.machine == machine]
        name = "roofline.png" if index == 0 else f"roofline-{index + 1}.png"
        plots.append(plot_roofline(cases, values, folder / name, machine if mixed else None))
    return plots


def ceiling_notes(meta: RunMeta) -> list[str]:
    """One line per emulated dtype and per ceiling a case raised (naming the machine model in a mixed run)."""
    lines = []
    mixed = meta.several_machines
    for machine, where, values in meta.all_ceilings():
        device = f"{where} ({machine})" if mixed else where
        native, effective = values.matmul_gflops_native, values.matmul_gflops
        for dtype in values.emulated:
            lines.append(
                f"- {device} {dtype} matmul: {markdown.cell(native.get(dtype), '.1f')} GFLOP/s, no native support; "
                f"% peak uses the float32 ceiling ({markdown.cell(effective.get(dtype), '.1f')} GFLOP/s)."
            )
        for dtype, raise_ in values.raised.items():
            lines.append(
                f"- {device} {dtype}: `{raise_['by']}` ran at {raise_['to']:.1f} GFLOP/s, above the measured ceiling "
                f"{raise_['from']:.1f}; the ceiling was raised to its rate."
            )
    return lines


def ceiling_table(meta: RunMeta) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the measured ceilings, one row per dtype and one for bandwidth per device
    (and per machine model, in a column of its own, when the run's cases ran on several)."""
    mixed = meta.several_machines
    rows = []
    for machine, device, values in meta.all_ceilings():
        native, side = values.matmul_gflops_native, values.matmul_side or {}  # no side: older runs
        where = [machine, device] if mixed else [device]
        rows += [
            [*where, dtype, markdown.cell(side.get(dtype), "d"), markdown.cell(native.get(dtype), ".1f"), markdown.cell(value, ".1f")]
            for dtype, value in sorted(values.matmul_gflops.items())
        ]
        rows.append([*where, "copy bandwidth (GB/s)", "", "", markdown.cell(values.copy_gbytes_per_s, ".1f")])
    headers = (["machine"] if mixed else []) + ["device", "matmul dtype", "matmul side", "native GFLOP/s", "effective GFLOP/s (% peak)"]
    return headers, rows


def _tables(frame: pd.DataFrame, baseline: str | None) -> str:
    frame = frame.copy()
    frame["speedup"] = speedups(frame, baseline)
    parts = []
    by_machine = frame["machine"].nunique() > 1  # a run of several machine models (--allow-mixed-hosts)
    for keys, group in frame.groupby(["mode", "device"] + (["machine"] if by_machine else []), sort=False):
        mode, device = keys[0], keys[1]
        headers = ["implementation", "shape", "status", "latency ms", "IQR ms", "contention", f"speed-up vs {baseline}", "% peak",
                   "resident MiB", "peak MiB", "out rel err", "attn rel err", "grad rel err"]
        rows = [
            [
                r.impl + ("" if r.allocator == DEFAULT_ALLOCATOR else f" [{r.allocator}]"), _shape_label(r), r.status,
                markdown.cell(r.latency_ms, ".3f"), markdown.cell(r.latency_iqr_ms, ".3f"), contention_cell(r.contention),
                markdown.cell(r.speedup, ".2f"), markdown.cell(r.pct_peak, ".1f"), markdown.cell(r.resident_mb, ".1f"),
                markdown.cell(r.peak_mem_mb, ".1f"),
                markdown.cell(r.out_rel_err, ".1e"), markdown.cell(r.attn_rel_err, ".1e"), markdown.cell(r.grad_rel_err, ".1e"),
            ]
            for r in group.sort_values(["tokens", "batch", "impl"]).itertuples()
        ]
        where = f"{device}, {keys[2]}" if by_machine else device
        parts.append(f"### {mode} on {markdown.text(where)}\n\n" + markdown.table(headers, rows, ["l", "l", "l"] + ["r"] * 10))
    return "\n\n".join(parts)


def allocator_table(frame: pd.DataFrame) -> str | None:
    """Latency of each implementation and shape under each CPU allocator, and its ratio to the default's; ``None``
    unless the run measured more than one allocator."""
    allocators = list(dict.fromkeys(frame["allocator"].dropna()))
    if len(allocators) < 2:
        return None
    timed = frame[frame["status"].isin(TIMED_STATUSES)]
    latency = timed.pivot_table(index=["impl", "device", "mode", "batch", "dim", "height", "width", "heads"],
                                columns="allocator", values="latency_ms", aggfunc="first")
    rows = []
    for (impl, device, mode, batch, dim, height, width, heads), values in latency.iterrows():
        pinned = values.get(DEFAULT_ALLOCATOR)
        cells = []
        for name in allocators:
            value = values.get(name)
            ratio = "" if name == DEFAULT_ALLOCATOR or pinned is None or pd.isna(pinned) or pd.isna(value) else f" (x{value / pinned:.2f})"
            cells.append(markdown.cell(value, ".3f") + ratio)
        rows.append([impl, f"{device} {mode}", shape_label(batch, dim, height, width, heads), *cells])
    headers = ["implementation", "device, mode", "shape",
               *(f"{name} ms" + ("" if name == DEFAULT_ALLOCATOR else f" (/ {DEFAULT_ALLOCATOR})")
                                                           for name in allocators)]
    return markdown.table(headers, rows, ["l", "l", "l"] + ["r"] * len(allocators))


def write_report(run_dir: Path) -> Path:
    """Write ``report.md`` and the plots into ``run_dir``; returns the report's path."""
    run = load_run(run_dir)
    if not run.measurements:
        raise UsageError(f"{run_dir}: the run has no cases to report")
    return _write(run)


def _write(run: Run) -> Path:
    frame = run.frame()
    baseline = run.baseline
    plots = [
        ("Latency vs tokens", plot_latency_vs_tokens(frame, run.path / "latency_vs_tokens.png")),
        ("Speed-up", plot_speedups(frame, baseline, run.path / "speedup.png")),
        ("Peak memory", plot_memory(frame, run.path / "memory_vs_tokens.png")),
    ] + [("Roofline", path) for path in rooflines(frame, run.meta, run.path)]
    environment = run.meta.environment
    env_rows = [[key, markdown.cell(environment.get(key))] for key in (
        "start_time", "command_line", "git_commit", "torch_version", "device", "cpu_model", "cpu_instruction_sets", "gpu_name",
        "cuda_version", "cudnn_version", "threads", "cpu_allocator", "inductor_isa_check", "tf32_matmul",
    ) if environment.get(key) is not None]
    ceiling_headers, ceiling_rows = ceiling_table(run.meta)
    notes = ceiling_notes(run.meta)
    problems = frame[frame.status != "ok"]
    problem_lines = [f"- {markdown.text(r.impl)} {r.mode} {r.device} {_shape_label(r)}: **{r.status}**: {markdown.text(r.error)}"
                     for r in problems.itertuples()]
    sections = [
        f"# cmgm-bench report\n\n{len(frame)} cases, {int((frame.status == 'ok').sum())} ok. Speed-ups are relative to `{baseline}`.",
        "## Environment\n\n" + markdown.table(["", "value"], env_rows),
        "## Measured ceilings\n\n"
        + markdown.table(ceiling_headers, ceiling_rows, ["l"] * (len(ceiling_headers) - 3) + ["r", "r", "r"])
        + ("\n\n" + "\n".join(notes) if notes else ""),
        "## Results\n\n" + _tables(frame, baseline),
        *([f"## Allocators\n\n{allocators}"] if (allocators := allocator_table(frame)) else []),
        "## Cases that are not ok\n\n" + ("\n".join(problem_lines) if problem_lines else "None."),
        "## Plots\n\n" + "\n\n".join(f"### {title}\n\n![{title}]({path.name})" for title, path in plots if path is not None),
    ]
    report = run.path / "report.md"
    atomic_write_bytes(report, ("\n\n".join(sections) + "\n").encode())
    return report
