"""Built-in CMGM implementations; each module registers itself with `cmgm_bench.registry` (found through the
``cmgm_bench.impls`` entry points). ``builders/`` holds what they build: C++ kernels and exported graphs."""
