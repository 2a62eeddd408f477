"""The wire format of one labelled frame, and its validation: nothing from the network is used unchecked.

A message is four (or three) ZeroMQ frames, never pickle::

    [b"bonestream/<stream_id>", header (UTF-8 JSON), mask (raw uint8, C order), overlay (optional)]

Header (``schema`` 1; unknown extra keys are ignored, so fields may be added without a version bump)::

    schema               int, SCHEMA_VERSION; a subscriber rejects any other value
    stream_id            str, [A-Za-z0-9._-]{1,64}; equals the topic's suffix
    frame_id             int >= 0, counts per stream from the source's first frame
    source_ts            float seconds on the source's own clock, or null
    timestamps_ns        {captured, inferred, labelled, published}: time.monotonic_ns() on the
                         publishing host (compare only with the same host's monotonic clock)
    published_unix_ns    int, time.time_ns() at publication (wall clock, for other hosts)
    mask                 {shape: [h, w], dtype: "uint8", resolution: "frame" | "roi"}; 0 = background,
                         255 = bone; "frame" masks are frame_size, "roi" masks are roi's height x width
    overlay              null (no 4th frame) or {shape: [h, w, 3], dtype: "uint8", encoding: "jpeg" | "raw"},
                         h x w the mask's or the frame's size;
                         RGB order (raw: h*w*3 bytes; jpeg: a JPEG file decoding to that shape)
    roi                  [top, left, height, width] of the labelled region inside the frame
    frame_size           [h, w] of the source frame
    reference_id         str, the calibration reference the labels come from
    weights              str, model weights label, e.g. "sha256:..." or "random:0"
    random_weights       bool; true means the labels are plumbing only, not anatomy
    foreground_fraction  float in [0, 1], share of patches labelled bone
    confidence           float, mean margin of the bone patches (0 when none)
    dropped              optional {stage: count} of frames dropped upstream so far
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np

from models.errors import BonestreamError
from pipeline.publish.encode import DEFAULT_JPEG_QUALITY, encode_jpeg

SCHEMA_VERSION = 1
TOPIC_PREFIX = b"bonestream/"
MAX_SIDE = 8192
DEFAULT_MAX_BYTES = 64 * 2**20
STAGES = ("captured", "inferred", "labelled", "published")
STREAM_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")  # also names recorded files: no path separators
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # frame headers; C4/C8/CC are not


class MessageError(BonestreamError):
    """A message that does not follow the schema; the text says which check failed."""


def topic(stream_id: str) -> bytes:
    return TOPIC_PREFIX + stream_id.encode()


@dataclass
class FrameMessage:
    """One frame's labels as sent: header fields plus the mask and optional RGB overlay (read-only after decode).

    ``overlay_jpeg`` holds the overlay already encoded (once per frame, for every sender); ``overlay`` may then be
    None when no output needs the raw pixels."""

    stream_id: str
    frame_id: int
    mask: np.ndarray
    overlay: np.ndarray | None
    timestamps_ns: dict[str, int]
    roi: tuple[int, int, int, int]
    frame_size: tuple[int, int]
    reference_id: str
    weights: str
    random_weights: bool
    foreground_fraction: float
    confidence: float
    source_ts: float | None = None
    published_unix_ns: int = 0
    mask_resolution: str = "frame"
    overlay_encoding: str = "jpeg"
    overlay_jpeg: bytes | None = None
    dropped: dict[str, int] | None = None
    received_ns: int | None = None  # receiver's time.monotonic_ns(); set on receipt, never sent

    def header(self) -> dict[str, Any]:
        h: dict[str, Any] = {
            "schema": SCHEMA_VERSION,
            "stream_id": self.stream_id,
            "frame_id": self.frame_id,
            "source_ts": self.source_ts,
            "timestamps_ns": dict(self.timestamps_ns),
            "published_unix_ns": self.published_unix_ns,
            "mask": {"shape": list(self.mask.shape), "dtype": str(self.mask.dtype), "resolution": self.mask_resolution},
            "overlay": None,
            "roi": list(self.roi),
            "frame_size": list(self.frame_size),
            "reference_id": self.reference_id,
            "weights": self.weights,
            "random_weights": self.random_weights,
            "foreground_fraction": self.foreground_fraction,
            "confidence": self.confidence,
        }
        if self.has_overlay:
            shape = list(self.overlay.shape) if self.overlay is not None else [*self.mask.shape[:2], 3]
            h["overlay"] = {"shape": shape, "dtype": "uint8", "encoding": self.overlay_encoding}
        if self.dropped is not None:
            h["dropped"] = dict(self.dropped)
        return h

    @property
    def has_overlay(self) -> bool:
        return self.overlay is not None or (self.overlay_encoding == "jpeg" and self.overlay_jpeg is not None)

    def stamped(self) -> "FrameMessage":
        """A copy carrying the publication time on both clocks (what senders do just before sending)."""
        return dataclasses.replace(
            self, timestamps_ns={**self.timestamps_ns, "published": time.monotonic_ns()}, published_unix_ns=time.time_ns()
        )

    def encode(self, *, jpeg_quality: int = DEFAULT_JPEG_QUALITY) -> list[bytes]:
        """The multipart frames; the header is validated here too, so a producer bug fails at the producer.
        The overlay is JPEG-encoded here only if it was not yet (the pipeline encodes it once for every sender)."""
        header = self.header()
        _check_header(header)
        parts = [topic(self.stream_id), json.dumps(header, separators=(",", ":"), allow_nan=False).encode(), self.mask.tobytes()]
        if not self.has_overlay:
            return parts
        if self.overlay_encoding == "raw":
            return parts + [self.overlay.tobytes()]
        if self.overlay_jpeg is None:
            self.overlay_jpeg = encode_jpeg(self.overlay, jpeg_quality)
        return parts + [self.overlay_jpeg]


def decode_header(parts: Sequence[bytes], *, max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, Any]:
    """Every check except decoding pixels: cheap enough to run on frames a subscriber then skips."""
    if len(parts) not in (3, 4):
        raise MessageError(f"expected 3 or 4 parts, got {len(parts)}")
    size = sum(len(p) for p in parts)
    if size > max_bytes:
        raise MessageError(f"message of {size} bytes exceeds the limit of {max_bytes}")
    if not parts[0].startswith(TOPIC_PREFIX):
        raise MessageError(f"topic {bytes(parts[0][:40])!r} does not start with {TOPIC_PREFIX!r}")
    try:
        header = json.loads(bytes(parts[1]).decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MessageError(f"header is not UTF-8 JSON ({type(exc).__name__})") from None
    _check_header(header)
    if parts[0] != topic(header["stream_id"]):
        raise MessageError(f"topic {bytes(parts[0][:80])!r} does not match stream_id {header['stream_id']!r}")
    overlay = header["overlay"]
    if (overlay is None) != (len(parts) == 3):
        raise MessageError("header.overlay must be null exactly when the message has 3 parts")
    _check_length(parts[2], math.prod(header["mask"]["shape"]), "mask")
    if overlay is not None:
        if overlay["encoding"] == "raw":
            _check_length(parts[3], math.prod(overlay["shape"]), "overlay")
        elif _jpeg_size(parts[3]) != tuple(overlay["shape"][:2]):
            raise MessageError(f"overlay is not a complete JPEG of {overlay['shape'][0]}x{overlay['shape'][1]}")
    return header


def decode(parts: Sequence[bytes], *, max_bytes: int = DEFAULT_MAX_BYTES, header: dict[str, Any] | None = None) -> FrameMessage:
    """Validate and unpack a multipart message. ``header``: what decode_header already returned for these parts."""
    if header is None:
        header = decode_header(parts, max_bytes=max_bytes)
    mask = np.frombuffer(parts[2], np.uint8).reshape(header["mask"]["shape"])
    overlay, encoding, jpeg = None, "jpeg", None
    if header["overlay"] is not None:
        shape, encoding = header["overlay"]["shape"], header["overlay"]["encoding"]
        if encoding == "raw":
            overlay = np.frombuffer(parts[3], np.uint8).reshape(shape)
        else:
            bgr = cv2.imdecode(np.frombuffer(parts[3], np.uint8), cv2.IMREAD_COLOR)
            if bgr is None or bgr.shape != tuple(shape):
                raise MessageError(f"overlay JPEG does not decode to {shape}")
            overlay, jpeg = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), bytes(parts[3])  # kept: a browser takes it as sent
    return FrameMessage(
        stream_id=header["stream_id"],
        frame_id=header["frame_id"],
        mask=mask,
        overlay=overlay,
        timestamps_ns=header["timestamps_ns"],
        roi=tuple(header["roi"]),
        frame_size=tuple(header["frame_size"]),
        reference_id=header["reference_id"],
        weights=header["weights"],
        random_weights=header["random_weights"],
        foreground_fraction=header["foreground_fraction"],
        confidence=header["confidence"],
        source_ts=header["source_ts"],
        published_unix_ns=header["published_unix_ns"],
        mask_resolution=header["mask"]["resolution"],
        overlay_encoding=encoding,
        overlay_jpeg=jpeg,
        dropped=header.get("dropped"),
    )


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _check_length(part: bytes, expected: int, name: str) -> None:
    if len(part) != expected:
        raise MessageError(f"{name} has {len(part)} bytes, its shape needs {expected}")


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from the JPEG frame header, read before decoding so a small message cannot make us
    allocate a huge image; None unless the data starts with SOI and ends with EOI (catches truncation)."""
    data = bytes(data)
    if not (data.startswith(b"\xff\xd8") and data.endswith(b"\xff\xd9")):
        return None
    i = 2
    while i + 9 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker in _SOF_MARKERS:
            return int.from_bytes(data[i + 5 : i + 7], "big"), int.from_bytes(data[i + 7 : i + 9], "big")
        i += 1 if marker == 0xFF else 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


