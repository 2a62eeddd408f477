"""bonestream bench: the benchmark of benchmarks/bench.py (backends x precisions x batch sizes, side by side)."""

from __future__ import annotations

import argparse

from benchmarks import arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    arguments.add_arguments(p)


def run(args: argparse.Namespace) -> int:
    from benchmarks import bench

    return bench.run(args)
