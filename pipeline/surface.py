"""Bone-surface distances: average symmetric surface distance (ASSD) and 95th-percentile Hausdorff (HD95).

Ultrasound sees the bone's surface, not its volume: the echo faces the probe (at the top of the frame) and
everything below it is acoustic shadow. So the surface of any mask, predicted region or labelled curve alike,
is the same thing here: in every column that holds foreground, its top-most foreground pixel. Applying one
rule to both sides means a truth scored against itself is exactly 0 and a drawn curve's thickness adds no bias.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.choices import THIN_HALF_WIDTH

SURFACE_DEFINITION = (
    "surface of a mask (prediction and truth alike) = the top-most foreground pixel of every column that holds "
    "foreground (the bone echo faces the probe at the top of the frame)"
)
DISTANCE_CONVENTION = (
    "Euclidean pixel distances to the nearest point of the other surface (exact distance transform); "
    "ASSD = mean of both directions' distances pooled; HD95 = max of the two directed 95th percentiles; "
    "mean ± std (ddof=0) over images where both surfaces exist"
)
SURFACE_EMPTY_CONVENTION = (
    "both surfaces empty: ASSD = HD95 = 0; exactly one empty: undefined (null), counted in n_undefined and left "
    "out of mean ± std"
)


@dataclass(frozen=True)
class SurfaceDistance:
    """ASSD and HD95 in pixels between two surfaces; None when exactly one surface is empty."""

    assd: float | None
    hd95: float | None
    pred_points: int
    truth_points: int


def is_thin(mask: np.ndarray) -> bool:
    """True when every foreground pixel lies within THIN_HALF_WIDTH px of the background (an empty mask is thin)."""
    fg = (np.asarray(mask) > 0).astype(np.uint8)
    if not fg.any():
        return True
    padded = cv2.copyMakeBorder(fg, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)  # the frame's edge is background
    return float(cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE).max()) <= THIN_HALF_WIDTH


def surface_points(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the top-most foreground pixel in each column that has one (SURFACE_DEFINITION)."""
    fg = np.asarray(mask) > 0
    cols = np.flatnonzero(fg.any(axis=0))
    return fg[:, cols].argmax(axis=0), cols


def surface_distance(pred: np.ndarray, truth: np.ndarray) -> SurfaceDistance:
    """ASSD and HD95 (pixels) between the surfaces of two same-size masks (DISTANCE_CONVENTION)."""
    if np.shape(pred) != np.shape(truth):
        raise ValueError(f"prediction shape {np.shape(pred)} != truth shape {np.shape(truth)}")
    p, t = surface_points(pred), surface_points(truth)
    n_pred, n_truth = len(p[0]), len(t[0])
    if n_pred == n_truth == 0:
        return SurfaceDistance(0.0, 0.0, 0, 0)
    if n_pred == 0 or n_truth == 0:
        return SurfaceDistance(None, None, n_pred, n_truth)
    shape = np.shape(pred)[:2]
    to_truth = _distance_to(t, shape)[p]
    to_pred = _distance_to(p, shape)[t]
    assd = float((to_truth.sum() + to_pred.sum()) / (n_pred + n_truth))
    hd95 = float(max(np.percentile(to_truth, 95), np.percentile(to_pred, 95)))
    return SurfaceDistance(assd, hd95, n_pred, n_truth)


def _distance_to(points: tuple[np.ndarray, np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Per pixel, the exact Euclidean distance to the nearest of ``points``."""
    image = np.full(shape, 255, np.uint8)
    image[points] = 0
    return cv2.distanceTransform(image, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
