"""Per-frame saliency from the last block's CLS attention (calibration only: votes are frozen afterwards)."""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch

ALL_HEADS = None
ORIGINAL_HEADS = (0, 2, 4, 5)  # the original code's head subset; the study averages all heads


def saliency_maps(attention: torch.Tensor, heads: Sequence[int] | None = ALL_HEADS) -> np.ndarray:
    """B x heads x h x w attention -> B x h x w saliency, head-averaged and min-max normalised per frame.

    Normalisation is per frame, so tau is relative: a frame without bone still has a maximum of 1.
    """
    att = attention.float()
    if heads is not None:
        att = att[:, list(heads)]
    sal = att.mean(dim=1)
    flat = sal.flatten(1)
    lo = flat.min(dim=1).values[:, None, None]
    hi = flat.max(dim=1).values[:, None, None]
    return ((sal - lo) / (hi - lo).clamp_min(1e-12)).cpu().numpy()


def resize_nearest(maps: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Low-resolution saliency (original mode) onto the descriptor grid with nearest neighbour. INTER_NEAREST_EXACT
    picks the source cell of PIL's nearest (the original resizes with it); INTER_NEAREST differs in 13-24 % of cells."""
    return np.stack([cv2.resize(m, (grid[1], grid[0]), interpolation=cv2.INTER_NEAREST_EXACT) for m in maps])
