"""`bonestream analyze` piece by piece on real UltraBones frames with random weights: the joint PCA, its colours
over the frame, bone fractions from truth masks, the stamp, the index and the command's refusals.

Everything here runs on random weights: it checks the plumbing, never what DINO's features show."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from calibration.calibrate import CalibrationSettings, calibrate
from calibration.clustering import KMeansSettings
from models.encoder import build_encoder
from models.facets import extract_facets
from models.preprocess import Geometry
from models.vit import DinoViT
from models.weights import WeightsIdentity
from pipeline.analysis.analyze import AnalysisSettings, analyze
from pipeline.analysis.pca import PCAAccumulator, to_uint8
from pipeline.analysis.truth import TruthError, bone_fraction, load_truth
from pipeline.capture.open import open_sources, sample_frames
from pipeline.cli import main
from pipeline.segment.render import RANDOM_STAMP, stamp_image

NAMES = ("162705", "163296")
SMALL = ["--input-size", "32x40", "--weights", "random:0", "--no-progress"]


def _frames(ultrabones: Path):
    return sample_frames(open_sources([str(ultrabones / "labelled" / "images" / f"{n}.png") for n in NAMES]), None)


def _geometry(frames) -> Geometry:
    return Geometry.fit(frames[0].image.shape[:2], input_size=(32, 40))


def _keys(model: DinoViT, geometry: Geometry, frames) -> np.ndarray:
    planes = torch.from_numpy(geometry.planes([f.image for f in frames]))
    return extract_facets(build_encoder(model, geometry, "cpu"), planes, (12,), ("key",)).facets[12, "key"].numpy()


def _reference_pca_colours(keys: np.ndarray) -> np.ndarray:
    """Independent joint PCA: SVD of all frames' centred descriptors, sign by largest loading, min-max to 0..255."""
    flat = keys.reshape(-1, keys.shape[-1]).astype(np.float64)
    centred = flat - flat.mean(axis=0)
    components = np.linalg.svd(centred, full_matrices=False)[2][:3]
    components *= np.sign(components[np.arange(3), np.abs(components).argmax(axis=1)])[:, None]
    coords = centred @ components.T
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    return np.rint((coords - lo) / (hi - lo) * 255).reshape(*keys.shape[:-1], 3)


def _red(image_bgr: np.ndarray) -> np.ndarray:
    b, g, r = (image_bgr[..., c].astype(int) for c in range(3))
    return (r > 180) & (g < 110) & (b < 110)


def test_streamed_pca_equals_the_joint_fit_over_all_frames(model: DinoViT, ultrabones: Path) -> None:
    frames = _frames(ultrabones)
    keys = _keys(model, _geometry(frames), frames)
    acc = PCAAccumulator(keys.shape[-1])
    for frame_keys in keys:  # one frame at a time, as the command streams them
        acc.add(frame_keys)
    pca = acc.fit(3)
    flat = keys.reshape(-1, keys.shape[-1]).astype(np.float64)
    centred = flat - flat.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    assert acc.n == flat.shape[0]
    np.testing.assert_allclose(np.abs(np.sum(pca.components * vt[:3], axis=1)), 1.0, atol=1e-6)
    np.testing.assert_allclose(pca.explained, s[:3] ** 2 / np.sum(s**2), rtol=1e-6)
    colours = to_uint8(pca.project(keys))
    assert np.abs(colours.astype(int) - _reference_pca_colours(keys)).max() <= 1
    per_channel = colours.reshape(-1, 3)
    assert (per_channel.min(axis=0) == 0).all() and (per_channel.max(axis=0) == 255).all()  # scaled over both frames
    alone = to_uint8(pca.project(keys[:1]))  # one frame scaled alone spans the range: the joint scaling differs
    assert not np.array_equal(alone, colours[:1])


def test_bone_fraction_counts_every_truth_pixel_once(ultrabones: Path) -> None:
    frames = _frames(ultrabones)
    truth = load_truth(ultrabones / "labelled" / "bone_region_masks", frames)
    assert set(truth) == set(NAMES) and truth[NAMES[0]].shape == frames[0].image.shape[:2]
    geometry = Geometry.fit(frames[0].image.shape[:2], roi=(100, 50, 600, 800), input_size=(32, 40))
    mask = truth[NAMES[0]]
    fraction = bone_fraction(mask, geometry)
    rows, cols = geometry.frame_lookup()
    pixels = np.bincount((rows[:, None] * 100 + cols[None, :]).ravel(), minlength=100 * 100).reshape(100, 100)[:4, :5]
    assert fraction.shape == geometry.grid and np.isfinite(fraction).all() and ((0 <= fraction) & (fraction <= 1)).all()
    top, left, h, w = geometry.roi
    assert round(float((fraction * pixels).sum())) == int(mask[top : top + h, left : left + w].sum())
    assert 0 < fraction.max() and fraction.min() < 1  # this frame has bone and background inside the ROI


