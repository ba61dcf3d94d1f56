#!/usr/bin/env bash
# Fill .whl/ with the wheels the lent GPU device lacks (run here, where PyPI is reachable):
# CPython 3.12 manylinux wheels of the project's dependencies that its image does not hold
# (torch 2.11, numpy, pandas, scipy, matplotlib, typer, rich, pytest and pytest-benchmark are
# there). fvcore and iopath publish no wheels: theirs are built here (pure Python).
#
#   scripts/gpu_wheels.sh            then run the device with carry [".whl"]
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
mkdir -p .whl
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$tag")
done
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" -d .whl \
  yacs termcolor 'sqlalchemy>=2.0' greenlet 'ruptures>=1.1.9' 'plotly>=5.20'
"$python" -m pip wheel -q --no-deps -w .whl 'fvcore>=0.1.5.post20221221' 'iopath>=0.1.7'
ls -1 .whl
