#!/usr/bin/env bash
# The one GPU check, on a lent device as it is: Python 3.12, torch preinstalled, no network.
#
#   CMGM_BENCH_GIT_COMMIT=$(git rev-parse HEAD) scripts/gpu_check.sh [--out DIR] [--budget SECONDS]
#
# First installs what the device lacks without downloading anything: the wheels in .whl/
# (made beforehand on a machine with PyPI by scripts/gpu_wheels.sh) go to a folder of their
# own on PYTHONPATH, next to the preinstalled torch, and the project itself is installed in
# editable mode with no dependencies (its entry points register the implementations). Then
# runs scripts/gpu_check.py, which says what it runs and where the results go.
# GPU_CHECK_DRY_RUN=1 runs the same steps on the CPU with tiny shapes (the test suite does).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
site=${GPU_CHECK_SITE:-/tmp/cmgm-bench-site}
if [ "${GPU_CHECK_DRY_RUN:-0}" != 1 ] && compgen -G ".whl/*.whl" >/dev/null; then  # cp312 wheels: the device's Python
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
here=$(pwd -P)
installed=$(cd / && "$python" -c 'import pathlib, cmgm_bench; print(pathlib.Path(cmgm_bench.__file__).resolve().parent.parent)' 2>/dev/null || true)
if [ "$installed" != "$here" ]; then
  "$python" -m pip install -q --no-index --no-deps --no-build-isolation -e .
fi
# what the project imports, checked before any step runs: a missing package is named here, not in a step's log
"$python" -c "import cmgm_bench.cli, cmgm_bench.views.report, cmgm_bench.history.database, fvcore, ruptures, plotly, pytest_benchmark"
exec "$python" scripts/gpu_check.py "$@"
