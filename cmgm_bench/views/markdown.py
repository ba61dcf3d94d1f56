"""Markdown tables that read well on a code-hosting site and in a terminal viewer.

Every cell and every piece of free text that comes from a run (implementation names,
error messages, the command line) is escaped here: ``|`` so it stays in its cell, and
HTML's ``<``, ``>`` and ``&`` so a name such as ``x<img onerror=...>`` is shown as
text by any previewer, never rendered.
"""

from __future__ import annotations

import html
import math


def cell(value, spec: str = "") -> str:
    """``value`` formatted with ``spec`` (``-`` for a missing number), as text for :func:`table`."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec) if spec else str(value)


def text(value) -> str:
    """Free text from a run, safe inside Markdown prose: HTML escaped, on one line."""
    return html.escape(str(value), quote=False).replace("\n", " ")


def table(headers: list[str], rows: list[list], align: list[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table; ``align`` holds ``"l"`` or ``"r"`` per column. Cells are escaped once."""
    align = align or ["l"] * len(headers)
    rule = ["---:" if a == "r" else "---" for a in align]

    def escaped(value) -> str:
        return text(cell(value)).replace("|", "\\|")

    lines = ["| " + " | ".join(escaped(h) for h in headers) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(escaped(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
