"""Multi-crop views of gray B-mode frames with ultrasound-sensible augmentation (DINO's multi-crop, Caron et al.
2021, with colour jitter, blur and solarisation replaced by what changes between scanners and sessions: gain, gamma,
speckle-like multiplicative noise, small shifts).

A view is a crop box plus its augmentation draw (``CropParams``), kept apart from the pixels so the same view can be
cut from two frames: the teacher's global views from frame i and the student's from frame j (VET-DINO's pairs).
With j == i that is plain DINO, where student and teacher see identical global crops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from models.preprocess import IMAGENET_MEAN, IMAGENET_STD


@dataclass(frozen=True)
class CropSettings:
    """DINO's crop sizes and scales (224 / 96, (0.4, 1) / (0.05, 0.4)); augmentation ranges chosen for B-mode."""

    global_size: int = 224
    local_size: int = 96
    local_crops: int = 6
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)
    gain: tuple[float, float] = (0.7, 1.3)  # overall brightness: the scanner's gain knob
    gamma: tuple[float, float] = (0.7, 1.4)  # compression / dynamic range differences
    speckle: float = 0.15  # max std of the multiplicative noise
    shift: float = 0.05  # max box shift, as a fraction of the box side
    flip: bool = True  # probe orientation is a convention: left-right flips are plausible images


@dataclass(frozen=True)
class CropParams:
    """One view: box (top, left, height, width) in frame pixels, and its augmentation draw."""

    box: tuple[int, int, int, int]
    flip: bool
    gain: float
    gamma: float
    speckle: float
    noise_seed: int


def _box(rng: np.random.Generator, shape: tuple[int, int], scale: tuple[float, float], shift: float) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box (area fraction in ``scale``, aspect 3/4..4/3, 10 tries then the largest centred square),
    moved by up to ``shift`` of its side and kept inside the frame."""
    h, w = shape
    for _ in range(10):
        area = h * w * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        bh, bw = round(math.sqrt(area / aspect)), round(math.sqrt(area * aspect))
        if 0 < bh <= h and 0 < bw <= w:
            top, left = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
            break
    else:
        bh = bw = min(h, w)
        top, left = (h - bh) // 2, (w - bw) // 2
    dy, dx = (round(rng.uniform(-shift, shift) * side) for side in (bh, bw))
    return int(np.clip(top + dy, 0, h - bh)), int(np.clip(left + dx, 0, w - bw)), bh, bw


def draw(rng: np.random.Generator, shape: tuple[int, int], settings: CropSettings, local: bool) -> CropParams:
    """A random view of a frame of ``shape``."""
    s = settings
    return CropParams(
        box=_box(rng, shape, s.local_scale if local else s.global_scale, s.shift),
        flip=bool(s.flip and rng.random() < 0.5),
        gain=float(rng.uniform(*s.gain)),
        gamma=float(rng.uniform(*s.gamma)),
        speckle=float(rng.uniform(0, s.speckle)),
        noise_seed=int(rng.integers(0, 2**31 - 1)),
    )


_MEAN = np.array(IMAGENET_MEAN, np.float32)[:, None, None]
_STD = np.array(IMAGENET_STD, np.float32)[:, None, None]


def render(frame: np.ndarray, params: CropParams, size: int) -> torch.Tensor:
    """3 x size x size float tensor: the cropped, resized, augmented gray view replicated to three channels and
    ImageNet-normalised exactly as models/preprocess.py and the encoder prepare a frame."""
    top, left, bh, bw = params.box
    patch = frame[top : top + bh, left : left + bw]
    shrink = bh > size or bw > size
    x = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    x = x.astype(np.float32) / 255.0
    if params.flip:
        x = x[:, ::-1]
    x = params.gain * x**params.gamma
    noise = np.random.default_rng(params.noise_seed).standard_normal(x.shape, dtype=np.float32)
    x = np.clip(x * (1.0 + params.speckle * noise), 0.0, 1.0)
    return torch.from_numpy((x[None] - _MEAN) / _STD)
