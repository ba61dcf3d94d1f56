"""Built-in CMGM implementations; each module registers itself with `cmgm_bench.registry`."""
