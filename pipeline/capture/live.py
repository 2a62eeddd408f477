"""Live input: capture devices through OpenCV, and replays played as devices; newest frame kept, drops counted.

Live input must never queue: when the pipeline is slower than the device a queue only adds latency. A grab
thread therefore keeps just the newest frame in a one-slot mailbox and counts the frames it overwrote.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Generic, Iterator, Protocol, TypeVar

import cv2
import numpy as np

from pipeline.capture.frame import Frame, Source, SourceError, now_ns
from pipeline.capture.images import from_bgr
from pipeline.capture.pacing import PacedSource

T = TypeVar("T")


class Mailbox(Generic[T]):
    """One-slot handoff that keeps only the newest item; ``dropped`` counts items overwritten before they
    were taken (for a capture: frames the pipeline was too slow to see)."""

    def __init__(self) -> None:
        self._ready = threading.Condition()
        self._item: T | None = None
        self._finished = False
        self._error: Exception | None = None
        self.dropped = 0

    def put(self, item: T) -> None:
        with self._ready:
            if self._item is not None:
                self.dropped += 1
            self._item = item
            self._ready.notify()

    def finish(self, error: Exception | None = None) -> None:
        """No more items; ``take`` raises ``error``, if given, once the slot is empty."""
        with self._ready:
            self._finished = True
            self._error = self._error or error
            self._ready.notify_all()

    def take(self) -> T | None:
        """The newest item, waiting for one; None once finished and empty."""
        with self._ready:
            self._ready.wait_for(lambda: self._item is not None or self._finished)
            item, self._item = self._item, None
            if item is None and self._error is not None:
                raise self._error
            return item


class GrabbedSource(Source):
    """A live source whose frames a producer thread (``_produce``) puts into a Mailbox. The thread starts at
    the first iteration; iteration ends when the producer returns, raises the producer's error, or stops at
    ``close``."""

    live = True

    def __init__(self) -> None:
        self._mailbox: Mailbox[Frame] = Mailbox()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"grab {self.name}", daemon=True)

    @property
    def dropped(self) -> int:
        """Capture drops: frames overwritten in the mailbox before the consumer took them."""
        return self._mailbox.dropped

    def _produce(self, put: Callable[[Frame], None]) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        try:
            self._produce(self._mailbox.put)
        except Exception as exc:  # raised again on the consumer's side, where it iterates
            self._mailbox.finish(exc)
        else:
            self._mailbox.finish()

    def __iter__(self) -> Iterator[Frame]:
        if self._thread.ident is None and not self._stop.is_set():
            self._thread.start()
        while not self._stop.is_set() and (frame := self._mailbox.take()) is not None:
            yield frame

    def interrupt(self) -> None:
        """Iteration ends now (a consumer waiting for the next frame wakes); the producer stops at its next check."""
        self._stop.set()
        self._mailbox.finish()

    def close(self, timeout_s: float = 1.0) -> None:
        """Stops the thread and waits up to ``timeout_s`` for it (a driver blocked in read may take longer)."""
        self.interrupt()
        if self._thread.ident is not None:
            self._thread.join(timeout_s)


class Capture(Protocol):
    """The part of cv2.VideoCapture that LiveSource uses."""

    def isOpened(self) -> bool: ...
    def read(self) -> tuple[bool, np.ndarray | None]: ...
    def get(self, prop: int) -> float: ...
    def set(self, prop: int, value: float) -> bool: ...
    def release(self) -> None: ...


def is_device(spec: str) -> bool:
    """A V4L2 index ("0"), a device path ("/dev/video0") or a GStreamer pipeline (contains "!")."""
    return spec.isdigit() or spec.startswith("/dev/video") or "!" in spec


def open_device(device: str) -> cv2.VideoCapture:
    """OpenCV capture for a V4L2 index, a device path or a GStreamer pipeline."""
    if device.isdigit():
        return cv2.VideoCapture(int(device))
    return cv2.VideoCapture(device, cv2.CAP_GSTREAMER if "!" in device else cv2.CAP_V4L2)


@dataclass(frozen=True)
class LiveConfig:
    """Driver buffering and reconnection. Between attempts to reopen a failed or vanished device the wait
    doubles from ``backoff_s`` to ``backoff_max_s``; after ``max_reconnect_s`` without frames the source fails."""

    buffer_size: int = 1  # OpenCV keeps 4 V4L2 buffers by default: up to 4 frames of extra latency
    backoff_s: float = 0.1
    backoff_max_s: float = 2.0
    max_reconnect_s: float = 10.0

    def __post_init__(self) -> None:
        if not (self.buffer_size >= 1 and 0 < self.backoff_s <= self.backoff_max_s and self.max_reconnect_s >= 0):
            raise ValueError(f"LiveConfig needs buffer_size >= 1 and 0 < backoff_s <= backoff_max_s, got {self}")


class LiveSource(GrabbedSource):
    """A capture device (V4L2 index or path, or GStreamer pipeline) through OpenCV, reconnecting on failure.

    Frame ids increase by one per grabbed frame, so gaps in the ids the consumer sees are the ``dropped``
    frames. ``source_ts`` is the driver's frame time (CAP_PROP_POS_MSEC) anchored to time.monotonic() at each
    connection's first frame, or the arrival time while the driver's time does not advance. ``reconnects``
    counts outages recovered from (frames flowing again) and ``gaps`` holds each outage as (start, end)
    monotonic seconds: from the last frame (or first failed open) to the next frame. ``open_capture`` replaces
    the device (tests open video files with cv2.VideoCapture).
    """

    def __init__(
        self,
        device: str,
        *,
        config: LiveConfig = LiveConfig(),
        open_capture: Callable[[], Capture] | None = None,
    ) -> None:
        if open_capture is None:
            if "!" in device and not cv2.videoio_registry.hasBackend(cv2.CAP_GSTREAMER):
                raise SourceError(f"{device}: this OpenCV build has no GStreamer backend (opencv-python lacks it)")
            if device.startswith("/dev/") and not Path(device).exists():
                raise SourceError(f"{device}: no such capture device")
        self.device = device
        self.name = device
        self.stem = "gstreamer" if "!" in device else (f"camera{device}" if device.isdigit() else Path(device).name)
        self.config = config
        self._open_capture = open_capture or (lambda: open_device(device))
        self.reconnects = 0
        self.gaps: list[tuple[float, float]] = []
        self._next_id = 0
        self._outage: float | None = None  # monotonic start of the frame-less interval not yet recovered from
        super().__init__()

    def _connect(self) -> Capture | None:
        capture = self._open_capture()
        if not capture.isOpened():
            capture.release()
            return None
        capture.set(cv2.CAP_PROP_BUFFERSIZE, self.config.buffer_size)
        self.fps = capture.get(cv2.CAP_PROP_FPS) or self.fps
        return capture

    def _deliver(self, capture: Capture, put: Callable[[Frame], None]) -> float | None:
        """Grab until read fails or close; the monotonic arrival time of the last frame, None if there was none."""
        arrived: float | None = None
        anchor, last_pos = 0.0, None
        while not self._stop.is_set():
            ok, image = capture.read()
            if not ok or image is None:
                break
            arrived = time.monotonic()
            if self._outage is not None:
                self.gaps.append((self._outage, arrived))
                self.reconnects += 1
                self._outage = None
            pos = capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            if last_pos is None or pos <= last_pos:  # a first frame, or a driver without a frame clock
                anchor = arrived - pos
            last_pos = pos
            put(Frame(self._next_id, from_bgr(image), f"{self.stem}_{self._next_id:06d}", anchor + pos, now_ns()))
            self._next_id += 1
        return arrived

    def _produce(self, put: Callable[[Frame], None]) -> None:
        delay = self.config.backoff_s
        while not self._stop.is_set():
            capture = self._connect()
            last_frame = None
            if capture is not None:
                try:
                    last_frame = self._deliver(capture, put)
                finally:
                    capture.release()
            if self._stop.is_set():
                return
            if last_frame is not None:  # it was delivering: reopen at once, back off only if that fails
                self._outage, delay = last_frame, self.config.backoff_s
                continue
            if self._outage is None:
                self._outage = time.monotonic()
            waited = time.monotonic() - self._outage
            if waited >= self.config.max_reconnect_s:
                raise SourceError(
                    f"{self.device}: no frames for {waited:.1f} s (device gone or not delivering); stopped reconnecting"
                )
            self._stop.wait(delay)
            delay = min(2 * delay, self.config.backoff_max_s)


class LiveReplay(GrabbedSource):
    """A replay source played as a live device, to exercise live behaviour without hardware: a thread releases
    its frames at recorded pace into the same mailbox as LiveSource, so a slower consumer loses frames
    (counted in ``dropped``) instead of falling behind. ``source`` is the wrapped replay source; ``loop`` restarts
    it at its end."""

    def __init__(self, source: Source, *, loop: bool = False) -> None:
        self.source = source
        self.name, self.stem, self.fps = source.name, source.stem, source.fps
        self._paced = PacedSource(source, "realtime", loop=loop)
        super().__init__()

    def _produce(self, put: Callable[[Frame], None]) -> None:
        for frame in self._paced:
            put(frame)

    def close(self, timeout_s: float = 1.0) -> None:
        self._paced.close()  # wakes its sleep: a recorded gap may be long
        super().close(timeout_s)
