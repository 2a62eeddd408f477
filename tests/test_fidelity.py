"""Fidelity to the original co-segmentation code: its preprocessing, saliency resize, preset, outlier removal."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.original_coseg import Original, adjusted_rand_index, cosegment, load
from calibration.calibrate import CalibrationSettings, calibrate, cls_cosines, extract
from calibration.clustering import KMeansSettings
from calibration.reference import Reference
from calibration.saliency import resize_nearest
from models.preprocess import Geometry
from pipeline import cli


@pytest.fixture(scope="module")
def sweep(ultrabones):
    paths = sorted((ultrabones / "sweep_frames").glob("*.png"))
    return [paths[i] for i in (0, 26, 53, 79)]


def test_pil_lanczos_plane_equals_the_originals_resized_image(sweep) -> None:
    image = cv2.imread(str(sweep[0]), cv2.IMREAD_GRAYSCALE)
    geometry = Geometry.fit(image.shape, short_side=224, resampling="pil-lanczos", round_sides=False)
    assert geometry.input_size == (224, 262)  # torchvision Resize(224) of 950 x 811: the long side truncated
    x, size = load(sweep[0], 224)
    theirs = np.rint((x[0, 0].numpy() * 0.229 + 0.485) * 255)
    assert size == geometry.input_size
    np.testing.assert_array_equal(geometry.plane(image).astype(np.float64), theirs)
    aliased = Geometry.fit(image.shape, short_side=224, resampling="lanczos", round_sides=False).plane(image)
    assert np.abs(aliased.astype(int) - theirs).max() > 20  # OpenCV's Lanczos-4 is another filter: kept, not the default


@pytest.mark.parametrize("low, grid", [((14, 16), (55, 64)), ((28, 33), (55, 65)), ((7, 9), (28, 33)), ((13, 13), (13, 13))])
def test_saliency_resize_equals_pils_nearest(low, grid) -> None:
    maps = np.random.default_rng(0).random((2, *low), dtype=np.float32)
    pil = np.stack([np.asarray(Image.fromarray(m).resize(grid[::-1], Image.Resampling.NEAREST)) for m in maps])
    np.testing.assert_array_equal(resize_nearest(maps, grid), pil)


def test_preset_original_alone_reproduces_the_original_partition(sweep, tmp_path) -> None:
    out = tmp_path / "original.json"
    argv = ["calibrate", *map(str, sweep), "--preset", "original", "--short-side", "64", "--weights", "random:0"]
    assert cli.main([*argv, "--out", str(out), "--no-progress"]) == 0
    ref = Reference.load(out)
    g = ref.geometry
    assert (g.roi, g.stride, g.resampling, g.input_size) == ((0, 0, 811, 950), 4, "pil-lanczos", (64, 74))
    settings = ref.settings
    assert settings["voting"] == {"tau": 0.065, "fraction": 0.75, "strict": True} and tuple(settings["heads"]) == (0, 2, 4, 5)

    from models.loader import load_model

    model, _ = load_model("random:0")
    original = cosegment(model, sweep, Original(load_size=64))
    theirs = np.concatenate([labels.ravel() for labels in original.labels])
    assert adjusted_rand_index(ref.calibration_labels.ravel(), theirs) == 1.0
    assert ref.k == original.k
    assert list(ref.votes) == original.votes.astype(int).tolist() and list(ref.foreground) == original.salient.tolist()


def test_an_explicit_option_overrides_the_preset(sweep, tmp_path) -> None:
    out = tmp_path / "r.json"
    argv = ["calibrate", *map(str, sweep[:2]), "--preset", "original", "--input-size", "32x40", "--stride", "8", "--k", "2"]
    assert cli.main([*argv, "--weights", "random:0", "--out", str(out), "--no-progress"]) == 0
    g = Reference.load(out).geometry
    assert (g.input_size, g.stride, g.resampling, g.roi[2:]) == ((32, 40), 8, "pil-lanczos", (811, 950))


def test_adjusted_rand_index() -> None:
    a = np.array([0, 0, 1, 1, 2, 2])
    assert adjusted_rand_index(a, np.array([5, 5, 3, 3, 9, 9])) == 1.0  # renamed clusters
    assert adjusted_rand_index(a, np.array([0, 1, 0, 1, 0, 1])) < 0.0


def test_outlier_frames_leave_clustering_and_voting_and_are_reported(model, random_identity, sweep) -> None:
    images = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in sweep]
    images.append(np.random.default_rng(1).integers(0, 256, images[0].shape, dtype=np.uint8))  # speckle, no anatomy
    names = [p.stem for p in sweep] + ["noise"]
    geometry = Geometry.fit(images[0].shape, input_size=(32, 40), resampling="area")
    _, _, cls_keys = extract(model, geometry, images, names, attention=False, cls=True, progress=False)
    cosine = cls_cosines(cls_keys)
    expected = torch.nn.CosineSimilarity(dim=1)(torch.from_numpy(cls_keys), torch.from_numpy(cls_keys).mean(0, keepdim=True))
    np.testing.assert_allclose(cosine, expected.numpy(), rtol=1e-5)
    threshold = float(np.sort(cosine)[1] + np.sort(cosine)[0]) / 2  # exactly one frame below it
    settings = CalibrationSettings(kmeans=KMeansSettings(k=3, sample_interval=1), remove_outliers=True, outlier_threshold=threshold)
    ref = calibrate(model, random_identity, geometry, images, names, settings, progress=False)
    left_out = names[int(np.argmin(cosine))]
    assert [o["frame"] for o in ref.settings["outliers"]] == [left_out]
    assert left_out not in ref.frames and len(ref.frames) == len(ref.calibration_labels) == len(names) - 1
    assert ref.mean_saliency.shape[0] == len(names) - 1
