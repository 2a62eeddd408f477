"""A live status line for long jobs (``run``, ``record``), so minutes of work never look like a hang.

On a terminal one line on stderr is rewritten in place about 4 times a second; when stderr is not a terminal (a
log file, a pipe) a plain line is written every 10 s instead, so logs show progress without being flooded. A
thread of its own reads the job's counters: nothing is added to the frame path. ``--no-progress`` turns it off.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TYPE_CHECKING, Callable, TextIO

import numpy as np

if TYPE_CHECKING:
    from pipeline.publish.recorder import Recorder
    from pipeline.publish.subscriber import Subscriber
    from pipeline.run import Pipeline

TTY_INTERVAL_S = 0.25
PLAIN_INTERVAL_S = 10.0
LATENCY_WINDOW = 100  # frames the p50 latency is taken over


class Rate:
    """Frames per second over the last few seconds, from a growing count sampled now and then."""

    def __init__(self, window_s: float = 2.0) -> None:
        self.window_s = window_s
        self._samples: list[tuple[float, int]] = []

    def __call__(self, count: int) -> float:
        now = time.monotonic()
        self._samples = [s for s in self._samples if now - s[0] <= self.window_s] + [(now, count)]
        (t0, c0), (t1, c1) = self._samples[0], self._samples[-1]
        return (c1 - c0) / (t1 - t0) if t1 > t0 else 0.0


class StatusLine:
    """Shows ``text()`` while the ``with`` block runs (see the module docstring); off when ``enabled`` is False."""

    def __init__(self, text: Callable[[], str], *, enabled: bool = True, stream: TextIO | None = None,
                 plain_interval_s: float = PLAIN_INTERVAL_S) -> None:
        self.text = text
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self.interval_s = TTY_INTERVAL_S if self.tty else plain_interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bonestream-status", daemon=True)

    def _show(self) -> None:
        try:
            line = self.text()
        except Exception as exc:  # a status line must never end the job it reports on
            line = f"(status unavailable: {exc.__class__.__name__})"
        self.stream.write(f"\r{line}\x1b[K" if self.tty else f"{line}\n")
        self.stream.flush()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._show()

    def __enter__(self) -> "StatusLine":
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.enabled:
            return
        self._stop.set()
        self._thread.join(timeout=5)
        if self.tty:
            self._show()  # the last counts stay on screen, then the summary below them
            self.stream.write("\n")
            self.stream.flush()


def pipeline_status(pipeline: "Pipeline") -> Callable[[], str]:
    """``run``'s line, over every stream: frames read and published, fps, p50 end-to-end latency of recent frames,
    drops."""
    rate = Rate()

    def text() -> str:
        streams = pipeline.streams
        published = sum(len(s.summary.latency) for s in streams)
        recent = np.concatenate([s.summary.latency.recent_ms("captured", "published", LATENCY_WINDOW) for s in streams])
        p50 = f"{float(np.median(recent)):.0f} ms" if len(recent) else "-"
        drops = sum(sum(s.drop_counts().values()) for s in streams)
        failed = sum(len(s.summary.failed) for s in streams)
        read = sum(s.summary.read for s in streams)
        who = f"{len(streams)} streams: " if len(streams) > 1 else ""
        return (f"{who}frames read {read}, published {published}, {rate(published):.1f} fps, "
                f"latency p50 {p50}, dropped {drops}" + (f", failed {failed}" if failed else ""))

    return text


def record_status(receiver: "Subscriber", recorder: "Recorder") -> Callable[[], str]:
    """``record``'s line: frames received and recorded, missed (gaps in frame ids), fps."""
    rate = Rate()

    def text() -> str:
        return (f"frames received {receiver.received}, recorded {recorder.frames}, missed {receiver.missed}, "
                f"{rate(recorder.frames):.1f} fps")

    return text
