"""Latency and throughput benchmarks of the bonestream backends (``python -m benchmarks.bench``, ``bonestream bench``)."""
