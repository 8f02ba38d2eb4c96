"""Benchmarks: ``python -m benchmarks.<name>``; each writes JSON and prints a table."""
