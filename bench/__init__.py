"""Benchmarks: each module is a script (python -m bench.NAME, or charformer bench NAME) writing JSON to out/
unless told where; results kept on purpose are committed to bench/results/."""
