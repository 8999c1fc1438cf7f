"""Benchmark suites: the sweep axes (`suites.axes`) and the asv benchmark classes (`bench_*.py`)."""
