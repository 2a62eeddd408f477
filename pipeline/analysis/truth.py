"""Truth masks for the descriptor scatter: matched to frames by name and checked before the model loads, then
turned into each patch's bone fraction."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from models.errors import BonestreamError
from models.preprocess import Geometry
from pipeline.capture.frame import Frame
from pipeline.evaluate import images_by_stem, read_mask


class TruthError(BonestreamError):
    """Truth masks that do not fit the frames (name or size)."""


def load_truth(path: Path, frames: Sequence[Frame]) -> dict[str, np.ndarray]:
    """Frame name -> boolean mask at frame resolution (any value > 0 is bone). A folder needs a mask with each
    frame's name (extra masks are ignored); a file is the mask of the only frame, whatever its name."""
    if path.is_dir():
        masks = images_by_stem(path)
        missing = [f.name for f in frames if f.name not in masks]
        if missing:
            more = f" (and {len(missing) - 1} more frames)" if len(missing) > 1 else ""
            raise TruthError(f"--truth {path}: no mask named like frame {missing[0]}{more}; masks match frames by file name")
        pairs = [(f, masks[f.name]) for f in frames]
    elif path.is_file():
        if len(frames) != 1:
            raise TruthError(f"--truth {path}: one mask for {len(frames)} frames; give a folder of masks named like the frames")
        pairs = [(frames[0], path)]
    else:
        raise TruthError(f"--truth {path}: no such file or folder")
    truth = {}
    for frame, mask_path in pairs:
        mask = read_mask(mask_path)
        if mask.shape[:2] != frame.image.shape[:2]:
            (h, w), (fh, fw) = mask.shape[:2], frame.image.shape[:2]
            raise TruthError(f"--truth {mask_path}: size {w}x{h} (w x h) differs from frame {frame.name} ({fw}x{fh})")
        truth[frame.name] = mask > 0
    return truth


def bone_fraction(mask: np.ndarray, geometry: Geometry) -> np.ndarray:
    """h x w: the fraction of bone pixels in each patch's cell, the frame pixels whose nearest patch centre it is
    (how masks are drawn, ``Geometry.frame_lookup``); NaN for a cell without pixels."""
    rows, cols = geometry.frame_lookup()
    gh, gw = geometry.grid
    index = (rows[:, None] * (gw + 1) + cols[None, :]).ravel()
    size = (gh + 1) * (gw + 1)
    pixels = np.bincount(index, minlength=size)
    bone = np.bincount(index, weights=mask.ravel().astype(np.float64), minlength=size)
    with np.errstate(invalid="ignore", divide="ignore"):
        fraction = bone / pixels
    return fraction.reshape(gh + 1, gw + 1)[:gh, :gw]
