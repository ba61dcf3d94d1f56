#!/usr/bin/env bash
# The README's test command beside a busy neighbour: one process spinning on the first core this shell may use,
# for the whole run, as another user of a shared machine would be. The suite must pass here as on a quiet machine.
# Extra arguments go to pytest (e.g. tests/test_compare.py).
set -euo pipefail
cd "$(dirname "$0")/.."
core=$(python3 -c "import os; print(min(os.sched_getaffinity(0)))")
python3 -c "import os
os.sched_setaffinity(0, {$core})
while True: pass" &
spinner=$!
trap 'kill "$spinner" 2>/dev/null || true' EXIT
echo "busy neighbour: pid $spinner spinning on core $core" >&2
python -m pytest -q "$@"
