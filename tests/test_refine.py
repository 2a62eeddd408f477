"""GrabCut refinement: the original's recipe, its fallback, and its place in the frame path."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from PIL import Image

from benchmarks.original_coseg import refine as original_refine
from pipeline import cli
from pipeline.segment.refine import KERNEL, grabcut


@pytest.fixture(scope="module")
def labelled(ultrabones):
    name = "162705.png"
    image = cv2.imread(str(ultrabones / "labelled" / "images" / name), cv2.IMREAD_GRAYSCALE)
    truth = cv2.imread(str(ultrabones / "labelled" / "bone_region_masks" / name), cv2.IMREAD_GRAYSCALE) > 0
    return image, truth


def test_grabcut_step_equals_the_originals_on_a_real_frame(labelled) -> None:
    image, truth = labelled
    pil = Image.fromarray(image).resize((131, 112), Image.Resampling.LANCZOS)
    grid = cv2.resize(truth.astype(np.uint8), (16, 14), interpolation=cv2.INTER_AREA) > 0
    stretched = np.array(Image.fromarray(grid).resize(pil.size, Image.Resampling.NEAREST)).astype(np.uint8)
    ours = grabcut(np.asarray(pil), stretched)
    np.testing.assert_array_equal(ours, original_refine(pil, grid))
    # only the uncertain band between the eroded foreground and the eroded background may change
    definite = (cv2.erode(stretched, KERNEL) == 1) | (cv2.erode(1 - stretched, KERNEL) == 1)
    np.testing.assert_array_equal(ours[definite], stretched[definite])
    assert (ours != stretched).any()


@pytest.mark.parametrize("fill", [0, 1])
def test_grabcut_keeps_the_mask_when_it_cannot_run(labelled, fill) -> None:
    gray = cv2.resize(labelled[0], (40, 32), interpolation=cv2.INTER_AREA)
    mask = np.full(gray.shape, fill, np.uint8)  # no background (or no foreground) to fit a model on
    np.testing.assert_array_equal(grabcut(gray, mask), mask)


@pytest.mark.parametrize("resampling", ["area", "bilinear-aa"])
def test_refined_masks_through_the_frame_path(model, random_identity, labelled, resampling) -> None:
    from calibration.calibrate import CalibrationSettings, calibrate
    from calibration.clustering import KMeansSettings
    from models.preprocess import Geometry
    from pipeline.infer.backend import TorchBackend
    from pipeline.infer.deployment import Deployment
    from pipeline.segment.segmenter import BoneSegmenter

    image = labelled[0]
    geometry = Geometry.fit(image.shape, roi=(40, 30, 700, 880), input_size=(48, 64), resampling=resampling)
    settings = CalibrationSettings(kmeans=KMeansSettings(k=3, sample_interval=1))
    ref = calibrate(model, random_identity, geometry, [image, image[::-1].copy()], ["a", "b"], settings, progress=False)
    # a bone cluster that covers part of the frame, so there is an edge to refine
    ref.foreground = (int(np.bincount(ref.calibration_labels[0].ravel()).argmin()),)
    deployment = Deployment.from_reference(model, random_identity.label, ref)
    plain = BoneSegmenter(ref, TorchBackend(deployment), random_identity).predict([image], overlay=True)[0]
    seg = BoneSegmenter(ref, TorchBackend(deployment), random_identity, refine="grabcut")
    refined = seg.predict([image], overlay=True)[0]
    assert seg.stages == ("host_to_device", "model_labelling", "refine", "mask_overlay", "device_to_host")
    assert refined.timings_ms["refine"] > 0
    assert refined.mask.shape == image.shape and set(np.unique(refined.mask)) <= {0, 255}
    np.testing.assert_array_equal(refined.patch_mask, plain.patch_mask)  # labels unchanged; only the mask is refined
    outside = np.ones(image.shape, bool)
    outside[40:740, 30:910] = False
    assert not refined.mask[outside].any()
    # the refined mask is the patch mask with its edges moved: mostly the same pixels, not all
    agree = (refined.mask == plain.mask).mean()
    assert 0.8 < agree < 1.0
    bone = refined.mask == 255
    assert (refined.overlay[bone] != np.repeat(image[bone][:, None], 3, axis=1)).any(axis=1).all()  # drawn as bone


def test_segment_refine_grabcut_cli(tmp_path, ultrabones) -> None:
    frames = sorted((ultrabones / "sweep_frames").glob("*.png"))[:2]
    ref = tmp_path / "ref.json"
    args = ["--weights", "random:0", "--no-progress"]
    assert cli.main(["calibrate", *map(str, frames), "--input-size", "32x40", "--k", "3", "--sample-interval", "1", "--out", str(ref), *args]) == 0
    out = tmp_path / "seg"
    assert cli.main(["segment", str(frames[0]), "--reference", str(ref), "--out", str(out), "--refine", "grabcut", *args]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["refine"] == "grabcut" and summary["timings_ms"]["refine"]["p50"] > 0
    assert cv2.imread(str(out / "masks" / f"{frames[0].stem}.png"), cv2.IMREAD_GRAYSCALE).shape == (811, 950)
