"""Benchmark input: real frames decoded from a clip (decode timed per frame), else the phantom."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.arguments import SHARED_CLIP
from pipeline.capture.phantom import PhantomConfig
from pipeline.capture.synthetic import PhantomSource
from pipeline.capture.video import VideoSource


@dataclass
class FrameSet:
    images: list[np.ndarray]
    names: list[str]
    decode_ms: list[float]  # per frame, single-threaded decode to gray (live-like; threaded decode adds delay)
    source: str


def default_clip() -> Path | None:
    """The UltraBones sweep clip in the shared data beside this repository, looked up when the bench runs (never a
    path of the machine the code was written on); None where it is not there."""
    clip = Path(__file__).resolve().parents[2] / SHARED_CLIP
    return clip if clip.is_file() else None


def load_frames(count: int, clip: Path | None) -> FrameSet:
    """The first ``count`` frames of ``clip``, or of the synthetic phantom when None (decode = synthesis)."""
    source = VideoSource(clip, threaded=False) if clip is not None else PhantomSource(PhantomConfig(n_frames=count))
    images, names, decode_ms = [], [], []
    frames = iter(source)
    for _ in range(count):
        start = time.perf_counter()
        frame = next(frames, None)
        if frame is None:
            break
        decode_ms.append((time.perf_counter() - start) * 1e3)
        images.append(frame.image)
        names.append(frame.name)
    frames.close()
    return FrameSet(images, names, decode_ms, source.name)
