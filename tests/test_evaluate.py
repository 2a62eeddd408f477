"""Dice / IoU scoring, folder matching and report writing, checked against hand-computed values."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.evaluate import (
    EMPTY_CONVENTION,
    EvaluationError,
    evaluate_dirs,
    score_masks,
    summarise,
    write_report,
)

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _rect(shape: tuple[int, int], top: int, left: int, bottom: int, right: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint8)
    mask[top:bottom, left:right] = 255
    return mask


def _write(folder: Path, name: str, mask: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    assert cv2.imwrite(str(path), mask)
    return path


def test_overlapping_rectangles_match_hand_computed_scores() -> None:
    # 4x4 squares offset by 2 px both ways: 16 + 16 px, 2x2 = 4 px overlap, union 28.
    score = score_masks(_rect((10, 10), 0, 0, 4, 4), _rect((10, 10), 2, 2, 6, 6), "squares")
    assert score.dice == pytest.approx(2 * 4 / 32)
    assert score.iou == pytest.approx(4 / 28)
    assert (score.pred_pixels, score.truth_pixels, score.intersection) == (16, 16, 4)
    assert not score.both_empty


def test_any_positive_value_is_foreground() -> None:
    pred = np.zeros((4, 4), dtype=np.uint8)
    pred[0, :2] = (1, 255)
    score = score_masks(pred, pred.astype(bool))
    assert score.dice == score.iou == 1.0 and score.pred_pixels == 2


def test_both_empty_scores_one_and_is_counted() -> None:
    empty = np.zeros((5, 5), dtype=np.uint8)
    score = score_masks(empty, empty)
    assert (score.dice, score.iou, score.both_empty) == (1.0, 1.0, True)
    report = summarise([score])
    assert report.n_both_empty == 1
    assert EMPTY_CONVENTION in report.note


def test_empty_prediction_on_nonempty_truth_scores_zero() -> None:
    score = score_masks(np.zeros((5, 5)), _rect((5, 5), 1, 1, 3, 3))
    assert (score.dice, score.iou, score.both_empty) == (0.0, 0.0, False)


def test_shape_mismatch_names_image_and_shapes() -> None:
    with pytest.raises(ValueError, match=r"frame_7.*\(4, 5\).*\(5, 4\)"):
        score_masks(np.zeros((4, 5)), np.zeros((5, 4)), "frame_7")


def test_pooled_differs_from_mean_on_crafted_pair() -> None:
    large = score_masks(_rect((20, 20), 0, 0, 10, 10), _rect((20, 20), 0, 0, 10, 10), "large")
    tiny = score_masks(np.zeros((20, 20)), _rect((20, 20), 0, 0, 1, 1), "tiny")
    report = summarise([large, tiny])
    assert report.mean_dice == pytest.approx(0.5)
    assert report.std_dice == pytest.approx(0.5)  # population std (ddof=0)
    assert report.pooled_dice == pytest.approx(2 * 100 / 201)
    assert report.pooled_iou == pytest.approx(100 / 101)
    assert "ddof=0" in report.note


def test_segment_output_folder_with_random_weights(tmp_path: Path) -> None:
    truth, out = tmp_path / "truth", tmp_path / "run"
    _write(truth, "a.png", _rect((8, 8), 0, 0, 4, 4))
    _write(truth, "b.png", np.zeros((8, 8), dtype=np.uint8))
    _write(out / "masks", "a.png", _rect((8, 8), 0, 0, 4, 4))
    _write(out / "masks", "b.png", np.zeros((8, 8), dtype=np.uint8))
    _write(out / "masks", "extra.png", np.zeros((8, 8), dtype=np.uint8))
    weights = {"kind": "random", "seed": 3}
    (out / "summary.json").write_text(json.dumps({"weights": weights, "frames": 3}))

    report = evaluate_dirs(out, truth)
    assert [s.name for s in report.images] == ["a", "b"]
    assert report.mean_dice == 1.0 and report.n_both_empty == 1
    assert report.unmatched_predictions == ["extra"]
    assert report.weights == weights
    assert "RANDOM WEIGHTS" in report.note
    table = report.table()
    assert "RANDOM WEIGHTS" in table and "extra" in table and "mean ± std dice" in table


def test_plain_mask_folder_matches_by_stem_across_formats(tmp_path: Path) -> None:
    _write(tmp_path / "truth", "x.png", _rect((6, 6), 0, 0, 2, 3))
    _write(tmp_path / "pred", "x.bmp", _rect((6, 6), 0, 0, 2, 6))
    report = evaluate_dirs(tmp_path / "pred", tmp_path / "truth")
    assert report.images[0].dice == pytest.approx(2 * 6 / 18)
    assert report.weights is None and "RANDOM" not in report.note


def test_missing_prediction_lists_the_stems(tmp_path: Path) -> None:
    for name in ("one.png", "two.png"):
        _write(tmp_path / "truth", name, np.zeros((4, 4), dtype=np.uint8))
    _write(tmp_path / "pred", "one.png", np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(EvaluationError, match="two"):
        evaluate_dirs(tmp_path / "pred", tmp_path / "truth")


def test_size_mismatch_names_file_and_shapes(tmp_path: Path) -> None:
    _write(tmp_path / "truth", "s.png", np.zeros((4, 6), dtype=np.uint8))
    _write(tmp_path / "pred", "s.png", np.zeros((6, 4), dtype=np.uint8))
    with pytest.raises(EvaluationError, match=r"pred.s\.png.*\(6, 4\).*\(4, 6\)"):
        evaluate_dirs(tmp_path / "pred", tmp_path / "truth")


def test_unreadable_image_names_the_file(tmp_path: Path) -> None:
    _write(tmp_path / "truth", "bad.png", np.zeros((4, 4), dtype=np.uint8))
    (tmp_path / "pred").mkdir()
    (tmp_path / "pred" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(EvaluationError, match=r"pred.bad\.png"):
        evaluate_dirs(tmp_path / "pred", tmp_path / "truth")


def test_empty_folders_are_errors(tmp_path: Path) -> None:
    (tmp_path / "pred").mkdir()
    (tmp_path / "truth").mkdir()
    with pytest.raises(EvaluationError, match="no truth images"):
        evaluate_dirs(tmp_path / "pred", tmp_path / "truth")
    _write(tmp_path / "truth", "t.png", np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(EvaluationError, match="no prediction images"):
        evaluate_dirs(tmp_path / "pred", tmp_path / "truth")


def test_write_report_round_trips_through_json(tmp_path: Path) -> None:
    report = summarise([score_masks(_rect((5, 5), 0, 0, 2, 2), _rect((5, 5), 0, 0, 2, 3), "r")], {"kind": "random"})
    path = tmp_path / "reports" / "eval.json"
    write_report(report, path)
    assert json.loads(path.read_text()) == report.to_dict()
    assert [p.name for p in path.parent.iterdir()] == ["eval.json"]  # no temp file left behind


@pytest.mark.skipif(
    not (REAL_DATA / "ultrabones100k" / "labelled" / "bone_region_masks").is_dir(),
    reason=f"shared data not present at {REAL_DATA}",
)
def test_real_masks_against_themselves_score_one() -> None:
    folder = REAL_DATA / "ultrabones100k" / "labelled" / "bone_region_masks"
    report = evaluate_dirs(folder, folder)
    assert report.n_images == len(list(folder.glob("*.png"))) > 0
    assert report.mean_dice == report.pooled_dice == report.mean_iou == 1.0
    assert report.std_dice == 0.0 and report.unmatched_predictions == []
