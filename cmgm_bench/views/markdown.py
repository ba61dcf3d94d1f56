"""Markdown tables that read well on a code-hosting site and in a terminal viewer."""

from __future__ import annotations

import math


def cell(value, spec: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = format(value, spec) if spec else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def table(headers: list[str], rows: list[list], align: list[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table; ``align`` holds ``"l"`` or ``"r"`` per column."""
    align = align or ["l"] * len(headers)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