def test_truth_must_match_the_frames_by_name_and_size(ultrabones: Path, tmp_path: Path) -> None:
    frames = _frames(ultrabones)
    masks = ultrabones / "labelled" / "bone_region_masks"
    (tmp_path / "few").mkdir()
    cv2.imwrite(str(tmp_path / "few" / f"{NAMES[0]}.png"), cv2.imread(str(masks / f"{NAMES[0]}.png")))
    with pytest.raises(TruthError, match=f"no mask named like frame {NAMES[1]}"):
        load_truth(tmp_path / "few", frames)
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), cv2.resize(cv2.imread(str(masks / f"{NAMES[0]}.png")), (475, 405)))
    with pytest.raises(TruthError, match=r"small\.png: size 475x405 .* differs from frame 162705 \(950x811\)"):
        load_truth(small, frames[:1])
    with pytest.raises(TruthError, match="one mask for 2 frames"):
        load_truth(masks / f"{NAMES[0]}.png", frames)
    assert set(load_truth(masks / f"{NAMES[1]}.png", frames[:1])) == {NAMES[0]}  # a single file pairs with the one frame


def test_images_are_the_joint_pca_over_the_frame_and_stamped_only_for_random_weights(
    model: DinoViT, ultrabones: Path, tmp_path: Path
) -> None:
    frames = _frames(ultrabones)
    geometry = _geometry(frames)
    expected = _reference_pca_colours(_keys(model, geometry, frames))
    rows, cols = geometry.frame_lookup()
    settings = AnalysisSettings(blocks=(12,), facets=("key",))
    file_identity = WeightsIdentity(kind="file", sha256="ab" * 32)
    for identity, out in ((file_identity, tmp_path / "file"), (WeightsIdentity(kind="random", seed=0), tmp_path / "random")):
        index = json.loads(analyze(model, identity, geometry, frames, out, settings, progress=False).read_text())
        assert index["random_weights"] is identity.is_random and index["weights"]["label"] == identity.label
        for i, frame in enumerate(frames):
            image = cv2.imread(str(out / frame.name / "pca" / "block12_key.png"))[..., ::-1].astype(int)
            painted = expected[i][rows][:, cols]  # full ROI: every frame pixel takes its nearest patch's colour
            differs = np.abs(image - painted).max(axis=2) > 1
            if identity.is_random:
                ys, xs = np.nonzero(differs)
                box_h, box_w = stamp_image(RANDOM_STAMP, image.shape[1]).shape[:2]  # its size is OpenCV's font metrics'
                assert ys.max() < box_h and xs.max() < box_w  # only the stamp, at the top left
                assert _red(image[:box_h, :box_w, ::-1].astype(np.uint8)).sum() > 100
            else:
                assert not differs.any()
            sheet = cv2.imread(str(out / frame.name / "contact_sheet.png"))
            assert bool(_red(sheet[:25]).any()) == identity.is_random
        kinds = sorted(f["kind"] for f in index["files"])
        assert kinds == ["attention"] * 14 + ["contact_sheet"] * 2 + ["pca"] * 2


