"""A reference serves sources of another frame size when its imaging area fits them (Geometry.at_frame_size):
the UltraBones stills (950x811) and the same exam's MP4 (950x812, one row padded by the encoder).

Random weights: masks here check plumbing, never bone.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from models.errors import FrameSizeError
from models.preprocess import Geometry
from pipeline.cli import main

SMALL = ["--input-size", "32x40", "--k", "3", "--sample-interval", "2", "--no-progress"]


@pytest.fixture(scope="module")
def stills_reference(ultrabones: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A reference calibrated on two sweep stills (950x811), the whole frame as ROI, random:0 weights."""
    stills = sorted((ultrabones / "sweep_frames").glob("*.png"))[:2]
    ref = tmp_path_factory.mktemp("ref") / "ref.json"
    assert main(["calibrate", *map(str, stills), "--roi", "full", "--out", str(ref), "--weights", "random:0", *SMALL]) == 0
    return ref


def test_a_padded_row_keeps_every_patch_and_a_frame_the_roi_does_not_fit_is_refused(ultrabones: Path) -> None:
    still = cv2.imread(str(sorted((ultrabones / "sweep_frames").glob("*.png"))[0]), cv2.IMREAD_GRAYSCALE)
    geometry = Geometry.fit(still.shape[:2], input_size=(32, 40))  # roi: the whole 811 x 950 still
    padded = np.vstack([still, np.zeros((1, still.shape[1]), np.uint8)])
    fitted = geometry.at_frame_size(padded.shape[:2], "clip.mp4")
    assert fitted.frame_size == (812, 950) and fitted.roi == geometry.roi and fitted.grid == geometry.grid
    assert np.array_equal(fitted.plane(padded), geometry.plane(still))  # the same pixels reach every patch
    rows, _ = fitted.frame_lookup()
    assert rows[-1] == fitted.grid[0]  # the padded row lies outside the ROI: masked zero
    assert geometry.at_frame_size(still.shape[:2]) is geometry
    with pytest.raises(FrameSizeError, match=r"small\.mp4: frames are 950x810 \(w x h\), calibrated 950x811.*does not fit"):
        geometry.at_frame_size((810, 950), "small.mp4")


def test_stills_reference_segments_the_exam_video_with_its_own_weights(ultrabones: Path, stills_reference: Path, tmp_path: Path) -> None:
    """The issue's reproduction: calibrate on the sweep PNGs, then segment the MP4 with no --weights."""
    ref = stills_reference
    out = tmp_path / "seg"
    mp4 = ultrabones / "sweep_clip_frames150-889_20fps.mp4"
    assert main(["segment", str(mp4), "--reference", str(ref), "--out", str(out), "--start", "3", "--max-frames", "2", "--no-progress"]) == 0
    masks = sorted((out / "masks").glob("*.png"))
    assert [m.stem for m in masks] == ["sweep_clip_frames150-889_20fps_000003", "sweep_clip_frames150-889_20fps_000004"]
    assert cv2.imread(str(masks[0]), cv2.IMREAD_GRAYSCALE).shape == (812, 950)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["geometry"]["frame_size"] == [812, 950] and summary["weights"]["label"] == "random:0"
    assert summary["reference"]["id"] == json.loads(ref.read_text())["sha256"][:16]  # the file's id, not the fitted copy's
    assert summary["range"] == {"start": 3, "stop": None, "max_frames": 2}
    assert [(s["first_id"], s["last_id"], s["frames"]) for s in summary["sources"]] == [(3, 4, 2)]


def test_a_source_the_roi_does_not_fit_is_refused_before_the_model_loads(
    ultrabones: Path, stills_reference: Path, tmp_path: Path, capsys, caplog
) -> None:
    ref = stills_reference
    small = tmp_path / "small"
    small.mkdir()
    still = sorted((ultrabones / "sweep_frames").glob("*.png"))[0]
    cv2.imwrite(str(small / "a.png"), cv2.imread(str(still), cv2.IMREAD_GRAYSCALE)[:700])
    capsys.readouterr()
    caplog.clear()
    assert main(["segment", str(small), "--reference", str(ref), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{small}: frames are 950x700" in err and "calibrated 950x811" in err
    assert not [r for r in caplog.records if "RANDOM WEIGHTS" in r.getMessage()]  # refused before any model was made
    assert not (tmp_path / "o" / "masks").exists()


def test_a_replay_played_live_is_sized_before_the_run(ultrabones: Path) -> None:
    """--live on a file (or live = true in a sources file) still has its frame size checked before the model
    loads: frame_size reads through the live wrapper; a real device is only sized at its first frames."""
    from pipeline.capture.open import frame_size, open_source

    live = open_source(ultrabones / "sweep_frames", live=True)
    assert live.live and frame_size(live) == (811, 950)
    live.close()
