"""report, show and profile: files that exist and are what they claim, filters that filter, bad input."""

import json
import re

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cmgm_bench.cli import app
from cmgm_bench.views.report import fit_exponent
from tests.helpers import FAST

runner = CliRunner()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "run"
    args = ["run", "--impl", "eager,sdpa", "--res", "4,6,8", "--mode", "fwd,feature", "--out", str(out), *FAST]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.slow
def test_run_writes_a_report_listing_every_case_with_valid_plots(run_dir):
    report = (run_dir / "report.md").read_text()
    frame = pd.read_csv(run_dir / "results.csv")
    for row in frame.itertuples():
        assert re.search(rf"\| {row.impl} \| B{row.batch} {row.dim}x{row.height}x{row.width} h{row.heads} \| {row.status} \|", report)
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert {"latency_vs_tokens.png", "speedup.png", "memory_vs_tokens.png", "roofline.png"} <= set(images)
    for name in images:
        data = (run_dir / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000


@pytest.mark.slow
def test_report_command_rewrites_the_report(run_dir):
    (run_dir / "report.md").unlink()
    result = runner.invoke(app, ["report", str(run_dir)])
    assert result.exit_code == 0 and (run_dir / "report.md").exists()


def test_fitted_exponent_of_synthetic_quadratic_data():
    rng = np.random.default_rng(0)
    tokens = np.array([64, 121, 256, 484, 784, 1600, 2304])
    latency = 3e-6 * tokens**2 * rng.uniform(0.97, 1.03, tokens.size)
    assert abs(fit_exponent(tokens, latency) - 2) < 0.05


@pytest.mark.slow
def test_show_filters_sorts_and_formats(run_dir):
    result = runner.invoke(app, ["show", str(run_dir), "--impl", "sdpa", "--mode", "feature", "--sort", "latency_ms", "--format", "csv"])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(__import__("io").StringIO(result.output))
    assert set(frame.impl) == {"sdpa"} and set(frame["mode"]) == {"feature"} and len(frame) == 3
    assert frame.latency_ms.is_monotonic_increasing
    as_json = json.loads(runner.invoke(app, ["show", str(run_dir), "--format", "json"]).output)
    assert len(as_json) == 12
    md = runner.invoke(app, ["show", str(run_dir), "--impl", "eager", "--format", "markdown"]).output.strip().splitlines()
    assert len(md) == 2 + 6 and md[1].startswith("| ---")


def test_profile_writes_a_trace_with_attention_and_convolution(tmp_path):
    trace = tmp_path / "trace.json"
    result = runner.invoke(app, ["profile", "--impl", "eager", "--res", "8", "--memory", "--trace", str(trace)])
    assert result.exit_code == 0, result.output
    names = {event.get("name", "") for event in json.loads(trace.read_text())["traceEvents"]}
    assert any("bmm" in n or "matmul" in n for n in names)
    assert any("conv" in n for n in names)
    shares = [float(s) for s in re.findall(r"(\d+\.\d)%", result.output)]
    assert shares and sum(shares) <= 100.5  # rounding of the printed shares
    assert "peak allocated during the calls" in result.output and "MiB, at aten::" in result.output


@pytest.mark.parametrize(
    "args,message",
    [
        (["report", "/nonexistent/dir"], "no results.json"),
        (["profile", "--impl", "nope"], "unknown implementation"),
        (["show", "/nonexistent/dir"], "no results.json"),
    ],
)
def test_bad_input(args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_report_on_an_empty_directory(tmp_path):
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "no results.json" in result.stderr
