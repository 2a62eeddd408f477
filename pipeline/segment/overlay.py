"""Bone overlay drawn over the B-mode frame, with a stamp that cannot be missed when weights are random."""

from __future__ import annotations

import cv2
import numpy as np

from models.preprocess import to_gray

BONE_RGB = (255, 190, 0)  # amber: reads well over gray speckle and is not a Doppler colour


def draw_overlay(image: np.ndarray, mask: np.ndarray, *, alpha: float = 0.45, stamp: str | None = None, lines: tuple[str, ...] = ()) -> np.ndarray:
    """RGB uint8 frame: bone tinted and outlined, ``stamp`` in red on top, ``lines`` of status text below it."""
    rgb = cv2.cvtColor(to_gray(image), cv2.COLOR_GRAY2RGB)
    bone = (mask > 0).astype(np.uint8)
    if bone.any():
        # whole-image blend + masked copy: a few ms at full frame, where boolean indexing took tens
        blended = cv2.addWeighted(rgb, 1 - alpha, np.full_like(rgb, BONE_RGB), alpha, 0)
        cv2.copyTo(blended, bone, rgb)
        contours, _ = cv2.findContours(bone, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(rgb, contours, -1, BONE_RGB, 1)
    y = 4
    for text, colour in ([(stamp, (255, 40, 40))] if stamp else []) + [(t, (230, 230, 230)) for t in lines]:
        scale = max(0.35, min(rgb.shape[1] / 900, 0.8))
        (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        cv2.rectangle(rgb, (2, y), (8 + w, y + h + base + 4), (0, 0, 0), -1)
        cv2.putText(rgb, text, (5, y + h + 2), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)
        y += h + base + 6
    return rgb
