"""`bonestream experiment`: co-segmentation sets, the three experiments and their outputs, on real UltraBones
frames with random weights (the scores are plumbing; the tests check what was run and how it was scored)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from calibration.calibrate import CalibrationSettings
from calibration.clustering import KMeansSettings
from pipeline.cli import main
from pipeline.evaluate import score_masks
from pipeline.infer.select import BackendSpec
from pipeline.offline import GeometryOptions
from pipeline.study.cosegment import Cosegmenter
from pipeline.study.experiments import run_noise, run_pairs, run_sizes
from pipeline.study.labelled import LabelledFrame, StudyError, check_count, draw_subsets, load_labelled
from pipeline.study.noise import SCALES, add_noise, noise_fields
from pipeline.study.report import STAMP, write_experiment


@pytest.fixture(scope="module")
def frames(ultrabones: Path) -> list[LabelledFrame]:
    return load_labelled(ultrabones / "labelled" / "images", ultrabones / "labelled" / "bone_region_masks")


@pytest.fixture(scope="module")
def coseg(model, random_identity) -> Cosegmenter:
    geometry = GeometryOptions(input_size=(32, 40), resampling="area")
    settings = CalibrationSettings(kmeans=KMeansSettings(k=3, sample_interval=1))
    return Cosegmenter(model, random_identity, geometry, settings, BackendSpec("torch", "cpu"))


def _stamped(png: Path) -> bool:
    """The red RANDOM WEIGHTS line drawn across a figure's top."""
    top = cv2.imread(str(png))[:40]
    return np.count_nonzero((top[..., 2] > 200) & (top[..., 1] < 60) & (top[..., 0] < 60)) > 200


def test_a_sets_masks_are_its_calibration_labels(coseg: Cosegmenter, frames: list[LabelledFrame]) -> None:
    chosen = frames[:3]
    ref, preds, others = coseg.run([f.image for f in chosen], [f.name for f in chosen], others=[frames[5].image])
    expected = np.isin(ref.calibration_labels, ref.foreground)
    assert np.array_equal(np.stack([p.patch_mask for p in preds]), expected)
    assert len(others) == 1 and others[0].mask.shape == frames[5].size
    assert ref.frames == [f.name for f in chosen]


def test_subsets_are_distinct_seeded_and_exhaustive_when_few() -> None:
    drawn = draw_subsets(8, 3, 5, np.random.default_rng(1))
    assert len(set(drawn)) == 5 and all(len(s) == 3 and list(s) == sorted(s) for s in drawn)
    assert draw_subsets(8, 3, 5, np.random.default_rng(1)) == drawn
    assert draw_subsets(4, 3, 10, np.random.default_rng(1)) == [(0, 1, 2), (0, 1, 3), (0, 2, 3), (1, 2, 3)]


def test_sizes_scores_each_set_and_its_held_out_frames_apart_and_stamps_outputs(coseg, frames, tmp_path: Path) -> None:
    result = run_sizes(coseg, frames, [2, 3], repeats=1, seed=1, held_out=True, progress=False)
    doc = result.doc
    assert doc["random_weights"] is True and "RANDOM WEIGHTS" in doc["note"]
    expected = draw_subsets(8, 2, 1, np.random.default_rng(1))[0]
    assert doc["groups"][0]["sets"][0]["frames"] == [frames[i].name for i in expected]
    for group, size in zip(doc["groups"], (2, 3)):
        (s,) = group["sets"]
        assert group["size"] == size and len(s["frames"]) == size
        assert [i["name"] for i in s["images"]] == s["frames"] == s["reference"]["frames"]
        assert {i["name"] for i in s["held_out"]} == {f.name for f in frames} - set(s["frames"])
        assert group["summary"]["n_images"] == size and group["held_out_summary"]["n_images"] == 8 - size
        assert group["summary"]["mean_dice"] == pytest.approx(np.mean([i["dice"] for i in s["images"]]))
    paths = write_experiment(result, tmp_path)
    assert [p.name for p in paths] == ["experiment.json", "experiment.md", "sizes.png"]
    assert json.loads(paths[0].read_text())["groups"][1]["size"] == 3
    md = paths[1].read_text()
    assert STAMP in md and "| 3 frames | 1 | 3 |" in md and "held-out" in md
    assert _stamped(paths[2])


def test_sizes_above_the_labelled_frames_are_refused(frames) -> None:
    with pytest.raises(StudyError, match=r"--sizes 10: a set of 10 frames needs 10 labelled frames, only 8 given"):
        check_count(frames, 10, "--sizes 10")


