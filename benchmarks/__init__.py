"""Benchmarks and the detection-quality harness's synthetic scenarios."""
