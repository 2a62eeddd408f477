"""The streaming pipeline: capture -> frame path -> encode -> outputs, one thread per stage and per output.

capture reads frames; the frame path is ``BoneSegmenter.predict`` (upload, model + labels, mask + overlay, all on
the model's device; on CUDA the results stay there as tensors); encode brings the mask to the host, encodes the
overlay once (nvJPEG on CUDA, OpenCV on the CPU) and builds the message once; each output then runs on its own
worker behind its own queue, so no output sits on the inference path. Every edge declares its policy (Holoscan's
lesson): live input keeps the newest frame and counts every drop per stage and per output; replay runs in
lock-step and drops nothing, so every frame read is published or reported failed, by id.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from contextlib import nullcontext
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any, Callable, Iterator, Protocol, Sequence

import torch

from models.errors import FrameError, FrameSizeError
from pipeline.capture.frame import Frame, Source
from pipeline.handoff import STOP_GRACE_S, Handoff, SinkWorker, Stopped
from pipeline.latency import LatencyLog
from pipeline.publish.encode import encode_prediction
from pipeline.segment.segmenter import BoneSegmenter, Prediction

log = logging.getLogger(__name__)

_END = object()


def id_ranges(ids: Sequence[int]) -> str:
    """``[3, 4, 5, 9]`` -> ``"3-5,9"``: every id, compactly."""
    spans: list[list[int]] = []
    for i in ids:
        if spans and i == spans[-1][1] + 1:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def _by_error(failed: Sequence[tuple[int, str]]) -> list[tuple[str, list[int]]]:
    """Failures grouped by consecutive equal errors: a full disk is one line, not one per frame."""
    return [(error, [i for i, _ in run]) for error, run in groupby(failed, key=lambda f: f[1])]


@dataclass
class Result:
    """One frame after the frame path: its prediction (host arrays once encoded), the overlay's JPEG, the message
    every output sends, or the reason it failed."""

    frame: Frame
    prediction: Prediction | None = None
    overlay_jpeg: bytes | None = None
    message: Any = None  # FrameMessage, built once by the encode stage
    stamps: dict[str, int] = field(default_factory=dict)  # monotonic ns: captured, inferred, labelled, published
    model_ms: float = 0.0
    dropped: dict[str, int] | None = None  # live runs: drops per stage so far, sent in the message header


class Output(Protocol):
    """Where results go (ZeroMQ, recordings, mask files); each runs on its own worker thread, in frame order.
    ``overlay``: None, "raw" or "jpeg" (what it needs made); ``lossless``: hold a replay back rather than drop."""

    name: str
    overlay: str | None
    lossless: bool

    def write(self, result: Result) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class RunConfig:
    live: bool | None = None  # None: the source decides (devices live, files replay)
    queue_size: int = 2  # frames held between stages
    output_queue: int = 8  # frames held before each output
    output_timeout: float = 30.0  # a lossless output that takes no frame for this long loses it (counted)
    close_timeout: float = 30.0  # at the end, time each output gets to drain its queue
    batch_size: int = 1
    make_message: Callable[[Result], Any] | None = None  # Result -> FrameMessage (publish.outputs.MessageFactory)


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
    outputs: dict[str, dict[str, int]] = field(default_factory=dict)  # per output: written, dropped, failed
    reconnects: int = 0  # live devices: outages recovered from, and their gaps (monotonic s)
    gaps: list[tuple[float, float]] = field(default_factory=list)
    latency: LatencyLog = field(default_factory=LatencyLog)  # per published frame: stage stamps, model time
    interrupted: bool = False
    refused: str | None = None  # the source's first frame was refused (e.g. another size): the run stopped there
    wall_s: float = 0.0

    def lines(self) -> list[str]:
        drops = ", ".join(f"{k} {v}" for k, v in self.dropped.items()) or "none"
        lines = [
            f"source {self.source} ({'live' if self.live else 'replay'}){' - interrupted' if self.interrupted else ''}",
            f"frames read {self.read}, processed {self.processed}, published {self.published}, failed {len(self.failed)}, dropped: {drops}",
        ]
        for name, counts in self.outputs.items():
            lines.append(f"output {name}: written {counts['written']}, dropped {counts['dropped']}, failed {counts['failed']}")
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
            "outputs": self.outputs,
            "reconnects": self.reconnects,
            "gaps_s": [[a, b] for a, b in self.gaps],
            "interrupted": self.interrupted,
            "refused": self.refused,
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
        self._abort = threading.Event()  # a second stop: nothing waits any longer
        self._labelled_any = False
        self._size_error: str | None = None  # the last frame refused for its size
        drop = self.live
        self.to_infer = Handoff("infer", config.queue_size, drop, _frame_id)
        self.to_encode = Handoff("encode", config.queue_size, drop, _frame_id)
        self.summary = RunSummary(source.name, self.live)
        needs = {o.overlay for o in self.outputs}
        self.overlay = bool(needs - {None})
        self.jpeg = "jpeg" in needs
        self.raw_overlay = "raw" in needs
        self.workers: list[SinkWorker[Result]] = []
        # on CUDA results stay on the device until encode; there the copies run on their own stream
        self.on_device = segmenter.device.type == "cuda"
        self._encode_stream = torch.cuda.Stream(segmenter.device) if self.on_device else None

    def stop(self) -> None:
        """Stop reading (safe from a signal handler); frames already read are still processed and published.
        A second call aborts: no output is waited for any longer and frames not yet through are counted as dropped.

        Live sources are closed at once so a capture blocked on the device wakes; a replay source is only
        interrupted (a paced one sleeping until its next frame wakes) and closed by the capture thread."""
        if self._stop.is_set():
            self._abort.set()
        self._stop.set()
        self.summary.interrupted = True
        if self.live:
            self.source.close()
        else:
            self.source.interrupt()

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

    def _refuse(self, reason: str) -> None:
        """A replay whose first frames all have another size than the reference: every frame after them would fail
        the same way, so reading stops (once, not as an abort) and the run says why in one line."""
        if self.summary.refused is None:
            self.summary.refused = reason
            self._stop.set()

    def _fail(self, frame: Frame, stage: str, exc: BaseException) -> None:
        self.summary.failed.append({"id": frame.id, "name": frame.name, "stage": stage, "error": f"{exc.__class__.__name__}: {exc}"})
        log.warning("frame %s failed in %s: %s", frame.id, stage, exc)  # the id and error are also in the summary
        log.debug("frame %s: %s", frame.id, traceback.format_exc(limit=3))

    def _predict(self, batch: list[Frame]) -> list[tuple[Frame, Prediction]]:
        """The batch through the frame path; a bad frame fails alone (the rest of its batch is retried without it)."""
        name = self.source.name
        try:
            preds = self.segmenter.predict([f.image for f in batch], [f"{name} frame {f.id}" for f in batch], overlay=self.overlay, tensors=self.on_device)
            self._labelled_any = True
            return list(zip(batch, preds))
        except Exception as exc:
            if len(batch) == 1:
                self._fail(batch[0], "preprocess" if isinstance(exc, FrameError) else "inference", exc)
                if isinstance(exc, FrameSizeError):
                    self._size_error = str(exc)
                return []
        return [pair for frame in batch for pair in self._predict([frame])]

    def _infer(self) -> None:
        try:
            for batch in self._batches():
                done = self._predict(batch)
                if not done and not self._labelled_any and self._size_error and not self.live:
                    self._refuse(self._size_error)
                inferred = time.monotonic_ns()
                for frame, prediction in done:
                    result = Result(frame, prediction, stamps={"captured": frame.capture_ns, "inferred": inferred}, model_ms=prediction.timings_ms["model_labelling"])
                    self.to_encode.put(result)
        except Stopped:
            pass
        finally:
            self.to_encode.put(_END, force=True)

    def _encode(self, result: Result) -> None:
        """Host mask (and raw overlay if an output wants pixels), the overlay's JPEG once, the message once."""
        assert result.prediction is not None
        result.overlay_jpeg = encode_prediction(result.prediction, jpeg=self.jpeg, raw_overlay=self.raw_overlay)
        if self.live:
            result.dropped = self.drop_counts()
        result.stamps["labelled"] = time.monotonic_ns()
        if self.config.make_message is not None:
            result.message = self.config.make_message(result)

    def _encode_stage(self) -> None:
        stream = torch.cuda.stream(self._encode_stream) if self._encode_stream is not None else nullcontext()
        with stream:
            while True:
                try:
                    result = self.to_encode.get(timeout=0.2)
                except TimeoutError:
                    if self._abort.is_set():  # e.g. inference wedged: the run ends all the same
                        return
                    continue
                if result is _END:
                    return
                try:
                    self._encode(result)
                except Exception as exc:
                    self._fail(result.frame, "encode", exc)
                    continue
                self.summary.processed += 1
                for worker in self.workers:
                    worker.submit(result)
                if not self.workers:
                    self._published(result)

    def _published(self, result: Result) -> None:
        """Bookkeeping once the first output has sent the frame (or at once without outputs)."""
        result.stamps.setdefault("published", time.monotonic_ns())
        self.summary.latency.add(result.stamps, result.model_ms)
        if self.on_result is not None:
            self.on_result(result)

    # -- driver ----------------------------------------------------------------------------------------
    def run(self) -> RunSummary:
        started = time.monotonic()
        c = self.config
        self.workers = [
            SinkWorker(o, capacity=c.output_queue, lossless=o.lossless and not self.live, frame_id=_frame_id, put_timeout=c.output_timeout,
                       on_written=self._published if i == 0 else None, abort=self._abort, stopping=self._stop)
            for i, o in enumerate(self.outputs)
        ]
        threads = [threading.Thread(target=fn, name=f"bonestream-{fn.__name__.strip('_')}", daemon=True) for fn in (self._capture, self._infer)]
        for t in threads:
            t.start()
        try:
            self._encode_stage()
        finally:
            self._stop.set()
            for h in (self.to_infer, self.to_encode):
                h.close()
            for t in threads:
                t.join(timeout=1 if self._abort.is_set() else 10)
            for h in (self.to_infer, self.to_encode):  # only an abort leaves frames here: they count as dropped
                h.dropped.extend(_frame_id(i) for i in h.drain() if i is not _END)
            # a signal ends the run within seconds: outputs get a short grace, none after a second signal
            grace = 1.0 if self._abort.is_set() else STOP_GRACE_S if self.summary.interrupted else c.close_timeout
            for worker in self.workers:
                self.summary.output_errors += worker.close(min(c.close_timeout, grace))
            self._account()
            self.summary.wall_s = time.monotonic() - started
        return self.summary

    def drop_counts(self) -> dict[str, int]:
        """Frames dropped so far: by the capture device/mailbox, then before each stage and each output."""
        counts = {"capture": int(getattr(self.source, "dropped", 0) or 0)}
        counts.update({h.name: len(h.dropped) for h in self._handoffs()})
        return counts

    def _handoffs(self) -> list[Handoff]:
        return [self.to_infer, self.to_encode, *(w.queue for w in self.workers)]

    def _account(self) -> None:
        """Drops and output failures by frame id; a frame is published when every output took it."""
        self.summary.reconnects = int(getattr(self.source, "reconnects", 0) or 0)
        self.summary.gaps = list(getattr(self.source, "gaps", []) or [])
        counts = self.drop_counts()
        if self.live or any(counts.values()):
            self.summary.dropped = counts
            self.summary.dropped_ids = {h.name: h.dropped.tolist() for h in self._handoffs()}
        lost: set[int] = set()
        for w in self.workers:
            lost.update(w.dropped)
            lost.update(i for i, _ in w.failed)
            self.summary.output_errors += [
                f"{w.name} {'frame' if len(ids) == 1 else 'frames'} {id_ranges(ids)}: {error}"
                for error, ids in _by_error(w.failed)
            ]
            self.summary.outputs[w.name] = {"written": w.written, "dropped": len(w.dropped), "failed": len(w.failed)}
        self.summary.published = self.summary.processed - len(lost)


def _frame_id(item: Frame | Result) -> int:
    return item.id if isinstance(item, Frame) else item.frame.id