def test_pairs_compare_same_and_cross_domain_scored_at_each_domains_own_size(coseg, frames, tmp_path: Path) -> None:
    # a second domain built from the same real frames: mirrored and at half size (the shared data holds no other
    # bone domain with bone masks)
    half = (frames[0].size[1] // 2, frames[0].size[0] // 2)
    mirrored = [
        LabelledFrame(f.name, cv2.resize(cv2.flip(f.image, 1), half, interpolation=cv2.INTER_AREA),
                      cv2.resize(cv2.flip(f.truth.astype(np.uint8), 1), half, interpolation=cv2.INTER_NEAREST) > 0)
        for f in frames
    ]
    result = run_pairs(coseg, {"A": frames, "B": mirrored}, 2, repeats=1, seed=0, progress=False)
    groups = {g["label"]: g for g in result.doc["groups"]}
    assert list(groups) == ["A same", "A cross", "B same", "B cross"]
    b_same, b_cross = groups["B same"]["sets"][0], groups["B cross"]["sets"][0]
    assert len(b_same["frames"]) == 2 and len(b_cross["frames"]) == 4  # calibrated on A's and B's frames together
    truth_px = {f.name: int(f.truth.sum()) for f in mirrored}
    for image in b_cross["images"]:  # scored against B's own (half-size) truth
        assert image["truth_pixels"] == truth_px[image["name"]]
    assert [i["name"] for i in b_same["images"]] == [i["name"] for i in b_cross["images"]]
    assert any("resized" in c for c in result.doc["conventions"])
    paths = write_experiment(result, tmp_path)
    assert paths[-1].name == "pairs.png" and _stamped(paths[-1])


def test_noise_scale_is_as_stated_on_a_real_frame(frames) -> None:
    gray = frames[0].image
    field = noise_fields([gray.shape], seed=3)[0]
    assert np.array_equal(add_noise(gray, 0.0, field), gray)
    mid = (gray > 100) & (gray < 155)  # far from 0 and 255 at these levels: no clipping
    for scale, eps in (("normalised", 0.5), ("unit", 0.1)):
        noisy = add_noise(gray, eps, field, scale).astype(np.float32)
        assert (noisy - gray)[mid].std() == pytest.approx(eps * SCALES[scale], rel=0.03)
    assert SCALES["normalised"] == pytest.approx(255 * (0.229 + 0.224 + 0.225) / 3)
    assert np.array_equal(noise_fields([gray.shape], seed=3)[0], field)


def test_noise_recalibrates_per_eps_on_noisy_frames(coseg, frames, tmp_path: Path) -> None:
    result = run_noise(coseg, frames, [0.0, 2.0], scale="normalised", n=2, seed=0, progress=False)
    doc = result.doc
    assert [g["eps"] for g in doc["groups"]] == [0.0, 2.0]
    chosen = doc["parameters"]["frames"]
    assert chosen == [frames[0].name, frames[-1].name]  # evenly spread, first and last
    # eps 0 is the clean co-segmentation of those frames, with the geometry of the clean frames
    clean = [f for f in frames if f.name in chosen]
    _, preds, _ = coseg.run([f.image for f in clean], chosen)
    assert [i["dice"] for i in doc["groups"][0]["sets"][0]["images"]] == [score_masks(p.mask, f.truth).dice for p, f in zip(preds, clean)]
    assert doc["groups"][0]["sets"][0]["reference"]["id"] != doc["groups"][1]["sets"][0]["reference"]["id"]
    assert [label for label, _, _ in result.examples] == ["eps 0", "eps 2"]
    assert result.examples[0][1].shape == (*frames[0].size, 3)
    paths = write_experiment(result, tmp_path)
    assert [p.name for p in paths[2:]] == ["noise.png", "noise_examples.png"] and all(_stamped(p) for p in paths[2:])
    assert "normalised: eps x 57.63 gray levels" in paths[1].read_text()


def test_cli_refuses_bad_input_in_one_line_before_the_model_loads(ultrabones: Path, tmp_path: Path, capsys) -> None:
    labelled = ultrabones / "labelled"
    base = ["experiment", "sizes", str(labelled / "images"), "--truth", str(labelled / "bone_region_masks"), "--out", str(tmp_path / "o")]
    assert main([*base, "--sizes", "2,10", "--weights", "official"]) == 2  # official weights are absent: never reached
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--sizes 10" in err and "only 8 given" in err
    masks = tmp_path / "masks"
    masks.mkdir()
    (masks / "162705.png").write_bytes((labelled / "bone_region_masks" / "162705.png").read_bytes())
    assert main(["experiment", "noise", str(labelled / "images"), "--truth", str(masks), "--out", str(tmp_path / "o")]) == 2
    assert "no truth mask named 163296" in capsys.readouterr().err
    for bad in (["pairs", "--domain", "A=nocolon", "--out", "x"], ["noise", "f", "--truth", "t", "--eps", "1,-2", "--out", "x"]):
        with pytest.raises(SystemExit) as exc:
            main(["experiment", *bad])
        assert exc.value.code == 2


def test_cli_sizes_end_to_end(ultrabones: Path, tmp_path: Path, capsys) -> None:
    labelled = ultrabones / "labelled"
    out = tmp_path / "sizes"
    argv = ["experiment", "sizes", str(labelled / "images"), "--truth", str(labelled / "bone_region_masks"), "--sizes", "2",
            "--repeats", "1", "--input-size", "32x40", "--resampling", "area", "--k", "3", "--sample-interval", "1",
            "--weights", "random:0", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    doc = json.loads((out / "experiment.json").read_text())
    assert doc["random_weights"] and doc["weights"]["seed"] == 0 and doc["calibration"]["kmeans"]["k"] == 3
    assert doc["groups"][0]["sets"][0]["reference"]["input_size"] == [32, 40]
    assert STAMP in capsys.readouterr().out and _stamped(out / "sizes.png")
