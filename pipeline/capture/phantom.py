"""Synthetic linear-probe B-mode phantom of a limb with exact bone ground truth.

It is the bundled default source for the demo and the tests: no patient data is
needed, and the bone-surface mask is exact because the echo is drawn, not
annotated. Static anatomy and its scatterer field are built once on a canvas
larger than the image; a frame only shifts that canvas (probe motion), redraws
the bone arc (its curvature drifts) and renews a little of the speckle.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

# Echo amplitudes are linear reflectivities (muscle ~0.4); the image shows
# 20*log10(amplitude / _REF_AMPLITUDE) over the last _DYNAMIC_RANGE_DB decibels.
_DYNAMIC_RANGE_DB = 54.0
_REF_AMPLITUDE = 5.5
_NOISE_FLOOR = 0.012  # electronic noise: all that is left deep in the bone shadow
_ATTENUATION_DB = 28.0  # round-trip loss from the top to the bottom of the image
_TGC_DB = 12.0  # mild time-gain compensation, so deep tissue stays darker
_SPECKLE_SIGMA = (2.0, 0.9)  # lateral, axial PSF width (px): longer laterally
_FRESH_SPECKLE = 0.08  # power fraction of speckle that decorrelates every frame
_SHADOW_LEVEL = 0.01
_BONE_PEAK = 12.0

# Freehand-sweep motion: amplitudes as fractions of width / height, periods in s.
_LATERAL_AMPLITUDE = 0.10
_AXIAL_AMPLITUDE = 0.03
_CURVATURE_AMPLITUDE = 0.25
_PERIODS_S = (8.0, 5.5, 7.0)  # lateral, axial, curvature

# Bone arc: upper half of an ellipse (fractions of width / height).
_BONE_TOP = 0.58
_BONE_HALF_WIDTH = 0.22
_BONE_DEPTH = 0.20
_MIN_ECHO = 0.3  # the echo is drawn where the specular factor cos^2(slope) exceeds this


@dataclass(frozen=True)
class PhantomConfig:
    """Image size, frame rate, sequence length and the seed of all randomness."""

    height: int = 256
    width: int = 320
    fps: float = 20.0
    n_frames: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        for field, minimum in (("height", 64), ("width", 64), ("n_frames", 1), ("seed", 0)):
            value = getattr(self, field)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"PhantomConfig.{field} must be an integer >= {minimum}, got {value!r}")
        if not (isinstance(self.fps, (int, float)) and math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"PhantomConfig.fps must be a finite number > 0, got {self.fps!r}")


@dataclass(frozen=True)
class _Pose:
    """Probe pose at one instant: tissue shift (px) and arc curvature factor."""

    dx: float
    dy: float
    curvature: float


class Phantom:
    """Deterministic frame source: frame(i) depends only on (config, i)."""

    def __init__(self, config: PhantomConfig = PhantomConfig()) -> None:
        self.config = config
        h, w = config.height, config.width
        rng = np.random.default_rng([config.seed, 0])
        self._phases = rng.uniform(0.0, 2.0 * math.pi, size=3)
        self._margin = (math.ceil(_LATERAL_AMPLITUDE * w) + 4, math.ceil(_AXIAL_AMPLITUDE * h) + 4)
        mx, my = self._margin
        shape = (h + 2 * my, w + 2 * mx)
        self._speckle_scale = 1.0 / _blurred_noise_std()
        scatterers = _blur(rng.standard_normal((*shape, 2), dtype=np.float32)) * self._speckle_scale
        # Anatomy and its scatterers move together, so one warp shifts both.
        self._canvas = np.dstack([_tissue_canvas(shape, h, w, rng), scatterers]).astype(np.float32)
        self._rows = np.arange(h, dtype=np.float32)[:, None]
        self._cols = np.arange(w, dtype=np.float32)
        depth = self._rows / h
        self._gain = (10.0 ** ((_TGC_DB * np.sqrt(depth) - _ATTENUATION_DB * depth) / 20.0)).astype(np.float32)
        # The skin line and gel gap stay on the probe face while the tissue slides.
        skin_y = 0.03 * h + 2.0
        self._skin_line = (2.2 * np.exp(-0.5 * ((self._rows - skin_y) / 1.3) ** 2)).astype(np.float32)
        self._gel = np.clip((self._rows - skin_y + 2.0) / 3.0, 0.02, 1.0).astype(np.float32)

    def __len__(self) -> int:
        return self.config.n_frames

    def frame(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Return (uint8 H x W B-mode image, bool H x W bone-surface mask) at time index / fps."""
        index = operator.index(index)
        if index < 0:
            raise ValueError(f"frame index must be >= 0, got {index}")
        cfg = self.config
        h, w = cfg.height, cfg.width
        pose = self._pose(index / cfg.fps)
        mx, my = self._margin
        shift = np.float32([[1, 0, mx - pose.dx], [0, 1, my - pose.dy]])
        moved = cv2.warpAffine(self._canvas, shift, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        fresh = _blur(np.random.default_rng([cfg.seed, 1, index]).standard_normal((h, w, 2), dtype=np.float32))
        keep = math.sqrt(1.0 - _FRESH_SPECKLE)
        renew = math.sqrt(_FRESH_SPECKLE) * self._speckle_scale
        re = keep * moved[..., 1] + renew * fresh[..., 0]
        im = keep * moved[..., 2] + renew * fresh[..., 1]
        speckle = np.sqrt(re * re + im * im)  # Rayleigh envelope, mean ~0.89

        tissue = moved[..., 0] * self._gel + self._skin_line
        echo, mask, shadow = self._bone(pose)
        amplitude = tissue * shadow * speckle
        amplitude[mask] = echo[mask] * (0.6 + 0.45 * speckle[mask])  # specular echo: weaker speckle
        amplitude = amplitude * self._gain + _NOISE_FLOOR * speckle
        db = 20.0 * np.log10(amplitude * (1.0 / _REF_AMPLITUDE))
        image = np.clip((db + _DYNAMIC_RANGE_DB) * (255.0 / _DYNAMIC_RANGE_DB), 0, 255)
        image = cv2.GaussianBlur(image, (5, 3), sigmaX=0.9, sigmaY=0.6)  # scanner display smoothing
        return image.astype(np.uint8), mask

    def _pose(self, t: float) -> _Pose:
        lat, ax, cur = (2.0 * math.pi * t / p + ph for p, ph in zip(_PERIODS_S, self._phases))
        return _Pose(
            dx=_LATERAL_AMPLITUDE * self.config.width * math.sin(lat),
            dy=_AXIAL_AMPLITUDE * self.config.height * math.sin(ax),
            curvature=1.0 + _CURVATURE_AMPLITUDE * math.sin(cur),
        )

    def _bone(self, pose: _Pose) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Bone echo amplitude, its exact mask, and the multiplicative shadow below it.

        Thickness and shadow depth are measured along the surface normal; the echo
        fades with slope because bone reflects specularly (brightest at the top).
        """
        h, w = self.config.height, self.config.width
        a = _BONE_HALF_WIDTH * w
        b = _BONE_DEPTH * h * pose.curvature
        offset = self._cols - (0.5 * w + pose.dx)
        u = np.clip(offset / a, -1.0, 1.0)
        root = np.sqrt(np.maximum(1.0 - u * u, 1e-6))
        surface = _BONE_TOP * h + pose.dy + b * (1.0 - root)
        slope = (b / a) * u / root
        cos_slope = 1.0 / np.sqrt(1.0 + slope * slope)
        specular = cos_slope * cos_slope
        thickness = 5.0 + 3.0 * (specular - _MIN_ECHO) / (1.0 - _MIN_ECHO)  # 5..8 px where drawn
        drawn = (np.abs(offset) < a) & (specular > _MIN_ECHO)

        depth = (self._rows - surface) * cos_slope
        mask = (depth >= 0) & (depth < thickness) & drawn
        echo = _BONE_PEAK * specular * (1.0 - 0.4 * depth / thickness)

        below = depth - thickness
        reverb = sum(0.25 * 0.6**k * np.exp(-0.5 * ((below - 11.0 * k) / 1.2) ** 2) for k in (1, 2, 3)) * specular
        onset = np.clip(below / 1.5, 0.0, 1.0)
        edge = np.clip((a - np.abs(offset)) / 10.0, 0.0, 1.0)  # soft lateral shadow border
        shadow = 1.0 - edge * onset * (1.0 - _SHADOW_LEVEL - reverb)
        return echo.astype(np.float32), mask, shadow.astype(np.float32)


def write_phantom(folder: Path, count: int, config: PhantomConfig = PhantomConfig(), *, step: int = 1) -> list[Path]:
    """Write frames 0, step, ... as folder/images/*.png and 0/255 folder/masks/*.png; return image paths."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    phantom = Phantom(config)
    paths = []
    for i in range(0, count * step, step):
        image, mask = phantom.frame(i)
        name = f"phantom_{i:05d}.png"
        image_path = folder / "images" / name
        for path, array in ((image_path, image), (folder / "masks" / name, mask.astype(np.uint8) * 255)):
            if not cv2.imwrite(str(path), array):
                raise OSError(f"could not write {path}")
        paths.append(image_path)
    return paths


def _kernel_size(sigma: float) -> int:
    return 2 * math.ceil(3.0 * sigma) + 1


def _blur(noise: np.ndarray) -> np.ndarray:
    """Correlate white complex noise with the anisotropic PSF."""
    sx, sy = _SPECKLE_SIGMA
    return cv2.GaussianBlur(noise, (_kernel_size(sx), _kernel_size(sy)), sigmaX=sx, sigmaY=sy)


def _blurred_noise_std() -> float:
    """Envelope RMS of blurred unit complex noise, used to normalise speckle to E|Z|^2 = 1."""
    kx = cv2.getGaussianKernel(_kernel_size(_SPECKLE_SIGMA[0]), _SPECKLE_SIGMA[0])
    ky = cv2.getGaussianKernel(_kernel_size(_SPECKLE_SIGMA[1]), _SPECKLE_SIGMA[1])
    return math.sqrt(2.0 * float((kx**2).sum()) * float((ky**2).sum()))


def _tissue_canvas(shape: tuple[int, int], h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Static reflectivity map: fat with septa, muscle bellies with oblique fibres, wavy fascia.

    Positions scale with the image size; the canvas exceeds the image by the motion
    margin on each side, so shifted frames never run out of anatomy.
    """
    ch, cw = shape
    my, mx = (ch - h) // 2, (cw - w) // 2
    rows = np.arange(ch, dtype=np.float32)[:, None] - my
    cols = np.arange(cw, dtype=np.float32)[None, :] - mx
    n_fascia = int(rng.integers(2, 5))  # the fat/muscle interface plus 1-3 intermuscular septa
    depths = (np.linspace(0.14, 0.48, n_fascia) + rng.uniform(-0.02, 0.02, n_fascia)) * h
    bands = [
        d
        + rng.uniform(-0.1, 0.1) * (cols - w / 2)  # slant
        + rng.uniform(2.0, 6.0) * np.sin(2 * math.pi * cols / (rng.uniform(0.6, 1.5) * w) + rng.uniform(0, 2 * math.pi))
        for d in depths
    ]
    below_fat = rows > bands[0]
    tissue = np.where(below_fat, 0.38, 0.22).astype(np.float32)  # hypoechoic fat over muscle

    fibres = np.zeros(shape, dtype=np.float32)
    for layer, (upper, lower) in enumerate(zip(bands, bands[1:] + [np.full_like(cols, ch)])):
        angle = math.radians(rng.uniform(8.0, 18.0)) * (1 if layer % 2 == 0 else -1)
        streaks = np.zeros(shape, dtype=np.float32)
        for _ in range(w // 2):
            x0, y0 = rng.uniform(0, cw), rng.uniform(0, ch)
            length = rng.uniform(0.04, 0.15) * w
            end = (int(x0 + length * math.cos(angle)), int(y0 + length * math.sin(angle)))
            cv2.line(streaks, (int(x0), int(y0)), end, float(rng.uniform(0.6, 1.4)), 1, cv2.LINE_AA)
        fibres += streaks * ((rows > upper + 2) & (rows < lower - 2))

    septa = np.zeros(shape, dtype=np.float32)
    for _ in range(max(1, w // 20)):
        x0, y0 = rng.uniform(0, cw), my + rng.uniform(0.05, 0.12) * h
        end = (int(x0 + rng.uniform(0.1, 0.3) * w), int(y0 + rng.uniform(-4, 4)))
        cv2.line(septa, (int(x0), int(y0)), end, float(rng.uniform(0.4, 0.9)), 1, cv2.LINE_AA)
    tissue += fibres + septa * ~below_fat

    for i, band in enumerate(bands):
        strength = rng.uniform(1.5, 2.5) * (1.0 if i == 0 else 0.8)
        tissue += strength * np.exp(-0.5 * ((rows - band) / rng.uniform(1.5, 2.5)) ** 2)
    return tissue
