"""The four output formats of every command that prints a table, and the one function that writes them."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Callable

import typer

from cmgm_bench.views import markdown

if TYPE_CHECKING:  # the command line reads the formats before any table exists: no pandas import for --help
    import pandas as pd
    from rich.table import Table


class OutputFormat(str, enum.Enum):
    """``table`` (rich, for a terminal); ``markdown``, ``json`` and ``csv`` go to stdout for piping."""

    TABLE = "table"
    MARKDOWN = "markdown"
    JSON = "json"
    CSV = "csv"


def emit(frame: pd.DataFrame, output_format: OutputFormat, rich_table: Callable[[], Table], align: list[str] | None = None) -> None:
    """Print ``frame`` in ``output_format``; ``rich_table`` builds the terminal form (it may style and abbreviate)."""
    from cmgm_bench.views.terminal import console

    output_format = OutputFormat(output_format)
    if output_format is OutputFormat.TABLE:
        console().print(rich_table())
    elif output_format is OutputFormat.CSV:
        typer.echo(frame.to_csv(index=False), nl=False)
    elif output_format is OutputFormat.JSON:
        typer.echo(frame.to_json(orient="records", indent=1))
    else:
        typer.echo(markdown.table(list(frame.columns), frame.values.tolist(), align))
