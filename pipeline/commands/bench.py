"""bonestream bench: the benchmark of benchmarks/bench.py (backends x precisions x batch sizes, side by side)."""

from __future__ import annotations

import argparse

from benchmarks import arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    arguments.add_arguments(p)


def run(args: argparse.Namespace) -> int:
    from benchmarks import bench
    from pipeline.memory import check_inference

    s = bench.settings_from(args)
    if s.input_size is not None:  # --input-size clip: the clip's geometry is known only once it is decoded, so not checked
        check_inference(s.device, max(s.batches), s.input_size, s.stride, "--batch-sizes")
    return bench.run(args)
