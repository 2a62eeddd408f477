"""Live view of a stream: the newest overlay with rate, latency and loss counters, in a window or a PNG.

``annotate`` does all the drawing and is a pure function; the window loop only fetches, shows and polls keys.
Latencies subtract the publisher's monotonic capture time from this host's monotonic clock, so they are
meaningful only when viewer and pipeline run on the same host.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from pathlib import Path
from typing import Mapping

import cv2
import numpy as np

from models.errors import BonestreamError
from pipeline.publish.files import write_png_atomic
from pipeline.publish.message import FrameMessage
from pipeline.publish.subscriber import NO_FRAMES_HINT, Subscriber

WHITE, RED = (230, 230, 230), (255, 40, 40)
LINE_HEIGHT = 18
MIN_WIDTH = 480  # status text needs this much room even under a small frame
QUIT_KEYS = (ord("q"), 27)  # q, Esc


class ViewerError(BonestreamError):
    """No display to open a window on, or no frame arrived for a snapshot."""


class RateMeter:
    """Frames per second over the last ``window`` arrivals."""

    def __init__(self, window: int = 30) -> None:
        self._times: deque[int] = deque(maxlen=window)

    def tick(self, now_ns: int) -> None:
        self._times.append(now_ns)

    @property
    def fps(self) -> float:
        span = self._times[-1] - self._times[0] if len(self._times) > 1 else 0
        return (len(self._times) - 1) * 1e9 / span if span > 0 else 0.0


def since_capture_ms(msg: FrameMessage) -> tuple[float, float | None]:
    """Milliseconds from capture to publication and (None until received) to receipt here."""
    captured = msg.timestamps_ns["captured"]
    received = (msg.received_ns - captured) / 1e6 if msg.received_ns is not None else None
    return (msg.timestamps_ns["published"] - captured) / 1e6, received


def random_warning(msg: FrameMessage) -> str | None:
    """What every view of a random-weights stream says first."""
    return f"RANDOM WEIGHTS ({msg.weights}): plumbing only, not anatomy" if msg.random_weights else None


def _status_lines(msg: FrameMessage, fps: float, counters: Mapping[str, int]) -> list[tuple[str, tuple[int, int, int]]]:
    published_ms, received_ms = since_capture_ms(msg)
    received = f", received {received_ms:.1f} ms" if received_ms is not None else ""
    dropped = sum((msg.dropped or {}).values())
    lines = [
        (f"{msg.stream_id} frame {msg.frame_id}  {fps:.1f} fps  bone {msg.foreground_fraction:.0%}", WHITE),
        (f"since capture: published {published_ms:.1f} ms{received}", WHITE),
        (f"missed {counters['missed']}  skipped {counters['skipped']}  malformed {counters['malformed']}  dropped upstream {dropped}", WHITE),
    ]
    if (warning := random_warning(msg)) is not None:
        lines.insert(0, (warning, RED))
    return lines


def annotate(msg: FrameMessage, fps: float, counters: Mapping[str, int]) -> np.ndarray:
    """RGB image: the overlay (or the mask in white when the stream has none) above a band of status text,
    kept below the image so it never hides anatomy."""
    image = msg.overlay if msg.overlay is not None else cv2.cvtColor(msg.mask, cv2.COLOR_GRAY2RGB)
    lines = _status_lines(msg, fps, counters)
    h, w = image.shape[:2]
    canvas = np.zeros((h + LINE_HEIGHT * len(lines) + 6, max(w, MIN_WIDTH), 3), np.uint8)
    canvas[:h, :w] = image
    for i, (text, colour) in enumerate(lines, start=1):
        cv2.putText(canvas, text, (4, h + LINE_HEIGHT * i), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1, cv2.LINE_AA)
    return canvas


def show(sub: Subscriber, *, title: str = "bonestream", max_frames: int | None = None) -> int:
    """Show the newest frame until q/Esc, the window is closed, or ``max_frames``; returns frames shown."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise ViewerError("no display (DISPLAY is not set): use --headless-snapshot PNG instead")
    meter, shown = RateMeter(), 0
    cv2.namedWindow(title, cv2.WINDOW_NORMAL)
    try:
        while max_frames is None or shown < max_frames:
            msg = sub.latest(timeout=0.03)
            if msg is not None:
                meter.tick(msg.received_ns)
                cv2.imshow(title, cv2.cvtColor(annotate(msg, meter.fps, sub.counters()), cv2.COLOR_RGB2BGR))
                shown += 1
            if (cv2.waitKey(1) & 0xFF) in QUIT_KEYS or cv2.getWindowProperty(title, cv2.WND_PROP_VISIBLE) < 1:
                break
    finally:
        cv2.destroyWindow(title)
    return shown


def snapshot(sub: Subscriber, path: str | Path, *, max_frames: int = 1, timeout: float = 10.0) -> int:
    """Receive up to ``max_frames`` frames (stopping early after ``timeout`` s without one) and write the last
    one, annotated as the window would show it, to a PNG; returns the frames received."""
    meter, last, received = RateMeter(), None, 0
    while received < max_frames and (msg := sub.recv(timeout)) is not None:
        meter.tick(msg.received_ns)
        last, received = msg, received + 1
    if last is None:
        raise ViewerError(f"no frame arrived within {timeout} s ({NO_FRAMES_HINT})")
    write_png_atomic(path, annotate(last, meter.fps, sub.counters()))
    return received
