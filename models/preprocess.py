"""Preprocessing geometry: the single definition of how a source frame becomes model input and back.

Calibration stores a ``Geometry`` in the reference file and the runtime uses that same object, so crop,
resize, grid and the mapping of patch labels back onto the full frame can never drift apart. Keys of the
last block carry positional signal: a different grid or resampling would move every descriptor.

The host's share is small and uint8 throughout: ``plane`` turns a frame into the one uint8 plane that crosses to
the device. With a host resampling (OpenCV, exact and reproducible on any machine) that plane is the resized ROI;
with a device resampling (torch's antialiased resize) it is the whole gray frame, and crop and resize run in the
graph (``models.encoder.ModelInput``). Normalisation always runs in the graph, folded into the patch embedding.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Iterable, Mapping, Sequence

import cv2
import numpy as np
from PIL import Image

from models.architecture import IMAGENET_MEAN, IMAGENET_STD, PATCH
from models.errors import FrameError, FrameSizeError
from models.resampling import DEFAULT_RESAMPLING, DEVICE_RESAMPLING, HOST_METHODS, RESAMPLING
from models.vit import grid_size
Resize = Callable[[np.ndarray, tuple[int, int]], np.ndarray]  # (uint8 image, (height, width)) -> uint8 image


def _pil_lanczos(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    # What the original extractor's torchvision Resize does to a PIL image: Pillow's Lanczos, whose kernel widens
    # with the scale (antialiased). Gray gives the same bytes as each channel of the RGB the original converts to.
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.LANCZOS))


def _opencv(flag: int) -> Resize:
    return lambda image, size: cv2.resize(image, (size[1], size[0]), interpolation=flag)


HOST_RESAMPLING: dict[str, Resize] = dict(zip(HOST_METHODS, (  # in models.resampling.HOST_METHODS' order
    _pil_lanczos,  # pil-lanczos: equal to the original code's and the study's preprocessing
    _opencv(cv2.INTER_LANCZOS4),  # lanczos: OpenCV's Lanczos-4, a fixed 8x8 kernel, so it aliases when shrinking
    _opencv(cv2.INTER_AREA),
    _opencv(cv2.INTER_LINEAR),
    _opencv(cv2.INTER_CUBIC),
), strict=True))


def to_gray(image: np.ndarray, where: str = "frame") -> np.ndarray:
    """B-mode content as one uint8 channel: gray as is, RGB/RGBA by luma (grabbers deliver colour frames)."""
    if image.dtype != np.uint8:
        raise FrameError(f"{where}: pixel type {image.dtype} is not 8-bit; convert it at the source")
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 1:
        return image[:, :, 0]
    if image.ndim == 3 and image.shape[2] in (3, 4):
        code = cv2.COLOR_RGB2GRAY if image.shape[2] == 3 else cv2.COLOR_RGBA2GRAY
        return cv2.cvtColor(np.ascontiguousarray(image), code)
    raise FrameError(f"{where}: shape {image.shape} is neither gray (H x W) nor RGB/RGBA (H x W x 3|4)")


def detect_roi(images: Iterable[np.ndarray], threshold: float = 12.0, min_fill: float = 0.02) -> tuple[int, int, int, int]:
    """Bounding box (top, left, height, width) of the imaging area: rows and columns that are not black margin.

    A heuristic for frames with black borders; scanner UI inside the box must be cropped with an explicit ROI.
    """
    mean = None
    count = 0
    for image in images:
        gray = to_gray(image).astype(np.float32)
        mean = gray if mean is None else mean + gray
        count += 1
    if mean is None:
        raise FrameError("cannot detect a region of interest without frames")
    bright = (mean / count) > threshold
    rows = np.flatnonzero(bright.mean(axis=1) > min_fill)
    cols = np.flatnonzero(bright.mean(axis=0) > min_fill)
    if rows.size == 0 or cols.size == 0:
        return 0, 0, mean.shape[0], mean.shape[1]
    return int(rows[0]), int(cols[0]), int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def fit_input_size(roi_size: tuple[int, int], short_side: int, patch: int = PATCH, round_sides: bool = True) -> tuple[int, int]:
    """Model input (height, width) with the ROI's aspect ratio and the short side as given. ``round_sides`` rounds
    both sides to multiples of the patch (no pixel the conv would drop); otherwise the long side is truncated as
    torchvision's ``Resize(int)`` does, the original code's rule (the conv then drops the remainder)."""
    h, w = roi_size
    if not round_sides:
        long = int(short_side * max(h, w) / min(h, w))
        return (short_side, long) if h <= w else (long, short_side)
    scale = short_side / min(h, w)
    return tuple(max(patch, int(round(side * scale / patch)) * patch) for side in (h, w))  # type: ignore[return-value]


@dataclass(frozen=True)
class Geometry:
    """Frame size, crop box, model input size, stride and normalisation: everything between pixels and keys."""

    frame_size: tuple[int, int]
    roi: tuple[int, int, int, int]
    input_size: tuple[int, int]
    stride: int = PATCH
    resampling: str = DEFAULT_RESAMPLING
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    patch: int = field(default=PATCH)

    def __post_init__(self) -> None:
        fh, fw = self.frame_size
        top, left, rh, rw = self.roi
        if min(fh, fw, rh, rw) <= 0 or top < 0 or left < 0 or top + rh > fh or left + rw > fw:
            raise FrameError(f"geometry: roi {self.roi} (top, left, height, width) does not fit frame {fh}x{fw}")
        if self.resampling not in RESAMPLING:
            raise FrameError(f"geometry: resampling {self.resampling!r} is not one of {', '.join(RESAMPLING)}")
        try:
            grid_size(*self.input_size, self.stride, self.patch)
        except ValueError as exc:
            raise FrameError(f"geometry: {exc}") from None

    @classmethod
    def fit(
        cls,
        frame_size: tuple[int, int],
        roi: tuple[int, int, int, int] | None = None,
        short_side: int = 224,
        input_size: tuple[int, int] | None = None,
        stride: int = PATCH,
        resampling: str = DEFAULT_RESAMPLING,
        round_sides: bool = True,
    ) -> "Geometry":
        roi = roi or (0, 0, frame_size[0], frame_size[1])
        size = input_size or fit_input_size((roi[2], roi[3]), short_side, round_sides=round_sides)
        return cls(frame_size=tuple(frame_size), roi=tuple(roi), input_size=tuple(size), stride=stride, resampling=resampling)

    @property
    def grid(self) -> tuple[int, int]:
        return grid_size(*self.input_size, self.stride, self.patch)

    def check_frame(self, image: np.ndarray, where: str = "frame") -> None:
        if image.shape[:2] != tuple(self.frame_size):
            raise FrameSizeError(
                f"{where}: size {image.shape[1]}x{image.shape[0]} (w x h) differs from the calibrated "
                f"{self.frame_size[1]}x{self.frame_size[0]}; recalibrate for this source or fix the capture"
            )

    def at_frame_size(self, size: tuple[int, int], where: str = "source") -> "Geometry":
        """This geometry for frames of ``size`` (height, width): the reuse rule, defined here only.

        The ROI (in source pixels) and the model input size are kept, so the crop, the resize and therefore the patch
        grid and each patch's pixels are unchanged; rows and columns outside the ROI (a row the encoder padded) are
        ignored and masked zero. A frame the ROI does not fit inside is refused: it would change what a patch sees."""
        size = (int(size[0]), int(size[1]))
        if size == tuple(self.frame_size):
            return self
        top, left, h, w = self.roi
        if top + h > size[0] or left + w > size[1]:
            raise FrameSizeError(
                f"{where}: frames are {size[1]}x{size[0]} (w x h), calibrated {self.frame_size[1]}x{self.frame_size[0]}; "
                f"the calibrated imaging area (roi top {top}, left {left}, {w}x{h}) does not fit inside them, so the "
                "patches would change; recalibrate for this source"
            )
        return replace(self, frame_size=size)

    def crop(self, image: np.ndarray, where: str = "frame") -> np.ndarray:
        """The ROI of a frame, as uint8 gray."""
        self.check_frame(image, where)
        top, left, h, w = self.roi
        return to_gray(image, where)[top : top + h, left : left + w]

    @property
    def on_device(self) -> bool:
        """True when crop and resize run in the graph on the device (a device resampling)."""
        return self.resampling in DEVICE_RESAMPLING

    @property
    def plane_size(self) -> tuple[int, int]:
        """Height x width of the uint8 plane the engine takes: the resized ROI, or the whole frame (device resize)."""
        return tuple(self.frame_size) if self.on_device else tuple(self.input_size)  # type: ignore[return-value]

    def plane(self, image: np.ndarray, where: str = "frame") -> np.ndarray:
        """The uint8 plane of one frame for the engine (see the module docstring): no float work on the host."""
        if self.on_device:
            self.check_frame(image, where)
            return to_gray(image, where)
        return HOST_RESAMPLING[self.resampling](self.crop(image, where), tuple(self.input_size))

    def planes(self, images: Sequence[np.ndarray], names: Sequence[str] | None = None) -> np.ndarray:
        """N x plane_size uint8, frames named in errors by ``names`` (default ``frame i``)."""
        names = names or [f"frame {i}" for i in range(len(images))]
        return np.stack([self.plane(image, name) for image, name in zip(images, names)])

    def _nearest_cell(self, length: int, input_len: int, grid_len: int, cell: int, step: int) -> np.ndarray:
        # Centre of pixel i of a ``length``-long axis in model-input pixels, then the cell whose centre
        # (j * step + (cell - 1) / 2) is nearest.
        centres = (np.arange(length) + 0.5) * (input_len / length) - 0.5
        index = np.rint((centres - (cell - 1) / 2) / step).astype(np.int64)
        return np.clip(index, 0, grid_len - 1)

    def frame_lookup(self, cells: str = "patch") -> tuple[np.ndarray, np.ndarray]:
        """For every frame row and column, the patch (``cells="patch"``) or model-input pixel (``"pixel"``) row /
        column whose centre is nearest; one past the last cell outside the ROI, so a map padded with one empty row
        and column maps onto the full frame with two gathers."""
        top, left, rh, rw = self.roi
        (ih, iw), (gh, gw) = self.input_size, self.grid if cells == "patch" else self.input_size
        cell, step = (self.patch, self.stride) if cells == "patch" else (1, 1)
        rows = np.full(self.frame_size[0], gh, np.int64)
        cols = np.full(self.frame_size[1], gw, np.int64)
        rows[top : top + rh] = self._nearest_cell(rh, ih, gh, cell, step)
        cols[left : left + rw] = self._nearest_cell(rw, iw, gw, cell, step)
        return rows, cols

    def input_lookup(self) -> tuple[np.ndarray, np.ndarray]:
        """For every model-input row and column, the patch row / column whose centre is nearest."""
        (ih, iw), (gh, gw) = self.input_size, self.grid
        return self._nearest_cell(ih, ih, gh, self.patch, self.stride), self._nearest_cell(iw, iw, gw, self.patch, self.stride)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Geometry":
        try:
            return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
        except TypeError as exc:
            raise FrameError(f"geometry: {exc}") from None


def parse_roi(text: str, frames: Sequence[np.ndarray]) -> tuple[int, int, int, int]:
    """``auto`` (detect the imaging area), ``full`` or ``top,left,height,width`` in frame pixels."""
    if text == "auto":
        return detect_roi(frames)
    if text == "full":
        h, w = frames[0].shape[:2]
        return 0, 0, h, w
    try:
        top, left, height, width = (int(v) for v in text.split(","))
    except ValueError:
        raise FrameError(f"--roi {text!r}: expected auto, full or top,left,height,width") from None
    return top, left, height, width
