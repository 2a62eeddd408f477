"""Patch labels -> full-frame mask and bone overlay, on the model's device, in uint8 throughout.

The mask maps each frame pixel to the patch whose centre is nearest (``Geometry.frame_lookup``): two gathers from
the patch map padded with one empty row and column, which is also what every pixel outside the ROI reads (columns
first, on the few patch rows, so the gather over the full height moves whole rows). The
overlay is one table lookup per pixel, indexed by gray level and state (background, bone, bone outline): a blend
computed once for all 256 levels, so no per-pixel arithmetic beyond the index. The random-weights stamp is drawn
once with OpenCV when the renderer is built and pasted on every overlay.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.placement import build_on
from models.preprocess import Geometry

BONE_RGB = (255, 190, 0)  # amber: reads well over gray speckle and is not a Doppler colour
ALPHA = 0.45
RANDOM_STAMP = "RANDOM WEIGHTS - plumbing only, not bone"


def overlay_table(alpha: float = ALPHA, colour: tuple[int, int, int] = BONE_RGB) -> np.ndarray:
    """768 x 3 uint8: rows 0-255 gray, 256-511 gray blended with ``colour``, 512-767 the outline colour."""
    gray = np.repeat(np.arange(256, dtype=np.float64)[:, None], 3, axis=1)
    blend = gray * (1 - alpha) + np.asarray(colour, np.float64) * alpha
    outline = np.broadcast_to(np.asarray(colour, np.float64), (256, 3))
    return np.rint(np.concatenate([gray, blend, outline])).clip(0, 255).astype(np.uint8)


def stamp_image(text: str, frame_width: int) -> np.ndarray:
    """h x w x 3 uint8 RGB: ``text`` in red on a black box, sized to the frame, cut to its width."""
    scale = max(0.35, min(frame_width / 900, 0.8))
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    box = np.zeros((h + base + 8, min(w + 10, frame_width), 3), np.uint8)
    cv2.putText(box, text, (3, h + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 40, 40), 1, cv2.LINE_AA)
    return box


class MaskRenderer(nn.Module):
    """(B x h x w patch flags, B x H x W gray frames) -> B x H x W mask (0/255) and B x H x W x 3 RGB overlay. With
    ``cells="pixel"`` the flags are a mask at model-input resolution (a refined mask) instead of a patch map.

    The mask is piecewise constant over cells, so the bone outline (bone pixels with a background
    4-neighbour) is found on the column-gathered map (left, right) and by gathering the rows above and below
    (up, down): whole-row copies and a few uint8 operations instead of an erosion at full resolution."""

    def __init__(self, geometry: Geometry, stamp: str | None, device: torch.device, cells: str = "patch") -> None:
        super().__init__()
        rows, cols = geometry.frame_lookup(cells)
        up = np.concatenate([rows[:1], rows[:-1]])  # the frame's edge counts as its own neighbour: no outline there
        down = np.concatenate([rows[1:], rows[-1:]])
        for name, index in (("rows", rows), ("up", up), ("down", down), ("cols", cols)):
            self.register_buffer(name, torch.as_tensor(index, device=device))
        self.register_buffer("table", torch.as_tensor(overlay_table(), device=device))
        image = stamp_image(stamp, geometry.frame_size[1]) if stamp else np.zeros((0, 0, 3), np.uint8)
        self.register_buffer("stamp", torch.as_tensor(image[: geometry.frame_size[0]], device=device))

    def forward(self, patch_mask: torch.Tensor, frames: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        cells = F.pad(patch_mask.to(torch.uint8), (0, 1, 0, 1))[:, :, self.cols]  # B x (h+1) x W, 0/1
        bone = cells.index_select(1, self.rows)  # index_select copies whole rows; fancy indexing is ~10x slower here
        if frames is None:
            return (bone * 255,)
        left = torch.cat((cells[..., :1], cells[..., :-1]), dim=-1)
        right = torch.cat((cells[..., 1:], cells[..., -1:]), dim=-1)
        across = cells & ~(left & right)  # 1 where a left or right neighbour is background (uint8 bit arithmetic)
        outline = cells.index_select(1, self.up) & cells.index_select(1, self.down)
        outline.bitwise_not_().bitwise_or_(across.index_select(1, self.rows)).bitwise_and_(bone)
        index = (bone + outline).to(torch.int32)  # row of the table: gray + 256 x (0 background, 1 bone, 2 outline)
        index.mul_(256).add_(frames.to(torch.int32))
        overlay = self.table.index_select(0, index.view(-1)).view(*frames.shape, 3)
        h, w = self.stamp.shape[:2]
        if h:
            overlay[:, :h, :w] = self.stamp
        return bone * 255, overlay


def build_renderer(geometry: Geometry, stamp: str | None, device: str | torch.device, cells: str = "patch") -> MaskRenderer:
    return build_on(device, lambda dev: MaskRenderer(geometry, stamp, dev, cells))
