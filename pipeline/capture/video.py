"""Video files (MP4/AVI/MKV, any codec FFmpeg decodes) through PyAV, with the stream's own timestamps."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import av
import numpy as np

from pipeline.capture.frame import Frame, Source, SourceError, now_ns

VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv"}


class VideoSource(Source):
    """Decodes frame by frame to 8-bit gray (B-mode is gray; colour overlays from the scanner are dropped).

    A frame whose size or pixel format differs from the first, or a stream that ends well short of what its
    header promises (a truncated file), is a SourceError naming the file and the frame index.
    """

    def __init__(self, path: str | Path, *, threaded: bool = True) -> None:
        self.path = Path(path)
        self.name = str(self.path)
        self.stem = self.path.stem
        self.threaded = threaded  # frame threading decodes faster but adds delay: for replay, not live
        with self._open() as container:
            stream = container.streams.video[0]
            self._count = int(stream.frames) or None
            rate = stream.average_rate or stream.guessed_rate
            self.fps = float(rate) if rate else None
            self.size = (stream.codec_context.height, stream.codec_context.width)
            # Frames the header promises: its count, else the video stream's duration x rate (containers such as MKV
            # hold no count). The container's duration is the longest stream's: an audio track may outlast the video.
            if stream.duration is not None and stream.time_base is not None:
                duration_s = float(stream.duration * stream.time_base)
            elif len(container.streams) == 1 and container.duration:
                duration_s = container.duration / av.time_base
            else:
                duration_s = None
            self._expected = self._count or (round(duration_s * self.fps) if duration_s and self.fps else None)

    def _open(self) -> av.container.InputContainer:
        if not self.path.is_file():
            raise SourceError(f"{self.path}: no such video file")
        try:
            container = av.open(str(self.path))
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise SourceError(f"{self.path}: cannot open as video ({exc})") from None
        if not container.streams.video:
            container.close()
            raise SourceError(f"{self.path}: has no video stream")
        if container.streams.video[0].codec_context is None:
            container.close()
            raise SourceError(
                f"{self.path}: no decoder for its video stream (a codec this FFmpeg build lacks, or a damaged header)"
            )
        return container

    @property
    def count(self) -> int | None:
        return self._count

    def __iter__(self) -> Iterator[Frame]:
        with self._open() as container:
            stream = container.streams.video[0]
            if self.threaded:
                stream.thread_type = "AUTO"
            index = 0
            first: tuple[int, int, str] | None = None
            try:
                for frame in container.decode(stream):
                    layout = (frame.width, frame.height, frame.format.name)
                    first = first or layout
                    if layout != first:  # the model's grid and the overlay writer are fixed at the first frame
                        raise SourceError(
                            f"{self.path}: frame {index} is {layout[0]}x{layout[1]} {layout[2]}, but the stream "
                            f"began {first[0]}x{first[1]} {first[2]}; a mid-stream change is not supported"
                        )
                    image = frame.to_ndarray(format="gray")
                    ts = float(frame.time) if frame.time is not None else (index / self.fps if self.fps else None)
                    yield Frame(index, np.ascontiguousarray(image), f"{self.stem}_{index:06d}", ts, now_ns())
                    index += 1
            except av.FFmpegError as exc:
                raise SourceError(f"{self.path}: decoding failed at frame {index} ({exc})") from None
        if self._expected and index < self._expected - 1:  # one frame of slack for duration x rate rounding
            raise SourceError(f"{self.path}: ended at frame {index} of {self._expected} (truncated file?)")