def _field(obj: dict[str, Any], key: str, where: str, *types: type) -> Any:
    if key not in obj:
        raise MessageError(f"{where}.{key} is missing")
    value = obj[key]
    if isinstance(value, bool) and bool not in types or not isinstance(value, types):
        raise MessageError(f"{where}.{key} must be {' or '.join(t.__name__ for t in types)}, not {type(value).__name__}")
    return value


def _number(obj: dict[str, Any], key: str, where: str = "header", lo: float = -math.inf, hi: float = math.inf) -> float:
    value = _field(obj, key, where, int, float)
    if not (math.isfinite(value) and lo <= value <= hi):
        raise MessageError(f"{where}.{key} = {value} is outside [{lo}, {hi}]")
    return value


def _integer(obj: dict[str, Any], key: str, where: str = "header", lo: int = 0, hi: int = 2**63 - 1) -> int:
    value = _field(obj, key, where, int)
    if not lo <= value <= hi:
        raise MessageError(f"{where}.{key} = {value} is outside [{lo}, {hi}]")
    return value


def _int_list(obj: dict[str, Any], key: str, where: str, length: int, lo: int, hi: int) -> list[int]:
    values = _field(obj, key, where, list)
    if len(values) != length:
        raise MessageError(f"{where}.{key} must have {length} entries, has {len(values)}")
    return [_integer({key: v}, key, where, lo, hi) for v in values]


