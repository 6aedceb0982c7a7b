"""Measurement: host benchmarks across runtimes (bench), layer latency tables (latency), instruction counts under
callgrind (callgrind) and results written with their command and machine (report)."""