def test_cli_writes_every_listed_file_with_the_truth_scatter(ultrabones: Path, tmp_path: Path, capsys) -> None:
    images = ultrabones / "labelled" / "images"
    out = tmp_path / "analysis"
    args = ["analyze", *(str(images / f"{n}.png") for n in NAMES), "--out", str(out), "--roi", "full",
            "--blocks", "1,12", "--facets", "token,key", "--truth", str(ultrabones / "labelled" / "bone_region_masks"), *SMALL]
    assert main(args) == 0
    assert "weights: random:0" in capsys.readouterr().out  # the notice itself is the loader's, once per process
    index = json.loads((out / "index.json").read_text())
    assert index["random_weights"] is True and "RANDOM WEIGHTS" in index["note"] and index["frames"] == list(NAMES)
    assert index["blocks"] == [1, 12] and index["facets"] == ["key", "token"] and index["geometry"]["input_size"] == [32, 40]
    listed = {f["path"] for f in index["files"]}
    assert listed == {p.relative_to(out).as_posix() for p in out.rglob("*.png")}
    for name in NAMES:
        mine = [f for f in index["files"] if f["frame"] == name]
        assert {(f["block"], f["facet"]) for f in mine if f["kind"] == "pca"} == {(b, f) for b in (1, 12) for f in ("key", "token")}
        assert {(f["block"], f["head"]) for f in mine if f["kind"] == "attention"} == {(b, h) for b in (1, 12) for h in [*range(6), "mean"]}
        for f in mine:
            image = cv2.imread(str(out / f["path"]))
            if f["kind"] != "contact_sheet":
                assert image.shape == (811, 950, 3) and _red(image[:40, :500]).sum() > 100  # stamped at frame size
            else:
                assert _red(image[:25]).any()
    assert {p["block"]: p["descriptors"] for p in index["pca"]} == {1: 40, 12: 40}  # 2 frames x 4 x 5 patches
    scatter = [f for f in index["files"] if f["kind"] == "scatter"]
    assert scatter == [{"path": "scatter_block12_key.png", "kind": "scatter", "frame": None, "block": 12, "facet": "key", "head": None}]
    assert index["scatter"]["patches"] == 40 and 0 < index["scatter"]["bone_patches"] < 40
    assert _red(cv2.imread(str(out / "scatter_block12_key.png"))[:25]).any()


def test_cli_takes_a_references_geometry_and_spreads_video_frames(
    model: DinoViT, random_identity: WeightsIdentity, ultrabones: Path, tmp_path: Path, capsys
) -> None:
    weights = tmp_path / "weights.pth"  # a checkpoint file: quick to load, and not random, so nothing is stamped
    torch.save(model.state_dict(), weights)
    images = [np.pad(f.image, ((0, 1), (0, 0))) for f in _frames(ultrabones)]  # 950x812, the clip's frame size
    geometry = Geometry.fit(images[0].shape[:2], roi=(20, 30, 700, 880), input_size=(32, 40), resampling="area")
    settings = CalibrationSettings(kmeans=KMeansSettings(k=3, sample_interval=1))
    ref = calibrate(model, random_identity, geometry, images, list(NAMES), settings, progress=False)
    ref.save(tmp_path / "ref.json")
    out = tmp_path / "analysis"
    video = ultrabones / "sweep_clip_frames150-889_20fps.mp4"
    args = ["analyze", str(video), "--count", "3", "--reference", str(tmp_path / "ref.json"), "--out", str(out),
            "--blocks", "12", "--facets", "key", "--weights", str(weights), "--no-progress"]
    assert main(args) == 0
    index = json.loads((out / "index.json").read_text())
    assert index["geometry"] == geometry.to_dict() and index["reference"] == ref.id and index["random_weights"] is False
    assert index["frames"] == [f"{video.stem}_{i:06d}" for i in (0, 370, 739)]  # spread over the clip's 740 frames
    sheet = cv2.imread(str(out / index["frames"][0] / "contact_sheet.png"))
    assert not _red(sheet[:25]).any()
    image = str(ultrabones / "labelled" / "images" / f"{NAMES[0]}.png")  # 950x811: not the reference's frame size
    assert main(["analyze", image, "--reference", str(tmp_path / "ref.json"), "--out", str(out), "--weights", "random:0"]) == 2
    assert f"{NAMES[0]}: size 950x811" in capsys.readouterr().err


def test_cli_refuses_bad_input_in_one_line_before_the_model_loads(ultrabones: Path, tmp_path: Path, capsys) -> None:
    image = str(ultrabones / "labelled" / "images" / f"{NAMES[0]}.png")
    base = ["analyze", image, "--out", str(tmp_path / "o")]
    bad_values = {"--blocks": ("0", "13", "4-2", "x", "1,,2"), "--facets": ("key,keys", "")}
    for option, values in bad_values.items():
        for value in values:
            with pytest.raises(SystemExit) as exc:
                main([*base, option, value])
            assert exc.value.code == 2
            assert f"argument {option}: " in capsys.readouterr().err
    missing_weights = ["--weights", str(tmp_path / "none.pth")]  # loading it would fail: the errors below come first
    few = tmp_path / "few"
    few.mkdir()
    assert main([*base, "--truth", str(few), *missing_weights]) == 2
    assert f"--truth {few}: no mask named like frame {NAMES[0]}" in capsys.readouterr().err
    assert main([*base, "--reference", str(tmp_path / "r.json"), "--roi", "full", *missing_weights]) == 2
    assert "--reference sets the geometry" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert main(["analyze", image, "--out", str(tmp_path / "file"), *missing_weights]) == 2
    assert "--out" in capsys.readouterr().err
