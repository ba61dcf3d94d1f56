"""The history of runs: a database of finished runs, series over commits, change points, a trend gate."""

DEFAULT_DB = "results/history.sqlite"  # --db when neither the option nor DB_ENV names one
DB_ENV = "CMGM_BENCH_HISTORY_DB"
