#!/usr/bin/env bash
# One-shot GPU check for cmgm-bench.
#
# On a machine with a CUDA GPU, PyTorch already installed and no network:
#   scripts/gpu_check.sh OUT_DIR [WHEEL_DIR]
# installs the project without downloading anything (pure-Python packages the
# machine lacks, e.g. fvcore, iopath, yacs, termcolor, can be given as wheels in
# WHEEL_DIR), runs the GPU tests, runs a sweep of every implementation and mode
# at B in {8, 1} (the headline B=8 28x28 cases first), grids {28, 48, 64},
# 8 heads, writes the run directory and its report to OUT_DIR/run, and prints a
# short summary table last. Everything it prints is also in OUT_DIR/gpu_check_log.txt.
#
# Time: the whole script is meant to finish in under 6 minutes on an H100.
# GPU_CHECK_BUDGET_S (default 330) bounds it: the sweep gets what is left after
# the tests minus a reserve for the cold-cache check and the summary, and is
# stopped with SIGINT when that runs out. The run keeps every finished case
# (its journal), its report is written from them, and the summary says how
# many cases are missing; `cmgm-bench run --resume OUT_DIR/run` finishes it.
# Where the sweep's time went (per phase of a case, per implementation) is
# printed before the summary, from the journal.
#
# A tree copied without .git has no commit to record: give it as
#   CMGM_BENCH_GIT_COMMIT=$(git rev-parse HEAD) scripts/gpu_check.sh OUT_DIR
# (from the checkout); the runs record it and OUT_DIR/commit.txt holds it.
set -euo pipefail

out=${1:?usage: scripts/gpu_check.sh OUT_DIR [WHEEL_DIR]}
wheels=${2:-}
python=${PYTHON:-python3}
cd "$(dirname "$0")/.."
if [ -e "$out/run" ] || [ -e "$out/cold" ]; then
  echo "error: $out already holds a run; give a fresh OUT_DIR" >&2
  exit 2
fi
mkdir -p "$out"
exec > >(tee -a "$out/gpu_check_log.txt") 2>&1  # everything printed is also saved with the results
git rev-parse HEAD 2>/dev/null > "$out/commit.txt" || echo "${CMGM_BENCH_GIT_COMMIT:-unknown}" > "$out/commit.txt"
started=$(date +%s)
budget=${GPU_CHECK_BUDGET_S:-330}
reserve=45  # cold-cache check, report, summaries

step() { printf '\n== %s (%ss)\n' "$1" "$(( $(date +%s) - started ))"; }

step "checking the GPU"
"$python" - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device visible to PyTorch"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name()}")
PY

step "installing the project (no downloads)"
if [ -n "$wheels" ]; then
  "$python" -m pip install --quiet --no-index --no-deps "$wheels"/*.whl
fi
# --no-deps: the machine's own torch and packages are used as they are.
"$python" -m pip install --quiet --no-index --no-deps --no-build-isolation -e .
# fails here if a dependency is missing (pytest-benchmark: without it pytest stops at its options)
"$python" -c "import cmgm_bench.cli, cmgm_bench.measure.counters, cmgm_bench.views.report, pytest_benchmark"

step "GPU tests"
# one process (the suite's -n 2 workers would time cases on the one GPU at once; xdist may be missing here)
tests_status=0
timeout --signal=INT --kill-after=15 120 "$python" -m pytest -q -o addopts="-ra --benchmark-disable" -m cuda tests > "$out/gpu_tests.log" 2>&1 || tests_status=$?
tail -n 15 "$out/gpu_tests.log"

step "sweep: every implementation and mode, B 8 then 1, grids 28/48/64, 8 heads (the headline B=8 28x28 first)"
sweep_s=$(( budget - reserve - ($(date +%s) - started) ))
[ "$sweep_s" -ge 60 ] || sweep_s=60  # timeout 0 would mean no limit at all
echo "time left for the sweep: ${sweep_s}s"
sweep_status=0
timeout --signal=INT --kill-after=30 "$sweep_s" \
  "$python" -m cmgm_bench run --device cuda --mode fwd,feature,train --batch 8,1 --res 28,48,64 --heads 8 \
  --max-time 0.3 --min-samples 10 --timeout 60 --out "$out/run" || sweep_status=$?
if [ "$sweep_status" -ne 0 ]; then
  echo "the sweep stopped early (exit $sweep_status); writing the report of the finished cases"
  "$python" -m cmgm_bench report "$out/run" || true
fi

step "cold-cache check: the same cases with the L2 flushed before every call"
cold_status=0
"$python" -m cmgm_bench run --device cuda --impl eager,sdpa --mode feature --batch 1 --res 28 --heads 8 \
  --max-time 0.5 --cold-cache --no-report --out "$out/cold" || cold_status=$?

step "where the sweep's time went (seconds, from the journal)"
"$python" scripts/phase_times.py "$out/run" || echo "no run to read"

step "summary (B=8, 28x28, 8 heads)"
"$python" -m cmgm_bench show "$out/run" --mode fwd,feature,train --sort latency_ms --format csv \
  | "$python" -c '
import sys, pandas as pd
f = pd.read_csv(sys.stdin)
f = f[(f.batch == 8) & (f.height == 28)]
base = f[f.impl == "eager"].set_index("mode").latency_ms
f["speedup"] = f["mode"].map(base) / f.latency_ms
cols = ["impl", "mode", "status", "latency_ms", "speedup", "pct_peak", "peak_mem_mb", "out_rel_err", "attn_rel_err", "sdpa_backend"]
print(f.sort_values(["mode", "latency_ms"])[cols].to_string(index=False, float_format=lambda v: f"{v:.3g}"))' \
  || echo "no summary: the run has no results"
echo "done in $(( $(date +%s) - started )) s; run directory: $out/run; GPU tests exit code $tests_status; sweep exit code $sweep_status; cold-cache exit code $cold_status"
[ "$tests_status" -eq 0 ] && [ "$sweep_status" -eq 0 ] && [ "$cold_status" -eq 0 ]
