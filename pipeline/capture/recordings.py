"""Whole recordings held in memory at a bounded size, for training on every frame in time order (``adapt``).

Frames are cropped to the imaging area (``--roi``, decided on the first frames) and shrunk so the long side is at
most ``max_side``: 740 sweep frames then take tens of megabytes, not gigabytes, and crops stay sharp enough for
224-pixel views. Each recording is identified by the sha256 of its decoded frames, whatever the file or format.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from models.adapt.views import Recording
from models.preprocess import parse_roi, to_gray
from pipeline.capture.frame import Source, SourceError
from pipeline.capture.open import open_sources

ROI_FRAMES = 16  # frames the imaging area is detected on


@dataclass(frozen=True)
class HeldRecording:
    recording: Recording
    record: dict[str, Any]  # what the sidecar says about the source: spec, frames, sizes, roi, sha256


def _shrink(image: np.ndarray, max_side: int) -> np.ndarray:
    scale = max_side / max(image.shape)
    if scale >= 1:
        return image
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _hold(source: Source, roi_text: str, max_side: int, progress: bool) -> HeldRecording:
    if source.live:
        raise SourceError(f"{source.name}: a live device has no recording to train on; record it first")
    digest = hashlib.sha256()
    held: list[np.ndarray] = []
    pending: list[np.ndarray] = []
    roi = None
    frame_size = None
    with tqdm(total=source.count, desc=f"read {source.stem}", unit="frame", disable=not progress, leave=False) as bar:
        for frame in source:
            gray = to_gray(frame.image, f"{source.name} frame {frame.id}")
            digest.update(np.ascontiguousarray(gray).tobytes())
            frame_size = frame_size or gray.shape
            pending.append(gray)
            if roi is None and len(pending) >= ROI_FRAMES:
                roi = _roi(source, roi_text, pending)
            if roi is not None:
                held += [_shrink(_crop(g, roi), max_side) for g in pending]
                pending = []
            bar.update()
    if pending:
        roi = roi or _roi(source, roi_text, pending)
        held += [_shrink(_crop(g, roi), max_side) for g in pending]
    if len(held) < 2:
        raise SourceError(f"{source.name}: {len(held)} frame(s); adapt pairs frames within a recording and needs at least 2")
    frames = np.stack(held)
    record = {"source": source.name, "frames": len(held), "frame_size": list(frame_size), "roi": list(roi),
              "held_size": list(frames.shape[1:]), "sha256": digest.hexdigest()}
    return HeldRecording(Recording(source.stem, frames), record)


def _roi(source: Source, text: str, frames: Sequence[np.ndarray]) -> tuple[int, int, int, int]:
    top, left, height, width = roi = parse_roi(text, frames)
    fh, fw = frames[0].shape
    if min(height, width) < 8 or top < 0 or left < 0 or top + height > fh or left + width > fw:
        raise SourceError(f"{source.name}: --roi {roi} (top, left, height, width) does not fit its {fh}x{fw} frames")
    return roi


def _crop(image: np.ndarray, roi: tuple[int, int, int, int]) -> np.ndarray:
    top, left, height, width = roi
    return image[top : top + height, left : left + width]


def hold_recordings(specs: Sequence[str], *, roi: str = "auto", max_side: int = 384, progress: bool = True) -> list[HeldRecording]:
    """Every frame of every source (consecutive images form one recording, as everywhere in bonestream)."""
    held = []
    for source in open_sources(specs):
        with source:
            held.append(_hold(source, roi, max_side, progress))
    return held
