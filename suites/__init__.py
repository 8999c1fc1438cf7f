"""Benchmark suites: the sweep axes (`harness.axes`) and the asv benchmark classes (`bench_*.py`)."""
