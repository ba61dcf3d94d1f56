"""`python -m cmgm_bench` runs the command-line interface."""

from cmgm_bench.cli import main

main()
