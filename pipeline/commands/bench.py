"""bonestream bench: the benchmark of benchmarks/bench.py (backends x precisions x batch sizes, side by side)."""

from __future__ import annotations

import argparse

from benchmarks import bench


def add_arguments(p: argparse.ArgumentParser) -> None:
    bench.add_arguments(p)


def run(args: argparse.Namespace) -> int:
    return bench.run(args)
