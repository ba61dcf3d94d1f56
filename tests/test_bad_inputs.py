"""Every command, a table of bad inputs: each one exits 2 with one line on stderr, no traceback, and writes nothing.

The commands run through ``cli.main`` (what the ``cmgm-bench`` script runs), so click's own usage errors are
held to the same promise as the tool's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cmgm_bench.cli import main
from tests.helpers import FAST, write_file

PASSWORD = "S3cretPW"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A real run and the broken inputs made from it, once for the module."""
    root = tmp_path_factory.mktemp("inputs")
    run = root / "run"
    with pytest.raises(SystemExit) as done:
        main(["run", "--impl", "eager", "--res", "4", "--heads", "2", "--dim", "16", "--threads", "1", *FAST, "--no-report",
              "--out", str(run)])
    assert done.value.code == 0
    line = (run / "cases.jsonl").read_text().splitlines()[0]

    def journal_only(name: str, lines: list[bytes]) -> Path:
        folder = root / name
        folder.mkdir()
        shutil.copy(run / "run.json", folder / "run.json")
        (folder / "cases.jsonl").write_bytes(b"\n".join(lines) + b"\n")
        return folder

    record = json.loads(line)
    record["row"]["batch"] = "one"
    corrupt_results = root / "corrupt-results"
    shutil.copytree(run, corrupt_results)
    (corrupt_results / "results.json").write_text('{"environment": ')
    config_dir = root / "configs"
    config_dir.mkdir()
    return {
        "run": run,
        "bytes": journal_only("bytes", [line.encode(), b"\xff\xfe not utf-8 \x80", line.encode()]),
        "types": journal_only("types", [json.dumps(record).encode()]),
        "torn": journal_only("torn", [line.encode(), b'{"row": {', line.encode()]),
        "corrupt_results": corrupt_results,
        "file": write_file(root, "plain.txt", "not a folder\n"),
        "folder": root / "a-folder",  # never made: what lies below it is missing
        "bad_toml": write_file(config_dir, "bad.toml", "max_time = [\n"),
        "unknown_key": write_file(config_dir, "unknown.toml", "no_such_setting = 1\n"),
        "wrong_type": write_file(config_dir, "type.toml", 'max_time = "long"\n'),
        "raises": write_file(root, "raises.py", "raise RuntimeError('broken plug-in')\n"),
        "exits": write_file(root, "exits.py", "import sys\nsys.exit(5)\n"),
        "registers_nothing": write_file(root, "nothing.py", "x = 1\n"),
    }


