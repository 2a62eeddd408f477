"""Replay at recorded pace, at a fixed rate or as fast as possible, optionally looped.

Benchmarks need both paced input (as a device would deliver it) and as-fast-as-possible input; long soak runs
need a short file looped. Deadlines are measured from the first release (start + offset, never previous +
interval), so sleep overshoot never accumulates into drift.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from typing import Iterator, Literal, Union

from pipeline.capture.frame import Frame, Source, SourceError, now_ns

Pace = Union[Literal["realtime", "max"], float]


def sleep_until(deadline: float, stop: threading.Event) -> bool:
    """Wait until time.monotonic() reaches ``deadline``; False when ``stop`` is set first."""
    remaining = deadline - time.monotonic()
    return not (stop.wait(remaining) if remaining > 0 else stop.is_set())


def check_pace(pace: Pace) -> Pace:
    """``pace`` when it is "realtime", "max" or a finite number of frames per second > 0."""
    if pace in ("realtime", "max"):
        return pace
    if isinstance(pace, (int, float)) and not isinstance(pace, bool) and math.isfinite(pace) and pace > 0:
        return float(pace)
    raise ValueError(f'pace must be "realtime", "max" or frames per second > 0, got {pace!r}')


class PacedSource(Source):
    """Releases a replay source's frames on a schedule, stamping ``capture_ns`` at release (after the sleep).

    "realtime" follows the frames' ``source_ts`` (so recorded gaps are kept), a number is a fixed rate, "max"
    never waits. With ``loop`` the source restarts at its end; ids and timestamps continue (offset by one
    pass and one frame interval) and names gain ``_loopN``, so masks written by name do not overwrite.
    """

    def __init__(self, source: Source, pace: Pace = "realtime", *, loop: bool = False) -> None:
        if source.live:
            raise SourceError(f"{source.name}: a live source arrives at its own pace; pacing is for replay")
        self.source = source
        self.pace = check_pace(pace)
        self.loop = loop
        self.name, self.stem = source.name, source.stem
        self.fps = self.pace if isinstance(self.pace, float) else source.fps
        self._stop = threading.Event()

    @property
    def count(self) -> int | None:
        return None if self.loop else self.source.count

    def _media_time(self, frame: Frame) -> float:
        """Seconds on the recording's clock: source_ts, else id / fps."""
        if frame.source_ts is not None:
            return frame.source_ts
        if self.source.fps:
            return frame.id / self.source.fps
        raise SourceError(f"{self.source.name}: frame {frame.id} has no timestamp and the source no frame rate")

    def __iter__(self) -> Iterator[Frame]:
        start: float | None = None  # monotonic time of the first release
        first_media = 0.0
        ts_offset, id_offset, released, lap = 0.0, 0, 0, 0
        while True:
            first: Frame | None = None
            last: Frame | None = None
            for frame in self.source:
                media = self._media_time(frame) + ts_offset
                if start is None:
                    start, first_media = time.monotonic(), media
                if self.pace == "realtime":
                    deadline = start + (media - first_media)
                elif self.pace == "max":
                    deadline = start
                else:
                    deadline = start + released / self.pace
                if not sleep_until(deadline, self._stop):
                    return
                first, last = first or frame, frame
                name = frame.name if lap == 0 else f"{frame.name}_loop{lap}"
                yield dataclasses.replace(
                    frame, id=frame.id + id_offset, name=name, source_ts=media, capture_ns=now_ns()
                )
                released += 1
            if not self.loop or last is None:
                return
            span = self._media_time(last) - self._media_time(first)
            interval = 1.0 / self.source.fps if self.source.fps else span / max(last.id - first.id, 1)
            ts_offset += span + interval
            id_offset += last.id + 1
            lap += 1

    def interrupt(self) -> None:
        self._stop.set()

    def close(self) -> None:
        """Ends iteration, also from another thread while it sleeps."""
        self._stop.set()
        self.source.close()


def paced(source: Source, pace: Pace = "realtime", *, loop: bool = False) -> Source:
    """``source`` released at ``pace`` (see PacedSource); the source itself when there is nothing to do
    ("max" without loop), so live sources pass through unchanged."""
    if check_pace(pace) == "max" and not loop:
        return source
    return PacedSource(source, pace, loop=loop)
