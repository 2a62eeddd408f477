"""GrabCut refinement of patch masks, the original co-segmentation's optional last step, on the host.

The original refines each mask at its load size: the foreground and the background are each eroded with a 7x7
kernel, what survives is definite, the band between is probably foreground, and 5 GrabCut iterations on the
resized image settle the band; when GrabCut cannot run (no foreground or no background to fit a colour model),
the unrefined mask is kept. Here the load size is the model input: the patch flags are spread over the model-input
pixels (each pixel takes its nearest patch centre, as the full-frame mask does) and refined on the gray ROI at that
size, so the renderer then maps a pixel mask instead of a patch map onto the frame. GrabCut is a CPU algorithm
costing milliseconds per frame: off unless asked for (``--refine grabcut``).
"""

from __future__ import annotations

import cv2
import numpy as np

from models.preprocess import HOST_RESAMPLING, Geometry

KERNEL = np.ones((7, 7), np.uint8)
ITERATIONS = 5


def grabcut(gray: np.ndarray, mask: np.ndarray, seed: int = 0) -> np.ndarray:
    """H x W uint8 gray image and 0/1 mask -> the refined 0/1 mask (the mask itself when GrabCut cannot run).

    GrabCut seeds its colour models from OpenCV's global random generator; it is reset to ``seed`` first so a frame
    always refines the same way."""
    fg = cv2.erode(mask, KERNEL)
    bg = cv2.erode(1 - mask, KERNEL)
    labels = np.full(mask.shape, cv2.GC_PR_FGD, np.uint8)
    labels[bg == 1] = cv2.GC_BGD
    labels[fg == 1] = cv2.GC_FGD
    models = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(seed)
    try:
        cv2.grabCut(cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB), labels, None, *models, ITERATIONS, cv2.GC_INIT_WITH_MASK)
    except cv2.error:
        return mask
    return ((labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)).astype(np.uint8)


class GrabCutRefiner:
    """Patch flags + the frames' model-input planes -> refined masks at model-input resolution."""

    def __init__(self, geometry: Geometry) -> None:
        self.geometry = geometry
        self.rows, self.cols = geometry.input_lookup()

    def guide(self, plane: np.ndarray) -> np.ndarray:
        """The gray ROI at model-input size: the plane itself for a host resampling; for a device one the plane is the
        whole frame, resized here with OpenCV's area filter (GrabCut needs only the edges)."""
        g = self.geometry
        if not g.on_device:
            return plane
        top, left, h, w = g.roi
        return HOST_RESAMPLING["area"](np.ascontiguousarray(plane[top : top + h, left : left + w]), tuple(g.input_size))

    def __call__(self, planes: np.ndarray, flags: np.ndarray) -> np.ndarray:
        """N x plane uint8 and N x grid bool -> N x input_size uint8 (0/1)."""
        spread = flags.astype(np.uint8)[:, self.rows][:, :, self.cols]
        return np.stack([grabcut(self.guide(p), m) for p, m in zip(planes, spread)])
