"""The documentation's commands against the command line, so that the docs cannot drift from the code.

Every ``cmgm-bench`` command in a fenced block of README.md and docs/*.md is parsed by the real
command line (an unknown option, a removed command or a value of the wrong type fails). The
README's commands are also run, in order, in a scratch folder, with the sizes made tiny (grids of
6 and 8 tokens a side, 2 heads, 8 channels, short time budgets) and the first command's default
sweep narrowed to eager and sdpa; a command that judges (``--fail-on-regression``) may exit 1.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from cmgm_bench.cli import app
from cmgm_bench.cli_common import ClickUsageError

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_COMMAND = re.compile(r"^(?:[A-Z_][A-Z0-9_]*=\S*\s+)*cmgm-bench\s")  # environment assignments, then the command


def fenced_commands(path: Path) -> list[str]:
    """The ``cmgm-bench`` commands of a Markdown file's fenced blocks: continuation lines joined, ``&&`` chains
    split, comments, leading ``run:`` (a YAML step) and environment assignments dropped."""
    commands, inside, pending = [], False, ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("```"):
            inside, pending = not inside, ""
            continue
        if not inside:
            continue
        line = pending + line.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        line = re.sub(r"^(- )?run: ", "", line)
        line = re.sub(r"\$\{\{[^}]*\}\}", "GITHUB_EXPRESSION", line)  # a GitHub Actions expression is one word
        line = re.split(r"\s(?:>>?|\|)\s", line)[0]  # a redirection or a pipe ends the command
        for part in line.split("&&"):
            if _COMMAND.match(part.strip()):
                words = shlex.split(part, comments=True)
                commands.append(shlex.join(words[words.index("cmgm-bench") + 1:]))
    return commands


def parse(args: list[str]) -> None:
    """Parse ``args`` as the command line would, without running the command."""
    command, name = typer.main.get_command(app), "cmgm-bench"
    while hasattr(command, "get_command") and args and not args[0].startswith("-"):
        name, args = args[0], args[1:]
        command = command.get_command(None, name)
        assert command is not None, f"no command {name!r}"
    command.make_context(name, list(args))


ALL_COMMANDS = [(path.relative_to(ROOT).as_posix(), command) for path in DOCUMENTS for command in fenced_commands(path)]


def test_the_documents_hold_commands_to_check():
    files = {path for path, _ in ALL_COMMANDS}
    assert {"README.md", "docs/history.md", "docs/ci.md", "docs/scale-out.md", "docs/implementations.md"} <= files
    assert len(fenced_commands(ROOT / "README.md")) >= 7


@pytest.mark.parametrize("path,command", ALL_COMMANDS, ids=[f"{p}: {c[:60]}" for p, c in ALL_COMMANDS])
def test_every_documented_command_parses(path, command):
    try:
        parse(shlex.split(command))
    except ClickUsageError as exc:
        pytest.fail(f"{path}: `cmgm-bench {command}`: {exc.format_message()}")


TINY = {"--res": lambda value: ",".join(["6", "8"][: len(value.split(","))]), "--batch": lambda value: "1"}
EXTRA = {
    "run": ["--heads", "2", "--dim", "8", "--max-time", "0.05", "--min-samples", "3", "--no-report"],
    "ab": ["--heads", "2", "--dim", "8", "--max-time", "0.3", "--min-pairs", "4"],
    "profile": ["--heads", "2", "--dim", "8"],
}


def tiny(args: list[str]) -> list[str]:
    """``args`` with the sizes made tiny and short budgets added; a run that names no implementation runs eager and sdpa."""
    out = [TINY[args[i - 1]](word) if i and args[i - 1] in TINY else word for i, word in enumerate(args)]
    if out[0] == "run" and "--impl" not in out:
        out += ["--impl", "eager,sdpa", "--res", "6"]
    return out + EXTRA.get(out[0], [])


@pytest.mark.slow
def test_the_readme_commands_run(tmp_path, monkeypatch):
    """In one process, as separate shell commands would run: the thread count one command sets is reset after it."""
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    threads = torch.get_num_threads()
    for command in fenced_commands(ROOT / "README.md"):
        args = tiny(shlex.split(command))
        result = runner.invoke(app, args)
        torch.set_num_threads(threads)
        allowed = (0, 1) if "--fail-on-regression" in args else (0,)
        assert result.exit_code in allowed, f"`cmgm-bench {shlex.join(args)}` exited {result.exit_code}:\n{result.output[-3000:]}"
    assert (tmp_path / "results" / "try" / "results.csv").exists() and (tmp_path / "results" / "dashboard" / "index.html").exists()
