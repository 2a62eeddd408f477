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
from pydicom.uid import DeflatedExplicitVRLittleEndian
from pydicom.pixels import apply_color_lut, get_decoder, iter_pixels, pixel_array

from pipeline.capture.frame import Frame, Source, SourceError, now_ns, to_uint8

DICOM_SUFFIXES = {".dcm", ".dicom"}
GRAY = {"MONOCHROME1", "MONOCHROME2"}
# iter_pixels already converts YBR_FULL and YBR_FULL_422 (native or JPEG) to RGB.
COLOUR = {"RGB", "YBR_FULL", "YBR_FULL_422", "PALETTE COLOR"}
_DECODE_ERRORS = (RuntimeError, ValueError, OSError, EOFError)  # what pydicom and its plugins raise on bad data
MAX_SIDE = 16384  # rows or columns beyond this are a damaged header, not an ultrasound frame
UNDEFINED_LENGTH = 0xFFFFFFFF


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


def _integer(path: Path, ds: Dataset, keyword: str, tag: str, default: int, low: int, high: int) -> int:
    value = ds.get(keyword)
    try:
        number = default if value in (None, "") else int(value)
    except (TypeError, ValueError):
        raise SourceError(f"{path}: {keyword} ({tag}) {value!r} is not an integer") from None
    if not low <= number <= high:
        raise SourceError(f"{path}: {keyword} ({tag}) {number} is out of range ({low}..{high})")
    return number


def _check_layout(path: Path, ds: Dataset) -> int:
    """The frame count, after checking NumberOfFrames, Rows/Columns, SamplesPerPixel and BitsAllocated against each
    other and against the length of uncompressed pixel data: a header that claims a billion frames is refused here,
    before anything is sized by it."""
    rows = _integer(path, ds, "Rows", "0028,0010", 0, 1, MAX_SIDE)
    cols = _integer(path, ds, "Columns", "0028,0011", 0, 1, MAX_SIDE)
    frames = max(1, _integer(path, ds, "NumberOfFrames", "0028,0008", 1, 0, 2**31 - 1))  # 0 means one, as pydicom reads it
    photometric = ds.get("PhotometricInterpretation")
    samples = 1 if photometric in GRAY | {"PALETTE COLOR"} else 3
    _integer(path, ds, "SamplesPerPixel", "0028,0002", samples, samples, samples)
    bits = _integer(path, ds, "BitsAllocated", "0028,0100", 8, 1, 64)
    if bits not in (8, 16, 32):
        raise SourceError(f"{path}: BitsAllocated (0028,0100) {bits} is not 8, 16 or 32")
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        return frames  # compressed frames: each is checked as it is decoded, and a bad one is named
    item = ds.get_item("PixelData")
    length = getattr(item, "length", None)
    length = len(ds.PixelData) if length is None else length
    frame_bytes = rows * cols * (2 if photometric == "YBR_FULL_422" else samples) * bits // 8
    if length != UNDEFINED_LENGTH and frames > length // frame_bytes:
        raise SourceError(
            f"{path}: NumberOfFrames (0028,0008) says {frames} frames of {rows}x{cols}x{samples} at {bits} bits, "
            f"but the pixel data holds {length // frame_bytes}"
        )
    return frames


MAX_FPS = 1000.0
MAX_SPAN_S = 86_400.0  # a FrameTimeVector claiming a recording longer than a day is ignored (header not trusted)


