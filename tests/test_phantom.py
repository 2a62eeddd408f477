"""The synthetic phantom must be deterministic, look like bone-over-shadow and move slowly."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from pipeline.capture.phantom import Phantom, PhantomConfig, write_phantom


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return Phantom(PhantomConfig())


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_same_seed_and_index_give_identical_frames(phantom: Phantom) -> None:
    other = Phantom(PhantomConfig())
    for index in (0, 7, 1234):
        image_a, mask_a = phantom.frame(index)
        image_b, mask_b = other.frame(index)
        np.testing.assert_array_equal(image_a, image_b)
        np.testing.assert_array_equal(mask_a, mask_b)
    assert not np.array_equal(Phantom(PhantomConfig(seed=1)).frame(0)[0], phantom.frame(0)[0])


def test_shapes_dtypes_and_length() -> None:
    config = PhantomConfig(height=96, width=128, n_frames=12)
    phantom = Phantom(config)
    image, mask = phantom.frame(3)
    assert image.shape == mask.shape == (96, 128)
    assert image.dtype == np.uint8 and mask.dtype == np.bool_
    assert len(phantom) == 12
    assert phantom.frame(10_000)[0].shape == (96, 128)  # any index, past n_frames too
    with pytest.raises(ValueError, match="index"):
        phantom.frame(-1)


def test_mask_is_a_thick_band_in_the_lower_half(phantom: Phantom) -> None:
    h = phantom.config.height
    for index in (0, 45, 130):
        _, mask = phantom.frame(index)
        rows, cols = np.nonzero(mask)
        assert mask.sum() > 200
        assert rows.min() > 0.45 * h and rows.mean() < 0.85 * h
        assert cols.max() - cols.min() > 0.25 * phantom.config.width
        top_column = mask[:, int(np.median(cols))]
        assert 5 <= top_column.sum() <= 8  # 5-8 px thick at the top of the arc


def test_bone_is_bright_with_a_dark_shadow_below(phantom: Phantom) -> None:
    for index in (0, 60, 150):
        image, mask = phantom.frame(index)
        assert image[mask].mean() > image.mean() + 60
        above, below = [], []
        for col in np.nonzero(mask.any(axis=0))[0]:
            rows = np.nonzero(mask[:, col])[0]
            above.append(image[rows.min() - 12 : rows.min() - 2, col])
            below.append(image[rows.max() + 3 : rows.max() + 13, col])
        assert np.concatenate(below).mean() < np.concatenate(above).mean() - 30


def test_motion_is_small_between_frames_and_larger_over_seconds(phantom: Phantom) -> None:
    image_0, mask_0 = phantom.frame(0)
    image_1, mask_1 = phantom.frame(1)
    image_far, mask_far = phantom.frame(80)  # 4 s: half the lateral period
    assert not np.array_equal(image_0, image_1)
    assert _dice(mask_0, mask_1) > 0.7
    assert _dice(mask_0, mask_far) < _dice(mask_0, mask_1)
    near = np.abs(image_0.astype(int) - image_1).mean()
    far = np.abs(image_0.astype(int) - image_far).mean()
    assert near < far


def test_frames_are_fast(phantom: Phantom) -> None:
    phantom.frame(0)
    start = time.perf_counter()
    for index in range(20):
        phantom.frame(index)
    assert (time.perf_counter() - start) / 20 < 0.03  # target 15 ms; slack for loaded CI hosts


def test_write_phantom_writes_readable_pngs(tmp_path) -> None:
    config = PhantomConfig(height=64, width=80)
    paths = write_phantom(tmp_path, 3, config, step=2)
    assert [p.name for p in paths] == ["phantom_00000.png", "phantom_00002.png", "phantom_00004.png"]
    image, mask = Phantom(config).frame(2)
    np.testing.assert_array_equal(cv2.imread(str(paths[1]), cv2.IMREAD_UNCHANGED), image)
    written = cv2.imread(str(tmp_path / "masks" / "phantom_00002.png"), cv2.IMREAD_UNCHANGED)
    assert set(np.unique(written)) <= {0, 255}
    np.testing.assert_array_equal(written > 0, mask)


@pytest.mark.parametrize(
    ("field", "value"),
    [("height", 32), ("height", 0), ("width", -5), ("width", 63), ("fps", 0.0), ("fps", -1.0), ("n_frames", 0)],
)
def test_invalid_config_names_the_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        PhantomConfig(**{field: value})
