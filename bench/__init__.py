"""wotr benchmarks: every hop's throughput and latency, beside the ceiling that bounds it.

Run with `make bench`, `wotr bench` or `python -m bench`. See docs/performance.md.
"""
