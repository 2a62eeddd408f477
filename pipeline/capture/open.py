"""From what the user typed to a Source, and evenly spread frame samples for calibration."""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.capture.dicom import DicomSource, is_dicom
from pipeline.capture.frame import Frame, Source, SourceError, distinct_names
from pipeline.capture.igtl import IgtlSource, is_igtl
from pipeline.capture.images import ImageSource
from pipeline.capture.live import LiveReplay, LiveSource, is_device
from pipeline.capture.phantom import PhantomConfig
from pipeline.capture.synthetic import PhantomSource
from pipeline.capture.video import VIDEO_SUFFIXES, VideoSource


def _is_phantom(spec: str) -> bool:
    return spec == "phantom" or spec.startswith("phantom:")


def _stands_alone(spec: str) -> bool:
    """Everything but image files, folders and globs: those group into one source."""
    return _is_phantom(spec) or is_device(spec) or is_igtl(spec) or Path(spec).suffix.lower() in VIDEO_SUFFIXES or is_dicom(spec)


def _replay(spec: str, fps: float) -> Source:
    if _is_phantom(spec):
        n = spec.partition(":")[2] or "200"
        if not n.isdigit() or int(n) < 1:
            raise SourceError(f"{spec}: phantom frame count must be a positive integer")
        return PhantomSource(PhantomConfig(n_frames=int(n), fps=fps))
    if is_dicom(spec):
        return DicomSource(spec, fps=fps)
    if Path(spec).suffix.lower() in VIDEO_SUFFIXES:
        return VideoSource(spec)
    return ImageSource([spec], fps=fps)


def _live(spec: str) -> Source | None:
    """The live source ``spec`` names (an OpenIGTLink server or a capture device), None for files."""
    if is_igtl(spec):
        return IgtlSource(spec)
    return LiveSource(spec) if is_device(spec) else None


def as_live(source: Source, live: bool | None, *, loop: bool = False) -> Source:
    """``live`` None keeps the source's kind; True plays a replay as a device (real time, drops counted), over and
    over with ``loop``."""
    if live is False and source.live:
        raise SourceError(f"{source.name}: a capture device is always live; it cannot be replayed frame by frame")
    return LiveReplay(source, loop=loop) if live and not source.live else source


def open_source(spec: str | Path, *, fps: float = 20.0, live: bool | None = None, loop: bool = False) -> Source:
    """``phantom[:N]``, a capture device (V4L2 index, /dev/video*, GStreamer pipeline with "!"), an OpenIGTLink
    server's IMAGE stream (``igtl://HOST:PORT/DEVICE``), a DICOM file
    (.dcm / .dicom or the DICM marker), a video file, an image file, a folder of images or a glob. ``fps``
    paces images and the phantom, and DICOM files that state no frame timing."""
    text = str(spec)
    return as_live(_live(text) or _replay(text, fps), live, loop=loop)


def open_sources(specs: Sequence[str | Path], *, fps: float = 20.0, live: bool | None = None) -> list[Source]:
    """Consecutive image arguments form one source (so N files calibrate together); others stand alone. Files
    that share a name (``IM_0001`` in several series folders) get the folders in front, so outputs stay distinct."""
    sources: list[Source] = []
    images: list[str] = []
    for spec in map(str, specs):
        if not _stands_alone(spec):
            images.append(spec)
            continue
        if images:
            sources.append(ImageSource(images, fps=fps))
            images = []
        sources.append(_live(spec) or _replay(spec, fps))
    if images:
        sources.append(ImageSource(images, fps=fps))
    _distinct_outputs(sources)
    return [as_live(s, live) for s in sources]


def _distinct_outputs(sources: Sequence[Source]) -> None:
    """Output names that no two sources share: a video's or DICOM's stem, each image's name (one call over all)."""
    owners: list[tuple[Source, int | None]] = []
    paths: list[Path] = []
    for source in sources:
        if isinstance(source, (VideoSource, DicomSource)):
            owners.append((source, None))
            paths.append(Path(source.name))
        elif isinstance(source, ImageSource):
            owners += [(source, i) for i in range(len(source.paths))]
            paths += source.paths
    for (source, index), name in zip(owners, distinct_names(paths)):
        if index is None:
            source.stem = name
        else:
            source.names[index] = name
    # a stream's frames are named STEM_<number> (videos, DICOM, the phantom): an image with such a name steps aside
    stems = [source.stem for source in sources if not isinstance(source, ImageSource)]
    if stems:
        frame_name = re.compile("^(?:%s)_\\d+$" % "|".join(map(re.escape, stems)))
        for source in sources:
            if isinstance(source, ImageSource):
                source.names = [f"{n}_image" if frame_name.match(n) else n for n in source.names]


def frame_size(source: Source) -> tuple[int, int] | None:
    """(height, width) of a replay source's frames, read from its first frame (all its frames share it); None for a
    live device, which is not touched before the run (a replay played as a device is read through)."""
    replay = source.source if isinstance(source, LiveReplay) else source
    if replay.live:
        return None
    for frame in replay.frames_from(0):
        return tuple(frame.image.shape[:2])  # type: ignore[return-value]
    raise SourceError(f"{source.name}: no frames")


def spread_indices(total: int, count: int) -> list[int]:
    """``count`` frame indices evenly spread over ``total`` frames, first and last included."""
    return sorted(set(np.linspace(0, total - 1, min(count, total)).round().astype(int).tolist()))


STREAM_SAMPLE = 10  # reference frames taken from a video or stream when no count is given


def sample_frames(sources: Sequence[Source], count: int | None) -> list[Frame]:
    """``count`` frames evenly spread over each source; without a count, every given image and
    STREAM_SAMPLE frames of each video or stream. Live sources have no end to spread over: their next frames."""
    picked: list[Frame] = []
    for source in sources:
        if source.live:
            picked += itertools.islice(source, count or STREAM_SAMPLE)
            continue
        total = source.count
        if total is None:  # containers without a frame count: count by decoding once
            total = sum(1 for _ in source)
        if total == 0:
            raise SourceError(f"{source.name}: no frames")
        n = count or (total if isinstance(source, ImageSource) else STREAM_SAMPLE)
        wanted = set(spread_indices(total, n))
        picked += [f for f in source if f.id in wanted]
    return picked