def _array_spec(obj: dict[str, Any], key: str, ndim: int, options_key: str, options: tuple[str, ...]) -> list[int]:
    spec = _field(obj, key, "header", dict)
    where = f"header.{key}"
    shape = _int_list(spec, "shape", where, ndim, 1, MAX_SIDE)
    if ndim == 3 and shape[2] != 3:
        raise MessageError(f"{where}.shape must end in 3 (RGB), not {shape[2]}")
    if _field(spec, "dtype", where, str) != "uint8":
        raise MessageError(f"{where}.dtype must be 'uint8', not {spec['dtype']!r}")
    if _field(spec, options_key, where, str) not in options:
        raise MessageError(f"{where}.{options_key} must be one of {options}, not {spec[options_key]!r}")
    return shape


def _check_header(h: Any) -> None:
    if not isinstance(h, dict):
        raise MessageError("header must be a JSON object")
    if _integer(h, "schema", hi=2**31) != SCHEMA_VERSION:
        raise MessageError(f"schema {h['schema']} is not the supported version {SCHEMA_VERSION}")
    if not STREAM_ID.fullmatch(_field(h, "stream_id", "header", str)):
        raise MessageError("header.stream_id must match [A-Za-z0-9._-]{1,64}")
    _integer(h, "frame_id")
    if h.get("source_ts", 0) is not None:
        _number(h, "source_ts")
    stamps = _field(h, "timestamps_ns", "header", dict)
    for stage in STAGES:
        _integer(stamps, stage, "header.timestamps_ns")
    _integer(h, "published_unix_ns")
    mask_shape = _array_spec(h, "mask", 2, "resolution", ("frame", "roi"))
    overlay_shape = None
    if _field(h, "overlay", "header", dict, type(None)) is not None:
        overlay_shape = _array_spec(h, "overlay", 3, "encoding", ("jpeg", "raw"))
    fh, fw = _int_list(h, "frame_size", "header", 2, 1, MAX_SIDE)
    top, left, rh, rw = _int_list(h, "roi", "header", 4, 0, MAX_SIDE)
    if rh < 1 or rw < 1 or top + rh > fh or left + rw > fw:
        raise MessageError(f"header.roi {h['roi']} does not lie inside frame_size {h['frame_size']}")
    expected = [fh, fw] if h["mask"]["resolution"] == "frame" else [rh, rw]
    if mask_shape != expected:
        raise MessageError(f"mask shape {mask_shape} does not match its {h['mask']['resolution']} size {expected}")
    if overlay_shape is not None and overlay_shape not in ([*mask_shape, 3], [fh, fw, 3]):
        raise MessageError(f"overlay shape {overlay_shape} is neither the mask's {mask_shape} nor the frame's {[fh, fw]} x 3")
    _field(h, "reference_id", "header", str)
    _field(h, "weights", "header", str)
    _field(h, "random_weights", "header", bool)
    _number(h, "foreground_fraction", lo=0.0, hi=1.0)
    _number(h, "confidence")
    dropped = h.get("dropped")
    if dropped is not None:
        for stage in _field(h, "dropped", "header", dict):
            _integer(dropped, stage, "header.dropped")
