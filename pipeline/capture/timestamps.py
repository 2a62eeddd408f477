"""Frame times from a file, for replay pacing that follows a recording's own clock (``run --timestamps``).

Format: one time in seconds per line (line i is frame i), or CSV lines ``frame,seconds`` (the source's frame id).
Blank lines and ``#`` comments are skipped, and a first line that is not numbers (a CSV header). Times never go
back, and frame ids rise.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterator

from pipeline.capture.frame import Frame, Source, SourceError, WrappedSource


def _numbers(text: str) -> list[float] | None:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        return None


def read_timestamps(path: Path) -> dict[int, float]:
    """Frame id -> seconds, validated; a bad line is one error naming the file and the line number."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"--timestamps {path}: cannot read it ({exc.__class__.__name__}: {exc})") from None
    times: dict[int, float] = {}
    last: tuple[int, float] | None = None
    numbered = 0
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        values = _numbers(text)
        numbered += 1
        if values is None and numbered == 1:
            continue  # a header
        if values is None or len(values) not in (1, 2) or not all(v == v and abs(v) != float("inf") for v in values):
            raise SourceError(f"--timestamps {path} line {number}: {text!r} is not 'seconds' or 'frame,seconds'")
        if len(values) == 2 and (values[0] < 0 or values[0] != int(values[0])):
            raise SourceError(f"--timestamps {path} line {number}: frame {values[0]:g} is not an index >= 0")
        frame, seconds = (len(times), values[0]) if len(values) == 1 else (int(values[0]), values[1])
        if last is not None and (frame <= last[0] or seconds < last[1]):
            what = f"frame {frame} after frame {last[0]}" if frame <= last[0] else f"time {seconds:g} s before {last[1]:g} s"
            raise SourceError(f"--timestamps {path} line {number}: {what}; frames must rise and times never go back")
        times[frame] = seconds
        last = (frame, seconds)
    if not times:
        raise SourceError(f"--timestamps {path}: holds no times")
    return times


class TimestampedSource(WrappedSource):
    """``source``'s frames with ``source_ts`` from a timestamps file, so PacedSource's "realtime" follows the file."""

    def __init__(self, source: Source, times: dict[int, float], path: Path, first: int = 0, end: int | None = None) -> None:
        super().__init__(source)
        self.times, self.path = times, path
        if source.count is not None:  # a --stop past the end asks for no frame beyond it
            end = source.count if end is None else min(end, source.count)
        if end is not None:  # the frames this run uses are known: every one needs a time, checked before any work
            missing = next((i for i in range(first, end) if i not in times), None)
            if missing is not None:
                raise SourceError(f"--timestamps {path}: no time for frame {missing} ({source.name} uses frames {first}-{end - 1})")

    def frames_from(self, start: int) -> Iterator[Frame]:
        for frame in self.source.frames_from(start):
            if frame.id not in self.times:
                raise SourceError(f"--timestamps {self.path}: no time for frame {frame.id} of {self.name}")
            yield dataclasses.replace(frame, source_ts=self.times[frame.id])

    def __iter__(self) -> Iterator[Frame]:
        return self.frames_from(0)
