"""Bone-surface distances (ASSD, HD95) on UltraBones100k's real surface masks, and `evaluate` reporting them."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.cli import main
from pipeline.evaluate import EvaluationError, evaluate_dirs, score_masks, summarise
from pipeline.surface import is_thin, surface_distance, surface_points

SPACING = 0.05392  # mm per pixel, UltraBones PROVENANCE.md


def _masks(ultrabones: Path, kind: str) -> dict[str, np.ndarray]:
    folder = ultrabones / "labelled" / f"bone_{kind}_masks"
    return {p.stem: cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in sorted(folder.glob("*.png"))}


def _shift_down(mask: np.ndarray, rows: int) -> np.ndarray:
    out = np.zeros_like(mask)
    out[rows:] = mask[:-rows]
    return out


def test_real_surfaces_are_thin_regions_are_not_and_a_truth_scores_zero_against_itself(ultrabones: Path) -> None:
    surfaces, regions = _masks(ultrabones, "surface"), _masks(ultrabones, "region")
    assert len(surfaces) == 8
    for name, truth in surfaces.items():
        assert is_thin(truth) and not is_thin(regions[name]), name
        d = surface_distance(truth, truth)
        assert (d.assd, d.hd95) == (0.0, 0.0)
        assert d.pred_points == d.truth_points == np.count_nonzero(truth.any(axis=0))
        # the surface of a region is its top edge: UltraBones' region masks start exactly at the labelled curve
        assert surface_distance(regions[name], truth).hd95 == 0.0


def test_a_shifted_copy_is_as_far_as_the_shift(ultrabones: Path) -> None:
    for name, truth in _masks(ultrabones, "surface").items():
        d = surface_distance(_shift_down(truth, 10), truth)
        # straight stretches sit exactly 10 px away; sloped ones are closer than 10 along the normal
        assert d.hd95 == pytest.approx(10.0, abs=0.1), name
        assert 5.0 < d.assd <= 10.0, name
    rows, cols = surface_points(_shift_down(truth, 10))
    assert np.array_equal(rows, surface_points(truth)[0] + 10) and np.array_equal(cols, surface_points(truth)[1])


def test_empty_surfaces_follow_the_stated_convention(ultrabones: Path) -> None:
    truth = next(iter(_masks(ultrabones, "surface").values()))
    empty = np.zeros_like(truth)
    assert surface_distance(empty, empty).assd == 0.0
    missed = score_masks(empty, truth, "missed", surface=True)
    hit = score_masks(truth, truth, "hit", surface=True)
    assert missed.assd_px is None and missed.hd95_px is None
    report = summarise([missed, hit], surface=True, spacing_mm=SPACING)
    assert report.surface["n_undefined"] == 1 and report.surface["n_defined"] == 1
    assert report.surface["assd_px"] == {"mean": 0.0, "std": 0.0}  # the undefined image is left out, not counted as 0
    assert "undefined" in report.table()


def test_evaluate_reports_surface_distances_in_pixels_and_mm(ultrabones: Path, tmp_path: Path) -> None:
    for name, truth in _masks(ultrabones, "surface").items():
        cv2.imwrite(str(tmp_path / f"{name}.png"), _shift_down(truth, 10))
    truth_dir = ultrabones / "labelled" / "bone_surface_masks"
    report = evaluate_dirs(tmp_path, truth_dir, "auto", SPACING)
    s = report.surface
    assert s["n_defined"] == 8 and s["spacing_mm"] == SPACING
    assert s["hd95_px"]["mean"] == pytest.approx(10.0, abs=0.1)
    assert s["hd95_mm"]["mean"] == pytest.approx(s["hd95_px"]["mean"] * SPACING)
    assert all(image.hd95_px is not None for image in report.images)
    assert "hd95" in report.table() and "mm" in report.table()
    # region truth: Dice / IoU only, unless asked for
    regions = ultrabones / "labelled" / "bone_region_masks"
    assert evaluate_dirs(regions, regions).surface is None
    assert evaluate_dirs(regions, regions, "surface").surface["hd95_px"]["mean"] == 0.0


def test_auto_refuses_a_folder_mixing_surfaces_and_regions(ultrabones: Path, tmp_path: Path) -> None:
    labelled = ultrabones / "labelled"
    (tmp_path / "a.png").write_bytes((labelled / "bone_surface_masks" / "162705.png").read_bytes())
    (tmp_path / "b.png").write_bytes((labelled / "bone_region_masks" / "162705.png").read_bytes())
    with pytest.raises(EvaluationError, match=r"mix surfaces .*a\.png.* regions .*b\.png.*--truth-kind"):
        evaluate_dirs(tmp_path, tmp_path)


def test_a_real_prediction_gives_finite_distances(ultrabones: Path, make_segmenter) -> None:
    names = ["162705", "166839"]
    frames = [cv2.imread(str(ultrabones / "labelled" / "images" / f"{n}.png"), cv2.IMREAD_GRAYSCALE) for n in names]
    truths = _masks(ultrabones, "surface")
    seg = make_segmenter(frames)
    scores = [score_masks(p.mask, truths[n], n, surface=True) for n, p in zip(names, seg.predict(frames))]
    defined = [s for s in scores if s.pred_pixels]
    assert defined, "random weights labelled no bone at all: nothing to measure"
    for s in defined:
        assert np.isfinite(s.assd_px) and np.isfinite(s.hd95_px) and 0 <= s.assd_px and 0 <= s.hd95_px < 1300  # < diagonal


def test_evaluate_cli_takes_truth_kind_and_spacing(ultrabones: Path, tmp_path: Path, capsys) -> None:
    truth_dir = ultrabones / "labelled" / "bone_surface_masks"
    out = tmp_path / "ev.json"
    assert main(["evaluate", "--pred", str(truth_dir), "--truth", str(truth_dir), "--spacing", "0.05", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["surface"]["assd_mm"] == {"mean": 0.0, "std": 0.0} and doc["images"][0]["hd95_px"] == 0.0
    assert "hd95" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--pred", str(truth_dir), "--truth", str(truth_dir), "--spacing", "-1"])
    assert exc.value.code == 2
