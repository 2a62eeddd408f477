"""Replay pacing from a timestamps file (run --timestamps): the format, its checks, and pacing that follows it."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.capture.frame import SourceError
from pipeline.capture.open import open_source
from pipeline.capture.pacing import PacedSource
from pipeline.capture.ranges import FrameRange, select_frames
from pipeline.capture.timestamps import TimestampedSource, read_timestamps


def test_both_formats(tmp_path: Path) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_text("# seconds\n0.0\n0.05\n\n0.25\n")
    assert read_timestamps(plain) == {0: 0.0, 1: 0.05, 2: 0.25}
    csv = tmp_path / "times.csv"
    csv.write_text("frame,seconds\n3,1.5\n4,1.6\n7,2.0\n")
    assert read_timestamps(csv) == {3: 1.5, 4: 1.6, 7: 2.0}


@pytest.mark.parametrize(
    "text, problem",
    [("0\n0.1\n0.05\n", "line 3: time 0.05 s before 0.1 s"), ("0,0\n2,1\n2,2\n", "line 3: frame 2 after frame 2"),
     ("0\nabc\n", "line 2: 'abc' is not"), ("1,2,3\n", "line 1: '1,2,3'"), ("-1.5,2\n", "line 1: frame -1.5"), ("#\n", "holds no times")],
)
def test_bad_lines_are_named(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "t.txt"
    path.write_text(text)
    with pytest.raises(SourceError, match=problem.replace("(", r"\(").replace(".", r"\.")):
        read_timestamps(path)


def test_too_few_times_are_refused_before_any_frame(ultrabones: Path, tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("\n".join(str(i / 10) for i in range(40)))
    with pytest.raises(SourceError, match="no time for frame 40 .*uses frames 0-79"):
        TimestampedSource(open_source(ultrabones / "sweep_frames"), read_timestamps(path), path)
    TimestampedSource(open_source(ultrabones / "sweep_frames"), read_timestamps(path), path, 10, 40)  # the range used is covered
    every = tmp_path / "all.txt"
    every.write_text("\n".join(str(i / 10) for i in range(80)))
    TimestampedSource(open_source(ultrabones / "sweep_frames"), read_timestamps(every), every, 0, 500)  # a --stop past the end


def test_pacing_follows_the_file(ultrabones: Path, tmp_path: Path) -> None:
    """The due time of each frame is the file's time (as its source_ts), not the folder's 20 fps; releases are
    never earlier than that schedule."""
    times = [0.0, 0.02, 0.15, 0.17, 0.3]
    path = tmp_path / "times.csv"
    path.write_text("".join(f"{i},{t}\n" for i, t in enumerate(times, start=2)))
    folder = ultrabones / "sweep_frames"
    source = select_frames(TimestampedSource(open_source(folder), read_timestamps(path), path, 2, 7), FrameRange(2, 7))
    released = list(PacedSource(source, "realtime"))
    assert [f.id for f in released] == [2, 3, 4, 5, 6]
    assert [f.source_ts for f in released] == times  # each frame's due time: start + (its time - the first time)
    span = (released[-1].capture_ns - released[0].capture_ns) / 1e9
    assert span >= times[-1] - times[0] - 1e-3  # on that schedule, never ahead (the folder's own 20 fps would take 0.2 s)
