"""Additive white noise I + eps * N(0, 1) on a gray frame, at a stated scale, as a uint8 frame the pipeline reads.

The write-up does not say at which scale eps applies; eps = 2 only makes sense on [0, 1] intensities or on the
normalised tensor, so both are offered and every result names the one used. The noise is added to the gray frame
(the model replicates gray to three channels, so all three see the same N(0, 1) field), then clipped to 0..255
and rounded, so a noisy frame goes through the product's pipeline unchanged.
"""

from __future__ import annotations

import numpy as np

from models.architecture import IMAGENET_STD

# gray levels per unit of eps
SCALES = {
    "normalised": 255.0 * float(np.mean(IMAGENET_STD)),  # a unit of the ImageNet-normalised tensor (~57.6 levels)
    "unit": 255.0,  # a unit of [0, 1] intensity
}
DEFAULT_SCALE = "normalised"


def describe_scale(scale: str) -> str:
    return (
        f"{scale}: eps x {SCALES[scale]:.2f} gray levels of noise std "
        + ("(one unit of the normalised tensor, 255 x mean ImageNet std)" if scale == "normalised" else "(one unit of [0, 1] intensity)")
    )


def noise_fields(shapes: list[tuple[int, int]], seed: int) -> list[np.ndarray]:
    """One N(0, 1) float32 field per frame, drawn in order from ``seed``: every eps scales the same fields, so
    scores across eps differ by the noise level only."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape, dtype=np.float32) for shape in shapes]


def add_noise(image: np.ndarray, eps: float, field: np.ndarray, scale: str = DEFAULT_SCALE, where: str = "frame") -> np.ndarray:
    """uint8 gray ``image`` + eps x SCALES[scale] x ``field``, clipped to 0..255 and rounded."""
    from models.preprocess import to_gray  # OpenCV and torch: loaded on use, so the CLI's --help stays light

    gray = to_gray(image, where).astype(np.float32)
    return np.clip(np.rint(gray + np.float32(eps * SCALES[scale]) * field), 0, 255).astype(np.uint8)