# (arguments with {name} for a path of the ``files`` fixture and {out} for a fresh output path, what stderr says)
BAD_INPUTS = [
    # run: numbers
    ("run --max-time nan", "--max-time: nan must be a positive number"),
    ("run --max-time 0", "--max-time: 0.0 must be a positive number"),
    ("run --max-time -1", "--max-time: -1.0 must be a positive number"),
    ("run --max-time inf", "--max-time: inf must be a positive number"),
    ("run --min-samples 0", "--min-samples: 0 must be at least 1"),
    ("run --target-rel-iqr 0", "--target-rel-iqr: 0.0 must be a positive number"),
    ("run --target-rel-iqr nan", "--target-rel-iqr: nan must be a positive number"),
    ("run --timeout 0", "--timeout: 0.0 must be a positive number"),
    ("run --timeout nan", "--timeout: nan must be a positive number"),
    ("run --ceilings-max-age -1", "--ceilings-max-age: -1.0 must be 0 or a positive number of seconds"),
    ("run --ceilings-max-age nan", "--ceilings-max-age: nan must be 0 or a positive number of seconds"),
    ("run --threads 0", "--threads"),
    ("run --threads -2", "--threads"),
    ("run --repeats 0", "--repeats: 0 must be at least 1"),
    ("run --max-time soon", "Invalid value for '--max-time'"),
    # run: the sweep
    ("run --batch 0", "--batch: 0 must be positive"),
    ("run --batch x", "--batch: 'x' is not an integer"),
    ("run --res 0", "--res: '0' must be positive"),
    ("run --res 28y", "--res: '28y' is not a size"),
    ("run --res ,", "--res: no value given"),
    ("run --heads 3", "--dim 64 is not divisible by --heads 3"),
    ("run --dim -1", "--dim: -1 must be positive"),
    ("run --mode bogus", "--mode: unknown value 'bogus'"),
    ("run --impl nosuch", "nosuch"),
    ("run --device tpu", "tpu"),
    ("run --allocator mimalloc", "--allocator: unknown value 'mimalloc'"),
    ("run --preset nope", "--preset: unknown preset 'nope'"),
    ("run --shard 3/2", "--shard"),
    ("run --shard abc", "--shard"),
    # run: options that do nothing where they are given
    ("run --tf32", "--tf32 has no effect without --device cuda"),
    ("run --cudnn-benchmark", "--cudnn-benchmark has no effect without --device cuda"),
    ("run --cpu-slots 2", "--cpu-slots has no effect without --executor ray or slurm"),
    ("run --ray-address auto", "--ray-address has no effect without --executor ray"),
    ("run --slurm-partition gpu", "--slurm-partition has no effect without --executor slurm"),
    ("run --executor nope", "--executor: unknown executor 'nope'"),
    ("run --executor slurm --slurm-cluster nope", "--slurm-cluster: unknown cluster 'nope'"),
    ("run --allocator system --executor ray", "only the pinned allocator runs with --executor ray"),
    # run: files
    ("run --config {folder}/missing.toml", "not found"),
    ("run --config {bad_toml}", "is not valid TOML"),
    ("run --config {unknown_key}", "unknown key 'no_such_setting'"),
    ("run --config {wrong_type}", "'max_time' must be"),
    ("run --impl-file {folder}/missing.py", "implementation file not found"),
    ("run --impl-file {raises}", "failed to import: RuntimeError: broken plug-in"),
    ("run --impl-file {exits}", "called sys.exit(5) while importing"),
    ("run --impl-file {registers_nothing}", "registers no implementation"),
    ("run --out {file}", "is a file; give a folder for the run"),
    ("run --out {run}", "exists and is not empty"),
    ("run --resume {folder}/missing", "no results.json or run.json"),
    ("run --resume {run} --out {out}", "--resume takes the settings of the run directory"),
    ("run --resume {run} --batch 2", "is a different sweep"),
    ("run --no-such-option", "No such option: --no-such-option"),
    # show, report, merge: run directories
    ("show {folder}/missing", "no results.json or run.json"),
    ("show {run} --impl nosuch", "--impl: nosuch not in"),
    ("show {run} --mode bogus", "--mode: bogus not in"),
    ("show {run} --sort no_column", "--sort: unknown column 'no_column'"),
    ("show {run} --format xml", "'xml' is not one of"),
    ("show {bytes}", "line 2 is corrupt"),
    ("show {types}", "line 1: a case holds a value of the wrong type"),
    ("show {torn}", "line 2 is corrupt"),
    ("show {corrupt_results}", "corrupt or truncated results file"),
    ("report {folder}/missing", "no results.json or run.json"),
    ("report {bytes}", "line 2 is corrupt"),
    ("merge {folder}/missing --out {out}", "no results.json or run.json"),
    ("merge {run} --out {run}", "exists and is not empty"),
    ("merge {types} --out {out}", "a case holds a value of the wrong type"),
    # compare
    ("compare {run} {folder}/missing", "no results.json or run.json"),
    ("compare {run} {run} --metric bogus", "--metric: unknown metric 'bogus'"),
    ("compare {run} {run} --threshold 0", "--threshold and --mem-threshold must be positive"),
    ("compare {run} {run} --threshold -1", "--threshold and --mem-threshold must be positive"),
    ("compare {run} {run} --mem-threshold 0", "--threshold and --mem-threshold must be positive"),
    ("compare {run} {run} --run-spread 0.5", "--run-spread: a factor of at least 1"),
    ("compare {run} {run} --metric instructions", "a run has no instruction counts"),
    ("compare {run} {types}", "a case holds a value of the wrong type"),
    # ab
    ("ab eager nosuch", "nosuch"),
    ("ab eager sdpa --gap-ms -1", "--gap-ms: -1.0 must be a finite number, not negative"),
    ("ab eager sdpa --max-time nan", "--max-time: nan must be a positive number"),
    ("ab eager sdpa --max-time inf", "--max-time: inf must be a positive number"),
    ("ab eager sdpa --min-pairs 1", "--min-pairs: 1 must be at least 2"),
    ("ab eager sdpa --threshold 0", "--threshold: 0.0 must be a positive number"),
    ("gate HEAD --threshold -1", "--threshold: -1.0 must be a positive number"),
    ("ab eager sdpa --res 0", "--res: '0' must be positive"),
    ("ab eager sdpa --mode bogus", "bogus"),
    ("ab eager sdpa --tf32", "--tf32 has no effect without --device cuda"),
    ("ab eager sdpa --cudnn-benchmark", "--cudnn-benchmark has no effect without --device cuda"),
    # profile and flops
    ("profile --top -1", "--top: -1 must be at least 1"),
    ("profile --top 0", "--top: 0 must be at least 1"),
    ("profile --trace {run}", "is a directory; give the trace file's path"),
    ("profile --impl nosuch", "nosuch"),
    ("profile --mode bogus", "bogus"),
    ("profile --tf32", "--tf32 has no effect without --device cuda"),
    ("flops --impl nosuch", "nosuch"),
    ("flops --res 0", "--res: '0' must be positive"),
    ("flops --mode bogus", "bogus"),
    # history
    ("history add {folder}/missing --db {out}.sqlite", "no results.json or run.json"),
    ("history add {types} --db {out}.sqlite", "a case holds a value of the wrong type"),
    ("history show --db {folder}/missing.sqlite", "no history database here"),
    ("history show --res abc --db {folder}/missing.sqlite", "--res: 'abc' is neither a grid"),
    ("history show --mode bogus --db {folder}/missing.sqlite", "--mode: unknown value 'bogus'"),
    ("history show --metric bogus", "bogus"),
    ("history check {run} --threshold -1 --db {folder}/missing.sqlite", "--threshold: -1.0 must be a positive number"),
    ("history check {run} --window 1", "--window: at least 2 runs"),
    ("history check {run} --confidence 2", "--confidence: between 0.5 and 1"),
    ("history html {file}", "is a file; give a folder for index.html"),
    (f"history show --db postgresql+psycopg://user:{PASSWORD}@127.0.0.1:notaport/db", "notaport"),
    (f"history show --db mysql://user:{PASSWORD}@127.0.0.1/db", "user:***@"),
    (f"history add {{run}} --db postgresql+nodriver://user:{PASSWORD}@127.0.0.1/db", "user:***@"),
    # env and list
    ("env --device tpu", "tpu"),
    ("list --impl-file {folder}/missing.py", "implementation file not found"),
]


