"""Frame ranges: a part of a replay (``--start``, ``--stop``, ``--max-frames``) as a Source of its own.

Frames keep the source's own ids and names, so masks and reports name the true frame of the recording.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterator

from pipeline.capture.frame import Frame, Source, SourceError, WrappedSource


@dataclass(frozen=True)
class FrameRange:
    """Frames ``start`` (0-based) up to ``stop`` (exclusive), at most ``max_frames`` of them."""

    start: int = 0
    stop: int | None = None
    max_frames: int | None = None

    def __post_init__(self) -> None:
        if self.stop is not None and self.stop <= self.start:
            raise SourceError(f"--start {self.start} / --stop {self.stop}: the range is empty (start must be below stop)")

    @property
    def end(self) -> int | None:
        """One past the last frame id the range can take (None: to the source's end)."""
        ends = [e for e in (self.stop, None if self.max_frames is None else self.start + self.max_frames) if e is not None]
        return min(ends) if ends else None

    @property
    def whole(self) -> bool:
        return self.start == 0 and self.end is None

    def check(self, source: Source) -> None:
        """A start beyond a source whose length is known is refused before any work."""
        if source.count is not None and self.start >= source.count:
            raise SourceError(f"{source.name}: --start {self.start}, but it has {source.count} frames (ids 0-{source.count - 1})")

    def to_dict(self) -> dict[str, int | None]:
        return {"start": self.start, "stop": self.stop, "max_frames": self.max_frames}


class RangedSource(WrappedSource):
    """``source``'s frames in ``frames``: images are sliced, other sources skip what comes before the start."""

    def __init__(self, source: Source, frames: FrameRange) -> None:
        frames.check(source)
        super().__init__(source)
        self.frames = frames

    @property
    def count(self) -> int | None:
        total, end = self.source.count, self.frames.end
        if total is None:
            return None
        return max(0, min(total, end if end is not None else total) - self.frames.start)

    def __iter__(self) -> Iterator[Frame]:
        end = self.frames.end
        return itertools.islice(self.source.frames_from(self.frames.start), None if end is None else end - self.frames.start)


def select_frames(source: Source, frames: FrameRange) -> Source:
    """``source`` restricted to ``frames``; the source itself for the whole range."""
    return source if frames.whole else RangedSource(source, frames)
