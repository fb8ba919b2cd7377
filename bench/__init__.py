"""Benchmarks: `make bench` runs bench/run.py (docs/benchmarks.md)."""
