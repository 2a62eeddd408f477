"""Frame ranges (--start/--stop/--max-frames) as a capture-layer Source: true frame ids, real files."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.capture.frame import SourceError
from pipeline.capture.open import open_source
from pipeline.capture.ranges import FrameRange, RangedSource, select_frames
from pipeline.cli import main


def test_video_range_keeps_the_source_ids(ultrabones: Path) -> None:
    video = open_source(ultrabones / "sweep_clip_frames150-889_20fps.mp4")
    ranged = select_frames(video, FrameRange(start=4, stop=9, max_frames=3))
    assert ranged.count == 3
    frames = list(ranged)
    assert [f.id for f in frames] == [4, 5, 6]
    assert frames[0].name == "sweep_clip_frames150-889_20fps_000004" and frames[0].source_ts == pytest.approx(4 / 20)
    assert select_frames(video, FrameRange()) is video


def test_image_range_is_a_slice_of_the_folder(ultrabones: Path) -> None:
    folder = ultrabones / "sweep_frames"
    stems = [p.stem for p in sorted(folder.glob("*.png"))]
    ranged = RangedSource(open_source(folder), FrameRange(start=78))
    frames = list(ranged)
    assert ranged.count == 2 and [f.id for f in frames] == [78, 79] and [f.name for f in frames] == stems[78:]


def test_bad_ranges_are_refused(ultrabones: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(SourceError, match="range is empty"):
        FrameRange(start=5, stop=5)
    with pytest.raises(SourceError, match="--start 80, but it has 80 frames"):
        RangedSource(open_source(ultrabones / "sweep_frames"), FrameRange(start=80))
    args = ["segment", str(ultrabones / "sweep_frames"), "--reference", str(tmp_path / "none.json"), "--out", str(tmp_path / "o")]
    assert main([*args, "--start", "10", "--stop", "4"]) == 2
    assert "start must be below stop" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--stop", "0"])  # checked when parsed
    assert "--stop" in capsys.readouterr().err


def test_a_loop_cannot_be_bounded_by_a_range(tmp_path: Path, capsys) -> None:
    """--loop replays without end while --stop/--max-frames bound one pass: refused together, before any model."""
    assert main(["run", "phantom:4", "--reference", str(tmp_path / "none.json"), "--loop", "--max-frames", "2", "--no-publish"]) == 2
    assert "--loop replays the source without end" in capsys.readouterr().err
