"""bonestream bench: the benchmark of benchmarks/bench.py (backends x precisions x batch sizes, side by side)."""

from __future__ import annotations

import argparse

from models.errors import BonestreamError

try:
    from benchmarks import bench
except ImportError as exc:  # benchmarks/ lives in the source tree; an install without it still has every other command
    bench = None
    MISSING = str(exc)


def add_arguments(p: argparse.ArgumentParser) -> None:
    if bench is not None:
        bench.add_arguments(p)


def run(args: argparse.Namespace) -> int:
    if bench is None:
        raise BonestreamError(f"the benchmarks package is not importable ({MISSING}); run from a source checkout")
    return bench.run(args)
