"""Benchmark input: real frames decoded from the shared sweep clip (decode timed per frame), else the phantom."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.capture.phantom import PhantomConfig
from pipeline.capture.synthetic import PhantomSource
from pipeline.capture.video import VideoSource

SWEEP_CLIP = Path(__file__).resolve().parents[2] / "shared" / "data" / "ultrabones100k" / "sweep_clip_frames150-889_20fps.mp4"


@dataclass
class FrameSet:
    images: list[np.ndarray]
    names: list[str]
    decode_ms: list[float]  # per frame, single-threaded decode to gray (live-like; threaded decode adds delay)
    source: str


def load_frames(count: int, clip: Path = SWEEP_CLIP) -> FrameSet:
    """The first ``count`` frames of ``clip`` if it exists, else of the synthetic phantom (decode = synthesis)."""
    source = VideoSource(clip, threaded=False) if clip.is_file() else PhantomSource(PhantomConfig(n_frames=count))
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
