"""A comparison as a rich table, Markdown (pull-request comments, CI job summaries), JSON or CSV."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from cmgm_bench.views import markdown, terminal
from cmgm_bench.views.formats import OutputFormat
from cmgm_bench.analysis.compare import ONE_REPLICATE, Comparison, case_label
from cmgm_bench.measure.contention import CONTENDED, CONTENDED_SHARE

VERDICT_STYLE = {"faster": "green", "slower": "red", "same": "", "inconclusive": "yellow", "n/a": "dim",
                 ONE_REPLICATE: "yellow", CONTENDED: "yellow"}

def separate_runs_caveat(comparison: Comparison) -> str:
    """What a latency verdict between two separate runs rests on, in one line."""
    single = len(comparison.cases) - comparison.replicated_cases
    parts = []
    if comparison.replicated_cases:
        parts.append(f"{comparison.replicated_cases} case(s) judged over the replicates of both runs (run --repeats)")
    if comparison.shared_process_cases:
        parts.append(
            f"{comparison.shared_process_cases} of them with replicates that shared one process: what differs between "
            "processes is not in their interval (1 confident wrong verdict in 80 identical cases, none in 40 with "
            "separate processes, docs/performance.md#page-faults); for a gate, run both with --repeats 3 --isolate"
        )
    if single:
        parts.append(
            f"{single} case(s) with one replicate: their intervals are widened by the run-to-run spread "
            f"x{comparison.run_spread:.2f} (separate runs on a shared machine differ by up to 3x, "
            "docs/performance.md#replicates), so only a larger change is decided; run both with --repeats 3, or gate wall time with "
            "'cmgm-bench ab' (one process) or --metric instructions"
        )
    return "note: " + "; ".join(parts)


def _unit(comparison: Comparison) -> str:
    return "instructions" if comparison.metric == "instructions" else "ms"


def _rows(comparison: Comparison) -> list[list[str]]:
    spec = ",.0f" if comparison.metric == "instructions" else ".3f"
    rows = []
    for case in comparison.cases:
        interval = "-" if case.low is None else f"[{case.low:.3f}, {case.high:.3f}]"
        notes = [case.accuracy or "", _memory_note(case) if case.memory_regressed else ""]
        rows.append(
            [
                case_label(case.key),
                markdown.cell(case.base, spec),
                markdown.cell(case.cand, spec),
                markdown.cell(case.ratio, ".3f"),
                interval,
                case.verdict,
                "; ".join(n for n in notes if n) or "-",
            ]
        )
    return rows


def _memory_note(case) -> str:
    grown = [f"{name} x{ratio:.2f}" for name, ratio in (("peak", case.memory_ratio), ("resident", case.resident_ratio)) if ratio]
    return "memory " + ", ".join(grown)


def headers(comparison: Comparison) -> list[str]:
    unit = _unit(comparison)
    return ["case", f"base {unit}", f"cand {unit}", "cand/base", "95% CI", "verdict", "regressions"]


def rich_table(comparison: Comparison) -> Table:
    table = Table(title=f"compare ({comparison.metric}, threshold {comparison.threshold:.1%})", header_style="bold")
    for index, name in enumerate(headers(comparison)):
        table.add_column(name, justify="right" if 1 <= index <= 4 else "left")
    for row in _rows(comparison):
        style = VERDICT_STYLE.get(row[5], "")
        row[5] = f"[{style}]{row[5]}[/]" if style else row[5]
        table.add_row(*row)
    return table


def summary_lines(comparison: Comparison) -> list[str]:
    lines = [f"geometric mean cand/base, {impl}: {value:.3f}" for impl, value in comparison.geomean_by_impl().items()]
    lines += [f"only in base: {case_label(k)}" for k in comparison.only_base]
    lines += [f"only in candidate: {case_label(k)}" for k in comparison.only_cand]
    lines += [f"environment differs in {k}: {a!r} vs {b!r}" for k, (a, b) in comparison.environment_differences.items()]
    if comparison.without_resident:
        lines.append(f"{comparison.without_resident} case(s) compared on peak memory only: a run has no resident_mb "
                     "(made before it was measured, or under an allocator where it is not)")
    contended = sum(case.verdict == CONTENDED for case in comparison.cases)
    if contended:
        lines.append(f"{contended} case(s) timed beside other work (contention above {CONTENDED_SHARE:.0%} in either run): "
                     "no latency verdict; run them again on a quiet machine")
    regressions = sum(case.regressed for case in comparison.cases)
    lines.append(f"{regressions} regression(s) in {len(comparison.cases)} compared case(s)")
    if comparison.metric == "latency":
        lines.append(separate_runs_caveat(comparison))
    return lines


def to_markdown(comparison: Comparison, heading: str = "### cmgm-bench compare") -> str:
    """The comparison as Markdown under ``heading`` (followed by the metric and threshold)."""
    align = ["l", "r", "r", "r", "r", "l", "l"]
    body = markdown.table(headers(comparison), _rows(comparison), align)
    summary = "\n".join(f"- {markdown.text(line)}" for line in summary_lines(comparison))
    title = f"{heading} ({comparison.metric}, threshold {comparison.threshold:.1%})"
    return f"{title}\n\n{body}\n\n{summary}\n"


def to_json(comparison: Comparison) -> str:
    return json.dumps(
        {
            "metric": comparison.metric,
            "threshold": comparison.threshold,
            "regressed": comparison.regressed,
            "cases": [case.as_row() for case in comparison.cases],
            "geomean_by_impl": comparison.geomean_by_impl(),
            "only_base": [list(k) for k in comparison.only_base],
            "only_cand": [list(k) for k in comparison.only_cand],
            "environment_differences": {k: list(v) for k, v in comparison.environment_differences.items()},
        },
        indent=1,
        default=str,
    )


def to_csv(comparison: Comparison) -> str:
    return comparison.frame().to_csv(index=False)


def emit(comparison: Comparison, output_format: OutputFormat) -> None:
    """Print ``comparison`` in ``output_format``: a judgement, not one table, so its JSON is a document of its own
    (the verdict, the cases, what only one run holds) and its terminal and Markdown forms end with the summary."""
    output_format = OutputFormat(output_format)
    if output_format is OutputFormat.TABLE:
        console = terminal.console()
        console.print(rich_table(comparison))
        for line in summary_lines(comparison):
            console.print(line, markup=False)
        return
    writers = {OutputFormat.MARKDOWN: to_markdown, OutputFormat.JSON: to_json, OutputFormat.CSV: to_csv}
    typer.echo(writers[output_format](comparison), nl=False)