@pytest.mark.parametrize("arguments, says", BAD_INPUTS, ids=[arguments for arguments, _ in BAD_INPUTS])
def test_a_bad_input_is_one_line_exit_2_and_nothing_written(arguments, says, files, tmp_path, capsys):
    out = tmp_path / "out"
    before = {path: path.stat().st_mtime_ns for path in files["run"].rglob("*")}
    args = [part.format(out=out, **files) for part in arguments.split()]
    with pytest.raises(SystemExit) as done:
        main(args)
    captured = capsys.readouterr()
    assert done.value.code == 2, (captured.out, captured.err)
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert says in lines[0], lines[0]
    assert "Traceback" not in captured.out + captured.err and PASSWORD not in captured.out + captured.err
    assert not out.exists() and not Path(f"{out}.sqlite").exists()  # nothing partial
    assert {path: path.stat().st_mtime_ns for path in files["run"].rglob("*")} == before  # inputs untouched
    assert not [path for path in tmp_path.rglob("*") if path.name.endswith(".tmp")]


def test_the_table_covers_every_command():
    from cmgm_bench.cli import app
    from cmgm_bench.cli_history import history_app

    commands = {command.name for command in app.registered_commands} - {"gate"}  # gate: its own tests, it needs git
    commands |= {f"history {command.name}" for command in history_app.registered_commands}
    tried = {" ".join(arguments.split()[:2]) if arguments.startswith("history") else arguments.split()[0] for arguments, _ in BAD_INPUTS}
    assert commands <= tried, commands - tried
    assert len(BAD_INPUTS) >= 80
