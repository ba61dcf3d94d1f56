"""The history of runs: a database of finished runs, series over commits, change points, a trend gate."""
