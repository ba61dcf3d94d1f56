"""What every command module of the command line shares: the one-line usage errors and the --format option."""

from __future__ import annotations

import functools
from typing import Annotated

import typer

from cmgm_bench.errors import UsageError
from cmgm_bench.views.formats import OutputFormat

# click's UsageError, whether typer uses click or its own vendored copy of it.
ClickUsageError = typer.BadParameter.__bases__[0]

FormatOption = Annotated[OutputFormat, typer.Option("--format", help=(
    "table (rich, for a terminal), markdown, json or csv (to stdout, for piping)."))]


def fail_with_usage_errors(command):
    """Turn a :class:`UsageError`, or a file that cannot be written or read (a read-only folder, a full disk, a
    file where a folder should be), into one line on stderr and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UsageError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            typer.echo(f"error: {where}{exc.strerror or exc}", err=True)
            raise typer.Exit(2) from None

    return wrapper
