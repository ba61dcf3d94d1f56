"""``cmgm-bench list``'s table of the registered implementations (from :mod:`cmgm_bench.listing`'s rows)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text


def implementations_table(rows: list[dict]) -> Table:
    table = Table(title="registered implementations", header_style="bold")
    for name in ("name", "description", "devices", "modes", "dtype", "available", "loaded from"):
        table.add_column(name)
    for row in rows:
        cells = (
            row["name"] + (" (baseline)" if row["baseline"] else "") + ("" if row["in_default_sweep"] else " (only when named)"),
            row["description"],
            ",".join(row["devices"]),
            ",".join(row["modes"]),
            row["dtype"],
            f"no: {row['missing']}" if row["missing"] else "yes",
            row["source"],
        )
        table.add_row(*(Text(cell) for cell in cells))  # plain text: "[runtimes]" is not markup
    return table


def print_table(rows: list[dict]) -> None:
    Console(width=200).print(implementations_table(rows))
