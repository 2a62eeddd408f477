"""DICOM cine (US Multi-frame, or one frame) through pydicom 3, decoded one frame at a time.

Recorded exams often come as US Multi-frame DICOM, usually JPEG Baseline. pydicom.pixels.iter_pixels reads
and decodes one frame at a time from the file, so a long cine never sits in memory whole.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, get_decoder, iter_pixels, pixel_array

from pipeline.capture.frame import Frame, Source, SourceError, now_ns, to_uint8

DICOM_SUFFIXES = {".dcm", ".dicom"}
GRAY = {"MONOCHROME1", "MONOCHROME2"}
# iter_pixels already converts YBR_FULL and YBR_FULL_422 (native or JPEG) to RGB.
COLOUR = {"RGB", "YBR_FULL", "YBR_FULL_422", "PALETTE COLOR"}
_DECODE_ERRORS = (RuntimeError, ValueError, OSError, EOFError)  # what pydicom and its plugins raise on bad data


def is_dicom(spec: str | Path) -> bool:
    """A .dcm / .dicom name, or a file with the 'DICM' marker after the 128-byte preamble."""
    path = Path(spec)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with path.open("rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _read_header(path: Path) -> Dataset:
    """Every element but large values (pixel data above all), which stay in the file until used."""
    if not path.is_file():
        raise SourceError(f"{path}: no such DICOM file")
    try:
        return pydicom.dcmread(path, defer_size="64 KB")
    except InvalidDicomError:
        raise SourceError(f"{path}: not a DICOM file (no 'DICM' marker after the 128-byte preamble)") from None
    except (OSError, ValueError, EOFError) as exc:
        raise SourceError(f"{path}: cannot read as DICOM ({exc})") from None


def _check_decodable(path: Path, ds: Dataset) -> None:
    if "PixelData" not in ds:
        raise SourceError(f"{path}: no PixelData (7FE0,0010) element: not an image")
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is None:
        raise SourceError(f"{path}: file meta has no TransferSyntaxUID (0002,0010)")
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise SourceError(
            f"{path}: transfer syntax {syntax.name} ({syntax}) has no pydicom decoder; for MPEG/HEVC cine, "
            "transcode it to JPEG Baseline with a DICOM toolkit (gdcmconv, dcmtk) or export it as MP4"
        ) from None
    if not decoder.is_available:
        plugins = "; ".join(decoder.missing_dependencies)
        raise SourceError(f"{path}: transfer syntax {syntax.name} needs a decoding plugin, none installed: {plugins}")
    photometric = ds.get("PhotometricInterpretation")
    if photometric not in GRAY | COLOUR:
        raise SourceError(
            f"{path}: PhotometricInterpretation (0028,0004) {photometric!r} is not supported "
            f"({', '.join(sorted(GRAY | COLOUR))})"
        )


def _positive(ds: Dataset, keyword: str) -> float | None:
    value = ds.get(keyword)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _timing(ds: Dataset, count: int, fallback_fps: float) -> tuple[float, list[float]]:
    """Frame rate and each frame's source_ts (s). The rate: FrameTime (0018,1063, ms), CineRate (0018,0040),
    RecommendedDisplayFrameRate, the FrameTimeVector's mean, else ``fallback_fps``. Timestamps: the
    FrameTimeVector (0018,1065, ms increments, the first is 0) when it covers every frame, else index / rate."""
    frame_time_ms = _positive(ds, "FrameTime")
    fps = (1000.0 / frame_time_ms if frame_time_ms else None) or _positive(ds, "CineRate")
    fps = fps or _positive(ds, "RecommendedDisplayFrameRate")
    vector = np.atleast_1d(np.asarray(ds.get("FrameTimeVector", []), dtype=float))
    if vector.size == count and count > 1 and np.isfinite(vector).all():
        times = np.concatenate([[0.0], np.cumsum(vector[1:])]) / 1000.0
        fps = fps or ((count - 1) / times[-1] if times[-1] > 0 else None) or fallback_fps
        return fps, times.tolist()
    fps = fps or fallback_fps
    return fps, [i / fps for i in range(count)]


def _window(ds: Dataset) -> tuple[float, float] | None:
    """The first WindowCenter / WindowWidth pair (0028,1050 / 1051), if any."""
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None:
        return None
    first = [float(np.atleast_1d(np.asarray(v, dtype=float))[0]) for v in (center, width)]
    return (first[0], first[1]) if first[1] > 0 else None


class DicomSource(Source):
    """Frames of a DICOM file as 2D uint8 gray (MONOCHROME1 inverted) or H x W x 3 uint8 RGB (RGB, YBR_FULL,
    YBR_FULL_422, and PALETTE COLOR through its lookup table). Deeper pixels are scaled to 8-bit by the
    window when the file has one, else by BitsStored, with a one-time warning. ``fps`` is used only when the
    file gives no frame timing."""

    def __init__(self, path: str | Path, *, fps: float = 20.0) -> None:
        self.path = Path(path)
        self.name = str(self.path)
        self.stem = self.path.stem
        self._header = _read_header(self.path)
        _check_decodable(self.path, self._header)
        self._count = int(self._header.get("NumberOfFrames") or 1)
        self.fps, self._times = _timing(self._header, self._count, fps)
        self.photometric: str = self._header.PhotometricInterpretation
        self._bits = int(self._header.get("BitsStored") or self._header.get("BitsAllocated") or 8)
        self._window = _window(self._header) if self.photometric in GRAY else None
        syntax = self._header.file_meta.TransferSyntaxUID
        self._native_422 = self.photometric == "YBR_FULL_422" and not syntax.is_encapsulated

    @property
    def count(self) -> int:
        return self._count

    def _to_8bit(self, pixels: np.ndarray) -> np.ndarray:
        if self.photometric == "PALETTE COLOR":  # the LUT's own depth (8 or 16 bits) sets the scale
            return to_uint8(apply_color_lut(pixels, self._header), self.name)
        pixels = to_uint8(pixels, self.name, bits=self._bits, window=self._window)
        return 255 - pixels if self.photometric == "MONOCHROME1" else pixels

    def _frames(self) -> Iterator[np.ndarray]:
        if self._native_422:  # pydicom 3.0 iter_pixels sizes native 4:2:2 frames after the first as 4:4:4
            return (pixel_array(self.path, index=i) for i in range(self._count))
        return iter_pixels(self.path)

    def __iter__(self) -> Iterator[Frame]:
        frames = self._frames()
        for index in range(self._count):
            try:
                pixels = next(frames)
            except StopIteration:
                raise SourceError(f"{self.path}: pixel data ends at frame {index} of {self._count}") from None
            except _DECODE_ERRORS as exc:
                raise SourceError(f"{self.path}: corrupt pixel data at frame {index} ({exc})") from None
            image = np.ascontiguousarray(self._to_8bit(pixels))
            yield Frame(index, image, f"{self.stem}_{index:06d}", self._times[index], now_ns())
