"""The geometry is one object: crop, resize, the plane that crosses to the device, and patch labels back to the frame."""

from __future__ import annotations

import numpy as np
import pytest

from models.errors import FrameError
from models.preprocess import Geometry, detect_roi, fit_input_size, parse_roi, to_gray


def test_fit_keeps_aspect_with_patch_multiples() -> None:
    assert fit_input_size((811, 950), 224) == (224, 264)
    g = Geometry.fit((811, 950), short_side=224)
    assert g.input_size == (224, 264) and g.grid == (28, 33)
    assert Geometry.fit((811, 950), short_side=224, stride=4).grid == (55, 65)


def test_host_plane_crops_roi_and_resizes_in_uint8() -> None:
    frame = np.zeros((100, 120), np.uint8)
    frame[10:90, 20:100] = 200  # imaging area
    frame[0:5, :] = 255  # "UI" outside the ROI must not reach the model
    g = Geometry.fit(frame.shape, roi=(10, 20, 80, 80), input_size=(32, 32), resampling="area")
    x = g.plane(frame)
    assert x.shape == (32, 32) == g.plane_size and x.dtype == np.uint8 and not g.on_device
    assert np.all(x == 200)  # uniform ROI: nothing of the UI band leaked in


def test_device_resampling_sends_the_whole_gray_frame() -> None:
    frame = np.random.default_rng(1).integers(0, 255, (100, 120, 3), dtype=np.uint8)
    g = Geometry.fit(frame.shape[:2], roi=(10, 20, 80, 80), input_size=(32, 32), resampling="bilinear-aa")
    assert g.on_device and g.plane_size == (100, 120)
    np.testing.assert_array_equal(g.plane(frame), to_gray(frame))
    assert g.planes([frame, frame]).shape == (2, 100, 120)


def test_rgb_frames_become_gray_replicated() -> None:
    gray = np.random.default_rng(0).integers(0, 255, (40, 48), dtype=np.uint8)
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    g = Geometry.fit(gray.shape, input_size=(16, 24))
    np.testing.assert_array_equal(g.plane(rgb), g.plane(gray))
    assert to_gray(np.dstack([rgb, np.full_like(gray, 255)])).shape == gray.shape


def test_bad_frames_name_the_problem() -> None:
    g = Geometry.fit((40, 48), input_size=(16, 16))
    with pytest.raises(FrameError, match="frame 7: size 50x40"):
        g.plane(np.zeros((40, 50), np.uint8), "frame 7")
    with pytest.raises(FrameError, match="uint16"):
        g.plane(np.zeros((40, 48), np.uint16))
    with pytest.raises(FrameError, match="resampling 'nearest'"):
        Geometry.fit((40, 48), input_size=(16, 16), resampling="nearest")
    with pytest.raises(FrameError, match="does not fit"):
        Geometry.fit((40, 48), roi=(30, 0, 20, 48))


def patch_to_frame(g: Geometry, grid: np.ndarray) -> np.ndarray:
    """The renderer's mask path (two gathers through ``frame_lookup``), on a patch map of any values."""
    rows, cols = g.frame_lookup()
    padded = np.pad(grid, ((0, 1), (0, 1)))
    return padded[rows][:, cols]


def test_patch_map_back_to_frame_at_patch_centres() -> None:
    # ROI 64x64 at (10, 20) in a 100x120 frame, input 64x64 (no resize), stride 8 -> 8x8 grid
    g = Geometry.fit((100, 120), roi=(10, 20, 64, 64), input_size=(64, 64))
    grid = np.zeros(g.grid, np.uint8)
    grid[2, 5] = 255
    full = patch_to_frame(g, grid)
    assert full.shape == (100, 120)
    ys, xs = np.nonzero(full)
    # patch (2, 5) covers input pixels rows 16..23, cols 40..47 -> frame rows 26..33, cols 60..67
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (26, 33, 60, 67)
    assert full[:10].sum() == 0 and full[:, :20].sum() == 0  # zeros outside the ROI


def test_stride4_mapping_uses_nearest_centre() -> None:
    g = Geometry.fit((32, 32), input_size=(32, 32), stride=4)  # grid 7x7, centres at 3.5 + 4i
    assert g.grid == (7, 7)
    grid = np.arange(49).reshape(7, 7)
    full = patch_to_frame(g, grid)
    assert full[0, 0] == 0 and full[31, 31] == 48
    assert full[3, 0] == 0 and full[6, 0] == 7  # row 3 nearest centre 3.5 (patch 0); row 6 nearest 7.5 (patch 1)


def test_geometry_round_trips_and_roi_parsing() -> None:
    g = Geometry.fit((811, 950), roi=(0, 10, 800, 900), short_side=128, stride=4, resampling="area")
    assert Geometry.from_dict(g.to_dict()) == g
    frames = [np.pad(np.full((50, 60), 100, np.uint8), ((5, 5), (7, 3)))]
    assert detect_roi(frames) == (5, 7, 50, 60)
    assert parse_roi("full", frames) == (0, 0, 60, 70)
    assert parse_roi("1,2,3,4", frames) == (1, 2, 3, 4)
    with pytest.raises(FrameError, match="--roi"):
        parse_roi("left", frames)
