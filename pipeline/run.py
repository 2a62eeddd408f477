"""The streaming pipeline: capture -> infer -> label + overlay -> publish, one thread per stage.

Stages hand frames over through small bounded queues with one of two policies (Holoscan's lesson):
live input keeps the newest frame and counts every drop per stage; replay runs in lock-step and drops
nothing, so every frame read is either published or reported failed, by id.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from array import array
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np

from pipeline.capture.frame import Frame, Source
from pipeline.latency import LatencyLog
from pipeline.segment.overlay import draw_overlay
from pipeline.segment.segmenter import BoneSegmenter, Prediction

log = logging.getLogger(__name__)

_END = object()


class Stopped(Exception):
    """A hand-off was closed because the run is ending."""


class Handoff:
    """Bounded queue between two stages. ``drop_oldest``: a full queue discards its oldest item instead of
    blocking the producer, so live latency never grows behind a slow stage. Only the frame ids of dropped
    items are kept (8 bytes each), never the frames: a long live run must not hold on to what it dropped."""

    def __init__(self, name: str, maxsize: int, drop_oldest: bool, frame_id: Callable[[Any], int] = int) -> None:
        self.name = name
        self.maxsize = maxsize
        self.drop_oldest = drop_oldest
        self.frame_id = frame_id
        self.dropped = array("q")  # frame ids, in drop order
        self._items: deque[Any] = deque()
        self._cond = threading.Condition()
        self._closed = False

    def put(self, item: Any, *, force: bool = False) -> None:
        with self._cond:
            while not force and len(self._items) >= self.maxsize:
                if self.drop_oldest:
                    self.dropped.append(self.frame_id(self._items.popleft()))
                    break
                if self._closed:
                    raise Stopped(self.name)
                self._cond.wait(0.1)
            self._items.append(item)
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> Any:
        """Next item; raises TimeoutError when ``timeout`` passes with none."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._items:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(self.name)
                self._cond.wait(remaining if remaining is not None else 0.1)
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def get_nowait(self) -> Any:
        return self.get(timeout=0)

    def close(self) -> None:
        """Wake a producer blocked on a full queue so it can stop."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


@dataclass
class Result:
    """One frame after the pipeline: its prediction and overlay, or the reason it failed."""

    frame: Frame
    prediction: Prediction | None = None
    overlay: np.ndarray | None = None
    stamps: dict[str, int] = field(default_factory=dict)  # monotonic ns: captured, inferred, labelled, published
    model_ms: float = 0.0
    dropped: dict[str, int] | None = None  # live runs: drops per stage so far, sent in the message header


class Output(Protocol):
    """Where results go (ZeroMQ, recordings, mask files). ``write`` runs on the publish thread, in frame order."""

    name: str

    def write(self, result: Result) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class RunConfig:
    live: bool | None = None  # None: the source decides (devices live, files replay)
    queue_size: int = 2
    batch_size: int = 1
    overlay: bool = True
    skip: int = 10  # frames left out at each end of the latency statistics


@dataclass
class RunSummary:
    source: str
    live: bool
    read: int = 0
    processed: int = 0
    published: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    dropped_ids: dict[str, list[int]] = field(default_factory=dict)
    output_errors: list[str] = field(default_factory=list)
    reconnects: int = 0  # live devices: outages recovered from, and their gaps (monotonic s)
    gaps: list[tuple[float, float]] = field(default_factory=list)
    latency: LatencyLog = field(default_factory=LatencyLog)  # per published frame: stage stamps, model time
    interrupted: bool = False
    wall_s: float = 0.0

    def lines(self) -> list[str]:
        drops = ", ".join(f"{k} {v}" for k, v in self.dropped.items()) or "none"
        lines = [
            f"source {self.source} ({'live' if self.live else 'replay'}){' - interrupted' if self.interrupted else ''}",
            f"frames read {self.read}, processed {self.processed}, published {self.published}, failed {len(self.failed)}, dropped: {drops}",
        ]
        if self.reconnects:
            longest = max((b - a for a, b in self.gaps), default=0.0)
            lines.append(f"device reconnected {self.reconnects} times; longest gap {longest:.2f} s")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "mode": "live" if self.live else "replay",
            "read": self.read,
            "processed": self.processed,
            "published": self.published,
            "failed": self.failed,
            "dropped": self.dropped,
            "dropped_ids": self.dropped_ids,
            "output_errors": self.output_errors,
            "reconnects": self.reconnects,
            "gaps_s": [[a, b] for a, b in self.gaps],
            "interrupted": self.interrupted,
            "wall_s": self.wall_s,
        }


class Pipeline:
    """Runs one source through a segmenter into outputs until the source ends or ``stop()`` is called."""

    def __init__(self, source: Source, segmenter: BoneSegmenter, outputs: Sequence[Output], config: RunConfig = RunConfig(), *, on_result: Callable[[Result], None] | None = None) -> None:
        self.source = source
        self.segmenter = segmenter
        self.outputs = list(outputs)
        self.config = config
        self.live = source.live if config.live is None else config.live
        self.on_result = on_result
        self._stop = threading.Event()
        drop = self.live
        self.to_infer = Handoff("infer", config.queue_size, drop, _frame_id)
        self.to_label = Handoff("label", config.queue_size, drop, _frame_id)
        self.to_publish = Handoff("publish", config.queue_size, drop, _frame_id)
        self.summary = RunSummary(source.name, self.live)
        stamp = segmenter.weights.warning and "RANDOM WEIGHTS - plumbing only, not bone"
        self._stamp = stamp or None

    def stop(self) -> None:
        """Stop reading (safe from a signal handler); frames already read are still processed and published.

        Live sources are closed at once so a capture blocked on the device wakes; replay sources are left to
        the capture thread, which sees the flag before its next frame."""
        self._stop.set()
        self.summary.interrupted = True
        if self.live:
            self.source.close()

    # -- stages ----------------------------------------------------------------------------------------
    def _capture(self) -> None:
        try:
            for frame in self.source:
                if self._stop.is_set():
                    break
                self.summary.read += 1
                self.to_infer.put(frame)
        except Stopped:
            pass
        except Exception as exc:  # a source error ends the run but everything read is still accounted for
            if not self._stop.is_set():
                self.summary.failed.append({"id": None, "stage": "capture", "error": f"{exc.__class__.__name__}: {exc}"})
                log.error("capture stopped: %s", exc)
        finally:
            self.to_infer.put(_END, force=True)

    def _batches(self) -> Iterator[list[Frame]]:
        while (first := self.to_infer.get()) is not _END:
            batch = [first]
            end = False
            while len(batch) < self.config.batch_size:
                try:
                    item = self.to_infer.get_nowait()
                except TimeoutError:
                    break
                if item is _END:
                    end = True
                    break
                batch.append(item)
            yield batch
            if end:
                return

    def _fail(self, frame: Frame, stage: str, exc: BaseException) -> None:
        self.summary.failed.append({"id": frame.id, "name": frame.name, "stage": stage, "error": f"{exc.__class__.__name__}: {exc}"})
        log.warning("frame %s failed in %s: %s\n%s", frame.id, stage, exc, traceback.format_exc(limit=3))

    def _infer(self) -> None:
        seg = self.segmenter
        try:
            for batch in self._batches():
                ready, inputs = [], []
                for frame in batch:
                    try:
                        inputs.append(seg.geometry.preprocess(frame.image, f"{self.source.name} frame {frame.id}"))
                        ready.append(frame)
                    except Exception as exc:
                        self._fail(frame, "preprocess", exc)
                if not ready:
                    continue
                t0 = time.perf_counter()
                try:
                    masks, margins = seg.backend(np.stack(inputs))
                except Exception as exc:
                    for frame in ready:
                        self._fail(frame, "inference", exc)
                    continue
                model_ms = (time.perf_counter() - t0) * 1e3 / len(ready)
                inferred = time.monotonic_ns()
                for frame, mask, margin in zip(ready, masks, margins):
                    result = Result(frame, stamps={"captured": frame.capture_ns, "inferred": inferred}, model_ms=model_ms)
                    self.to_label.put((result, mask, margin))
        except Stopped:
            pass
        finally:
            self.to_label.put(_END, force=True)

    def _label(self) -> None:
        try:
            while (item := self.to_label.get()) is not _END:
                result, mask, margin = item
                try:
                    result.prediction = self.segmenter.finish(mask, margin)
                    if self.config.overlay:
                        result.overlay = draw_overlay(result.frame.image, result.prediction.mask, stamp=self._stamp)
                except Exception as exc:
                    self._fail(result.frame, "label", exc)
                    continue
                result.stamps["labelled"] = time.monotonic_ns()
                self.to_publish.put(result)
        except Stopped:
            pass
        finally:
            self.to_publish.put(_END, force=True)

    def _publish(self) -> None:
        while (result := self.to_publish.get()) is not _END:
            if self.live:
                result.dropped = self.drop_counts()
            result.stamps.setdefault("published", time.monotonic_ns())
            delivered = True
            for output in self.outputs:
                try:
                    output.write(result)  # an output may overwrite stamps["published"] at its actual send
                except Exception as exc:
                    delivered = False
                    self.summary.output_errors.append(f"{output.name} frame {result.frame.id}: {exc.__class__.__name__}: {exc}")
                    log.warning("output %s failed on frame %s: %s", output.name, result.frame.id, exc)
            self.summary.processed += 1
            self.summary.published += delivered
            self.summary.latency.add(result.stamps, result.model_ms)
            if self.on_result is not None:
                self.on_result(result)

    # -- driver ----------------------------------------------------------------------------------------
    def run(self) -> RunSummary:
        started = time.monotonic()
        threads = [threading.Thread(target=fn, name=f"bonestream-{fn.__name__.strip('_')}", daemon=True) for fn in (self._capture, self._infer, self._label)]
        for t in threads:
            t.start()
        try:
            self._publish()
        finally:
            self._stop.set()
            for h in (self.to_infer, self.to_label, self.to_publish):
                h.close()
            for t in threads:
                t.join(timeout=10)
            for output in self.outputs:
                try:
                    output.close()
                except Exception as exc:
                    self.summary.output_errors.append(f"{output.name} close: {exc.__class__.__name__}: {exc}")
            self._account_drops()
            self.summary.wall_s = time.monotonic() - started
        return self.summary

    def drop_counts(self) -> dict[str, int]:
        """Frames dropped so far: by the capture device/mailbox, then before each stage."""
        counts = {"capture": int(getattr(self.source, "dropped", 0) or 0)}
        counts.update({h.name: len(h.dropped) for h in (self.to_infer, self.to_label, self.to_publish)})
        return counts

    def _account_drops(self) -> None:
        self.summary.reconnects = int(getattr(self.source, "reconnects", 0) or 0)
        self.summary.gaps = list(getattr(self.source, "gaps", []) or [])
        counts = self.drop_counts()
        if self.live or any(counts.values()):
            self.summary.dropped = counts
            self.summary.dropped_ids = {h.name: h.dropped.tolist() for h in (self.to_infer, self.to_label, self.to_publish)}


def _frame_id(item: Any) -> int:
    if isinstance(item, Frame):
        return item.id
    if isinstance(item, Result):
        return item.frame.id
    return item[0].frame.id
