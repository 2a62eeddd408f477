"""Analysis images at frame resolution and the figures that gather them (contact sheet, scatter).

Patch maps go onto the frame the way masks do: every frame pixel takes its nearest patch centre
(``Geometry.frame_lookup``) and the gray frame shows outside the ROI. Figures are drawn with matplotlib's Agg
canvas (no pyplot state) and written atomically; with random weights every image and figure carries the stamp.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import cv2
import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from models.preprocess import Geometry
from pipeline.publish.files import write_png_atomic
from pipeline.segment.render import stamp_image

HEAT_COLORMAP = "inferno"
HEAT_ALPHA = 0.6  # attention colour over the gray frame: anatomy stays visible under the heat
THUMB_WIDTH = 240  # contact-sheet cells, pixels


class FrameCanvas:
    """Paints h x w x 3 patch colours onto H x W frames of one geometry (inside its ROI, a rectangle)."""

    def __init__(self, geometry: Geometry) -> None:
        rows, cols = geometry.frame_lookup()
        top, left, h, w = geometry.roi
        self.box = (slice(top, top + h), slice(left, left + w))
        self.rows, self.cols = rows[self.box[0], None], cols[None, self.box[1]]

    def paint(self, gray: np.ndarray, patch_rgb: np.ndarray, alpha: float = 1.0) -> np.ndarray:
        """H x W x 3 uint8: patch colours inside the ROI (blended with the frame by ``alpha``), the frame outside."""
        image = np.repeat(gray[..., None], 3, axis=2)
        colour = patch_rgb[self.rows, self.cols]
        if alpha < 1:
            colour = np.rint(alpha * colour + (1 - alpha) * image[self.box]).astype(np.uint8)
        image[self.box] = colour
        return image


def heat(values: np.ndarray) -> np.ndarray:
    """h x w values -> h x w x 3 uint8 colours, min-max scaled over this one map (one head, one frame)."""
    lo, hi = float(values.min()), float(values.max())
    scaled = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    return np.rint(colormaps[HEAT_COLORMAP](scaled)[..., :3] * 255).astype(np.uint8)


def thumbnail(image: np.ndarray, width: int = THUMB_WIDTH) -> np.ndarray:
    h, w = image.shape[:2]
    return cv2.resize(image, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)


def write_image(path: Path, image: np.ndarray, stamp: str | None) -> None:
    """PNG of an RGB image, with the stamp pasted at its top left when there is one."""
    if stamp:
        image = image.copy()
        box = stamp_image(stamp, image.shape[1])[: image.shape[0]]
        image[: box.shape[0], : box.shape[1]] = box
    write_png_atomic(path, image)


def contact_sheet(cells: Mapping[tuple[int, str], np.ndarray], blocks: Sequence[int], columns: Sequence[str], title: str) -> Figure:
    """Rows = blocks, columns = facets and attention; ``cells[block, column]`` are RGB thumbnails."""
    h, w = next(iter(cells.values())).shape[:2]
    cell_in = 1.9
    fig = Figure(figsize=(0.5 + cell_in * len(columns), 0.7 + cell_in * h / w * len(blocks)))
    grid = fig.add_gridspec(len(blocks), len(columns), left=0.4 / fig.get_figwidth(), right=0.995, bottom=0.005,
                            top=1 - 0.6 / fig.get_figheight(), wspace=0.03, hspace=0.03)
    for i, block in enumerate(blocks):
        for j, column in enumerate(columns):
            ax = fig.add_subplot(grid[i, j])
            ax.imshow(cells[block, column])
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(column, fontsize=9)
            if j == 0:
                ax.set_ylabel(f"block {block}", fontsize=9)
    fig.suptitle(title, fontsize=9, y=1 - 0.22 / fig.get_figheight())
    return fig


def scatter_figure(xy: np.ndarray, fraction: np.ndarray, title: str, axes: tuple[str, str]) -> Figure:
    """n x 2 coordinates coloured by bone fraction (0..1); bone-rich points drawn last so they stay visible."""
    order = np.argsort(fraction, kind="stable")
    fig = Figure(figsize=(6.4, 5.4))
    ax = fig.add_subplot()
    points = ax.scatter(xy[order, 0], xy[order, 1], c=fraction[order], cmap="viridis", vmin=0, vmax=1, s=6, linewidths=0)
    fig.colorbar(points, ax=ax, label="bone fraction of the patch (truth mask)")
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.set_title(title, fontsize=9)
    fig.subplots_adjust(top=0.88)
    return fig