def _positive(ds: Dataset, keyword: str) -> float | None:
    value = ds.get(keyword)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _timing(ds: Dataset, count: int, fallback_fps: float) -> tuple[float, np.ndarray | None]:
    """Frame rate and, when the file has one covering every frame, each frame's source_ts (s); otherwise a frame's
    time is index / rate (computed per frame: nothing is sized by the claimed count). The rate: FrameTime
    (0018,1063, ms), CineRate (0018,0040), RecommendedDisplayFrameRate, the FrameTimeVector's mean, else
    ``fallback_fps``. The FrameTimeVector (0018,1065) holds ms increments, the first 0."""
    frame_time_ms = _positive(ds, "FrameTime")
    rates = (1000.0 / frame_time_ms if frame_time_ms else None, _positive(ds, "CineRate"), _positive(ds, "RecommendedDisplayFrameRate"))
    fps = next((rate for rate in rates if _plausible(rate)), None)
    try:
        vector = np.atleast_1d(np.asarray(ds.get("FrameTimeVector", []), dtype=float))
    except (TypeError, ValueError):
        vector = np.zeros(0)
    with np.errstate(over="ignore"):
        times = np.concatenate([[0.0], np.cumsum(vector[1:])]) / 1000.0 if vector.size == count and count > 1 else None
    # a vector is used only when every step is a time (finite, not backwards) and the recording lasts < MAX_SPAN_S
    if times is not None and (vector[1:] >= 0).all() and np.isfinite(times).all() and times[-1] < MAX_SPAN_S:
        return fps or _plausible((count - 1) / times[-1] if times[-1] > 0 else None) or fallback_fps, times
    return fps or fallback_fps, None


def _plausible(fps: float | None) -> float | None:
    """A frame rate a recording can have (MAX_FPS at most), else None: the header is not trusted."""
    return fps if fps is not None and fps <= MAX_FPS else None


def _window(ds: Dataset) -> tuple[float, float] | None:
    """The first WindowCenter / WindowWidth pair (0028,1050 / 1051), if any."""
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None:
        return None
    try:
        first = [float(np.atleast_1d(np.asarray(v, dtype=float))[0]) for v in (center, width)]
    except (TypeError, ValueError, IndexError):
        return None  # an unreadable window is no window: the stored bits scale the pixels instead
    return (first[0], first[1]) if first[1] > 0 and all(map(math.isfinite, first)) else None


def _spacing(ds: Dataset) -> tuple[float, float] | None:
    """PixelSpacing (0028,0030): (row, column) mm per pixel, if the file states two positive finite numbers; an
    unreadable value is no spacing (outputs then fall back to ``--spacing``), never an error."""
    try:
        values = [float(v) for v in np.atleast_1d(np.asarray(ds.get("PixelSpacing", []), dtype=float))]
    except (TypeError, ValueError):
        return None
    if len(values) != 2 or not all(math.isfinite(v) and v > 0 for v in values):
        return None
    return values[0], values[1]


class DicomSource(Source):
    """Frames of a DICOM file as 2D uint8 gray (MONOCHROME1 inverted) or H x W x 3 uint8 RGB (RGB, YBR_FULL,
    YBR_FULL_422, and PALETTE COLOR through its lookup table). Deeper pixels are scaled to 8-bit by the
    window when the file has one, else by BitsStored, with a one-time warning. ``fps`` is used only when the
    file gives no frame timing. Frames carry the file's PixelSpacing when it has one."""

    def __init__(self, path: str | Path, *, fps: float = 20.0) -> None:
        self.path = Path(path)
        self.name = str(self.path)
        self.stem = self.path.stem
        self._header = _read_header(self.path)
        _check_decodable(self.path, self._header)
        self._count = _check_layout(self.path, self._header)
        self.fps, self._times = _timing(self._header, self._count, fps)
        self.photometric: str = self._header.PhotometricInterpretation
        self._bits = int(self._header.get("BitsStored") or self._header.get("BitsAllocated") or 8)
        self._window = _window(self._header) if self.photometric in GRAY else None
        self.spacing_mm = _spacing(self._header)
        syntax = self._header.file_meta.TransferSyntaxUID
        self._native_422 = self.photometric == "YBR_FULL_422" and not syntax.is_encapsulated
        self._deflated = syntax == DeflatedExplicitVRLittleEndian

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
        if self._deflated:  # the whole dataset is compressed: inflate it (dcmread does) before reading frames
            return iter_pixels(pydicom.dcmread(self.path))
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
            ts = float(self._times[index]) if self._times is not None else index / self.fps
            yield Frame(index, image, f"{self.stem}_{index:06d}", ts, now_ns(), self.spacing_mm)
