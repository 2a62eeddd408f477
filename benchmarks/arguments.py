"""The bench's command-line options, shared by ``bonestream bench`` and ``python -m benchmarks.bench``.

Light on purpose (no torch, OpenCV or ONNX Runtime), so ``bonestream bench --help`` loads in milliseconds; the
defaults that depend on the machine (the device, the clip) are resolved when the bench runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from models.resampling import DEFAULT_RESAMPLING, RESAMPLING
from pipeline.choices import BACKENDS, SDPA_BACKENDS
from pipeline.commands.numbers import COUNT, FPS, POSITIVE, POSITIVE_INT, input_size

SHARED_CLIP = Path("shared", "data", "ultrabones100k", "sweep_clip_frames150-889_20fps.mp4")  # beside the repository


def _input_size(text: str) -> tuple[int, int] | str:
    return "clip" if text == "clip" else input_size(text)


def _csv(kind: type) -> Any:
    return lambda text: tuple(kind(v) for v in text.split(",") if v)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options left unset take the device's defaults (BenchSettings.for_device)."""
    p.add_argument("--device", help="cpu or cuda[:N] (default: cuda if present)")
    p.add_argument("--backends", type=_csv(str), help=f"comma list of {','.join(BACKENDS)}")
    p.add_argument("--precisions", type=_csv(str), help="comma list of fp32,fp16,bf16,int8 (GPU default fp32,fp16,bf16; CPU fp32,int8)")
    p.add_argument("--batch-sizes", dest="batches", type=_csv(int), help="comma list, e.g. 1,8,32")
    p.add_argument("--frames", type=POSITIVE_INT, help="frames per configuration (GPU default 1000, CPU 20)")
    p.add_argument("--warmup", type=COUNT, help="warm-up batches per configuration (GPU 10, CPU 1)")
    p.add_argument("--turn", type=POSITIVE_INT, help="frames per configuration per turn (configurations alternate)")
    p.add_argument("--input-size", type=_input_size, help="model input HxW (default 224x224), or 'clip' for the clip's own geometry")
    p.add_argument(
        "--resampling", choices=RESAMPLING,
        help=f"default {DEFAULT_RESAMPLING} on the CPU (host), bilinear-aa on CUDA (on the device: no host resize per frame)",
    )
    p.add_argument("--sdpa", choices=SDPA_BACKENDS, help="attention kernel of the torch backends (default auto: torch's choice)")
    p.add_argument("--stride", type=int, choices=(8, 4))
    p.add_argument("--weights", help="weights spec (default random:0: latency only, every output says RANDOM WEIGHTS)")
    p.add_argument("--reference", help="reference file to use instead of calibrating on the clip")
    p.add_argument("--baseline-frames", type=COUNT, help="frames for the original method's cost (stride 4), 0 to skip")
    p.add_argument("--streams", type=COUNT, help="paced streams on the fastest configuration (GPU default 16, CPU 0)")
    p.add_argument("--stream-fps", type=FPS)
    p.add_argument("--stream-seconds", type=POSITIVE)
    p.add_argument(
        "--clip", type=Path,
        help=f"video to decode frames from (default: ../{SHARED_CLIP.as_posix()} beside this repository when it is there, "
        "else the synthetic phantom; the output names the frames' source)",
    )
    p.add_argument("--out", type=Path, help="results folder (default: the current folder)")
    p.add_argument("--tag", help="file name stem of the results (default bench)")
    p.add_argument("--cache-dir", help="engine cache folder (default: the user cache's engines/)")
