"""Labelled frames (a frame and its truth mask, matched by name), subsets of them, and resizing across domains."""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import cv2
import numpy as np

from models.errors import BonestreamError
from pipeline.capture.images import ImageSource
from pipeline.evaluate import images_by_stem, read_mask


RESIZE_RULE = "resized to that size, aspect not kept (OpenCV area when shrinking, linear otherwise)"


class StudyError(BonestreamError):
    """Experiment input that cannot be used as asked (named in one line)."""


@dataclass(frozen=True)
class LabelledFrame:
    """A frame as read (uint8 gray or RGB) and its truth mask (bool, the frame's size)."""

    name: str
    image: np.ndarray
    truth: np.ndarray

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[:2]


def load_labelled(frames: str | Path, truth_dir: str | Path, what: str = "frames") -> list[LabelledFrame]:
    """Every image of ``frames`` (a folder or glob, one size) with the mask of the same name in ``truth_dir``
    (foreground = any value > 0)."""
    truths = images_by_stem(Path(truth_dir))
    found = []
    for frame in ImageSource([frames]):
        if frame.name not in truths:
            raise StudyError(f"{what}: no truth mask named {frame.name} in {truth_dir} for frame {frame.name}")
        truth = read_mask(truths[frame.name])
        if truth.shape[:2] != frame.image.shape[:2]:
            raise StudyError(
                f"{what}: truth {truths[frame.name]} is {truth.shape[1]}x{truth.shape[0]}, "
                f"frame {frame.name} is {frame.image.shape[1]}x{frame.image.shape[0]}"
            )
        found.append(LabelledFrame(frame.name, frame.image, truth > 0))
    return found


def check_count(frames: list[LabelledFrame], count: int, what: str) -> None:
    """Refuse a set larger than the labelled frames: a result under a size that was not run would mislead."""
    if count > len(frames):
        raise StudyError(f"{what}: a set of {count} frames needs {count} labelled frames, only {len(frames)} given")


def draw_subsets(total: int, size: int, repeats: int, rng: np.random.Generator) -> list[tuple[int, ...]]:
    """``repeats`` distinct sorted index sets of ``size`` out of ``total``, or every one when there are fewer."""
    if math.comb(total, size) <= repeats:
        return list(combinations(range(total), size))
    drawn: list[tuple[int, ...]] = []
    while len(drawn) < repeats:
        subset = tuple(sorted(int(i) for i in rng.choice(total, size, replace=False)))
        if subset not in drawn:
            drawn.append(subset)
    return drawn


def resized(frame: LabelledFrame, size: tuple[int, int]) -> np.ndarray:
    """The frame's pixels at ``size`` (height, width), aspect not kept, so it can join a reference of that frame
    size (RESIZE_RULE); its truth is left alone (scores are taken at the frame's own size)."""
    if frame.size == tuple(size):
        return frame.image
    shrink = size[0] <= frame.size[0] and size[1] <= frame.size[1]
    return cv2.resize(frame.image, (size[1], size[0]), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def mask_at(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A predicted mask brought back to a frame's own size (nearest, so it stays binary)."""
    if mask.shape[:2] == tuple(size):
        return mask
    return cv2.resize(mask, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
