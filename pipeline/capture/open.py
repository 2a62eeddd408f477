"""From what the user typed to a Source, and evenly spread frame samples for calibration."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.capture.frame import Frame, Source, SourceError
from pipeline.capture.images import ImageSource
from pipeline.capture.phantom import PhantomConfig
from pipeline.capture.synthetic import PhantomSource
from pipeline.capture.video import VIDEO_SUFFIXES, VideoSource


def open_source(spec: str | Path, *, fps: float = 20.0) -> Source:
    """``phantom[:N]``, a video file, an image file, a folder of images or a glob."""
    text = str(spec)
    if text == "phantom" or text.startswith("phantom:"):
        n = text.partition(":")[2] or "200"
        if not n.isdigit() or int(n) < 1:
            raise SourceError(f"{text}: phantom frame count must be a positive integer")
        return PhantomSource(PhantomConfig(n_frames=int(n), fps=fps))
    if Path(text).suffix.lower() in VIDEO_SUFFIXES:
        return VideoSource(text)
    return ImageSource([text], fps=fps)


def open_sources(specs: Sequence[str | Path], *, fps: float = 20.0) -> list[Source]:
    """Consecutive image arguments form one source (so N files calibrate together); others stand alone."""
    sources: list[Source] = []
    images: list[str] = []
    for spec in specs:
        s = str(spec)
        if s.startswith("phantom") or Path(s).suffix.lower() in VIDEO_SUFFIXES:
            if images:
                sources.append(ImageSource(images, fps=fps))
                images = []
            sources.append(open_source(s, fps=fps))
        else:
            images.append(s)
    if images:
        sources.append(ImageSource(images, fps=fps))
    return sources


def spread_indices(total: int, count: int) -> list[int]:
    """``count`` frame indices evenly spread over ``total`` frames, first and last included."""
    return sorted(set(np.linspace(0, total - 1, min(count, total)).round().astype(int).tolist()))


STREAM_SAMPLE = 10  # reference frames taken from a video or stream when no count is given


def sample_frames(sources: Sequence[Source], count: int | None) -> list[Frame]:
    """``count`` frames evenly spread over each source; without a count, every given image and
    STREAM_SAMPLE frames of each video or stream."""
    picked: list[Frame] = []
    for source in sources:
        total = source.count
        if total is None:  # containers without a frame count: count by decoding once
            total = sum(1 for _ in source)
        if total == 0:
            raise SourceError(f"{source.name}: no frames")
        n = count or (total if isinstance(source, ImageSource) else STREAM_SAMPLE)
        wanted = set(spread_indices(total, n))
        picked += [f for f in source if f.id in wanted]
    return picked
