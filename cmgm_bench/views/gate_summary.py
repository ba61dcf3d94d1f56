"""The pull-request gate's comment in Markdown: the verdict first, then the instruction counts and the races."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cmgm_bench.views import compare_output, markdown

if TYPE_CHECKING:  # the gate sits above the views; they only read its result
    from cmgm_bench.gate import GateResult

EMPTY = "No implementation changed (nothing under cmgm_bench_impls/ or the model); nothing to gate."


def summary_markdown(result: GateResult, head: str) -> str:
    """The comment for ``result``, the working tree or commit ``head`` against the base commit."""
    verdict = "**regression**" if result.regressed else "no regression"
    lines = [f"## cmgm-bench gate: {result.base_commit[:10]} -> {head}: {verdict}", ""]
    if not result.impls:
        return "\n".join(lines + [EMPTY, ""])
    lines += [f"Implementations: {markdown.text(', '.join(result.impls))}", ""]
    if result.instructions is not None:
        flag = " (regression)" if result.instructions_regressed else ""
        lines += [compare_output.to_markdown(result.instructions, heading="### Instruction counts" + flag), ""]
    flag = " (regression)" if result.race_regressed else ""
    lines += [f"### Paired race, base file against head file in one process{flag}", ""]
    rows = [[result.impl_of(r), r.cand.label.split(" ", 1)[1], f"{r.base_ms:.3f}", f"{r.cand_ms:.3f}",
             f"{r.ratio:.3f} [{r.low:.3f}, {r.high:.3f}]", r.verdict, r.pairs, f"{r.seconds:.1f}"] for r in result.races]
    lines += [markdown.table(["impl", "case", "base ms", "head ms", "head/base [95% CI]", "verdict", "pairs", "s"], rows,
                             ["l", "l", "r", "r", "r", "l", "r", "r"]), ""]
    return "\n".join(lines)
