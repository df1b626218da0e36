"""Benchmarks: figures, not timed tests (`nox -s bench` -> results/bench.json)."""
