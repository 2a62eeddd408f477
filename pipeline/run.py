"""The streaming pipeline: capture -> frame path -> encode -> outputs, one thread per stage and per output.

capture reads frames; the frame path is ``BoneSegmenter.predict`` (upload, model + labels, mask + overlay, all on
the model's device; on CUDA the results stay there as tensors); encode brings the mask to the host, encodes the
overlay once (nvJPEG on CUDA, OpenCV on the CPU) and builds the message once; each output then runs on its own
worker behind its own queue, so no output sits on the inference path. Every edge declares its policy (Holoscan's
lesson): live input keeps the newest frame and counts every drop per stage and per output; replay runs in
lock-step and drops nothing, so every frame read is published or reported failed, by id.

Several sources (probes) run as streams of one run: each has its own capture, hand-offs, encode stage, outputs,
frame ids and summary; one batching stage feeds the engine with the next frame of each stream in turn.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from contextlib import nullcontext
from dataclasses import dataclass, field
from itertools import groupby
from collections import Counter
from typing import Any, Callable, Protocol, Sequence

import torch

from models.errors import FrameError, FrameSizeError
from pipeline.capture.frame import Frame, Source
from pipeline.handoff import Handoff, SinkWorker, StopClock, Stopped
from pipeline.latency import LatencyLog
from pipeline.publish.encode import encode_prediction, warm_encoder
from pipeline.segment.batches import StaticBatches
from pipeline.segment.segmenter import BoneSegmenter, Prediction

log = logging.getLogger(__name__)

_END = object()
LOGGED_FAILURES = 5  # failed frames logged per stream; all of them are in its summary
LIVE_SIZE_REFUSAL = 10  # a live stream whose first this many frames all have another size is refused (a replay: its first)


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
    close_timeout: float = 30.0  # at the end, time each output gets to drain its queue (after a stop: the stop's grace)
    batch_size: int = 1  # frames an engine call takes at most (at least the engines' largest static batch)
    max_batch_delay_ms: float = 0.0  # how long a partial batch waits for more frames after its first
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
    batches: dict[int, int] = field(default_factory=dict)  # frames of this stream by the frames in their engine call
    wall_s: float = 0.0

    @property
    def throughput_fps(self) -> float:
        """Frames published over the run's wall time (not over the sum of per-frame latencies, which overlap)."""
        return self.published / self.wall_s if self.wall_s > 0 else 0.0

    def lines(self) -> list[str]:
        drops = ", ".join(f"{k} {v}" for k, v in self.dropped.items()) or "none"
        lines = [
            f"source {self.source} ({'live' if self.live else 'replay'}){' - interrupted' if self.interrupted else ''}",
            f"frames read {self.read}, processed {self.processed}, published {self.published}, failed {len(self.failed)}, dropped: {drops}",
        ]
        if self.wall_s > 0:
            lines.append(f"throughput {self.throughput_fps:.1f} fps (frames published over {self.wall_s:.1f} s of wall time)")
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
            "batches": {str(k): v for k, v in sorted(self.batches.items())},
            "wall_s": self.wall_s,
            "throughput_fps": self.throughput_fps,
        }


class Stream:
    """One source's part of a run: its capture thread and hand-offs, its encode stage, its outputs, its accounting.
    Streams share only the batching stage; one that fails or ends stops nothing else."""

    def __init__(self, source: Source, engines: StaticBatches, outputs: Sequence[Output], config: RunConfig, *, live: bool | None = None,
                 make_message: Callable[[Result], Any] | None = None) -> None:
        self.source = source
        self.engines = engines
        self.outputs = list(outputs)
        self.config = config
        live = config.live if live is None else live
        self.live = source.live if live is None else live
        self.make_message = make_message if make_message is not None else config.make_message
        self.stop = threading.Event()  # this stream reads no more (ended, refused, or the run is stopping)
        self.ended = False  # the batching stage has seen its end
        self.end_sent = False  # ... and passed it on to the encode stage
        self.labelled_any = False
        self.size_error: str | None = None  # the last frame refused for its size
        self.size_failures = 0  # frames refused for their size before any was labelled
        self.to_infer = Handoff("infer", config.queue_size, self.live, _frame_id)
        self.to_encode = Handoff("encode", config.queue_size, self.live, _frame_id)
        self.summary = RunSummary(source.name, self.live)
        needs = {o.overlay for o in self.outputs}
        self.overlay = bool(needs - {None})
        self.jpeg = "jpeg" in needs
        self.raw_overlay = "raw" in needs
        self.workers: list[SinkWorker[Result]] = []
        self.on_result: Callable[[Result], None] | None = None
        # on CUDA results stay on the device until encode; there the copies run on their own stream
        device = engines.device
        self._encode_stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        if self.jpeg:
            warm_encoder(device, engines.first.geometry.frame_size)  # nvJPEG's encoder is made here, not on a live frame

    def interrupt(self) -> None:
        """Stop reading: live sources are closed at once so a capture blocked on the device wakes; a replay source
        is only interrupted (a paced one sleeping until its next frame wakes) and closed by the capture thread."""
        self.stop.set()
        self.summary.interrupted = True
        if self.live:
            self.source.close()
        else:
            self.source.interrupt()

    def refuse(self, reason: str) -> None:
        """A replay whose first frame, or a live stream whose first LIVE_SIZE_REFUSAL frames, all have another size
        than the reference: every frame after them would fail the same way, so this stream stops reading (once, not
        as an abort; a live source is closed so a blocked read wakes) and says why in one line."""
        if self.summary.refused is None:
            self.summary.refused = reason
            self.stop.set()
            if self.live:
                self.source.close()

    def fail(self, frame: Frame, stage: str, exc: BaseException) -> None:
        self.summary.failed.append({"id": frame.id, "name": frame.name, "stage": stage, "error": f"{exc.__class__.__name__}: {exc}"})
        shown = len(self.summary.failed)
        if shown <= LOGGED_FAILURES:  # every failure is in the summary; the log is not flooded by a stream that fails all
            more = "; further failures are counted in the summary only" if shown == LOGGED_FAILURES else ""
            log.warning("%s frame %s failed in %s: %s%s", self.source.name, frame.id, stage, exc, more)
        log.debug("frame %s: %s", frame.id, traceback.format_exc(limit=3))

    def capture(self, arrived: Callable[[], None]) -> None:
        try:
            for frame in self.source:
                if self.stop.is_set():
                    break
                self.to_infer.put(frame)  # Stopped when the run closed first: then it never entered the run
                self.summary.read += 1
                arrived()
        except Stopped:
            pass
        except Exception as exc:  # a source error ends this stream but everything read is still accounted for
            if not self.stop.is_set():
                self.summary.failed.append({"id": None, "stage": "capture", "error": f"{exc.__class__.__name__}: {exc}"})
                log.error("%s: capture stopped: %s", self.source.name, exc)
        finally:
            self.to_infer.put(_END, force=True)
            arrived()

    def _encode(self, result: Result) -> None:
        """Host mask (and raw overlay if an output wants pixels), the overlay's JPEG once, the message once."""
        assert result.prediction is not None
        result.overlay_jpeg = encode_prediction(result.prediction, jpeg=self.jpeg, raw_overlay=self.raw_overlay)
        if self.live:
            result.dropped = self.drop_counts()
        result.stamps["labelled"] = time.monotonic_ns()
        if self.make_message is not None:
            result.message = self.make_message(result)

    def encode_stage(self, clock: StopClock) -> None:
        stream = torch.cuda.stream(self._encode_stream) if self._encode_stream is not None else nullcontext()
        with stream:
            while True:
                try:
                    result = self.to_encode.get(timeout=0.2)
                except TimeoutError:
                    if clock.expired:  # e.g. inference wedged: the run ends all the same
                        return
                    continue
                if result is _END:
                    return
                if clock.expired:  # past the stop's grace: this and what follows are dropped, by id
                    self.to_encode.dropped.extend([result.frame.id])
                    return
                try:
                    self._encode(result)
                except Exception as exc:
                    self.fail(result.frame, "encode", exc)
                    continue
                self.summary.processed += 1
                for worker in self.workers:
                    worker.submit(result)
                if not self.workers:
                    self.published(result)

    def published(self, result: Result) -> None:
        """Bookkeeping once the first output has sent the frame (or at once without outputs)."""
        result.stamps.setdefault("published", time.monotonic_ns())
        self.summary.latency.add(result.stamps, result.model_ms)
        if self.on_result is not None:
            self.on_result(result)

    def start_outputs(self, clock: StopClock) -> None:
        c = self.config
        self.workers = [
            SinkWorker(o, capacity=c.output_queue, lossless=o.lossless and not self.live, frame_id=_frame_id, put_timeout=c.output_timeout,
                       on_written=self.published if i == 0 else None, clock=clock)
            for i, o in enumerate(self.outputs)
        ]

    def close(self, in_flight: Sequence[Frame] = ()) -> None:
        """After the stages: what a stop's grace left queued, or still ``in_flight`` in the frame path, counts as
        dropped; outputs close (each within what is left of the grace once stopping); every frame is accounted."""
        counted = {f["id"] for f in self.summary.failed}
        for h in (self.to_infer, self.to_encode):
            drained = [_frame_id(i) for i in h.drain() if i is not _END]
            h.dropped.extend(drained)
            counted.update(drained)
        self.to_infer.dropped.extend(f.id for f in in_flight if f.id not in counted)  # once: not also drained or failed
        for worker in self.workers:
            self.summary.output_errors += worker.close(self.config.close_timeout)
        self._account()

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


class _Arrivals:
    """Counts frames put on any stream's infer hand-off, so the batching stage sleeps until one arrives."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.count = 0

    def signal(self) -> None:
        with self._cond:
            self.count += 1
            self._cond.notify_all()

    def wait(self, seen: int, timeout: float) -> int:
        """Wait at most ``timeout`` s for an arrival after ``seen``; the count now."""
        with self._cond:
            if self.count == seen:
                self._cond.wait(max(0.0, timeout))
            return self.count


class Pipeline:
    """Runs sources through a segmenter into outputs until every source ends or ``stop()`` is called.

    ``Pipeline(source, segmenter, outputs, config)`` is one stream; ``Pipeline.of_streams`` runs several, each with
    its own capture, hand-offs, encode stage, outputs and summary, and one batching stage for all: it takes the
    next frame of each stream in turn (round-robin, so none starves) up to the largest static batch of one engine
    set, waits at most ``config.max_batch_delay_ms`` after the first frame for more, and runs the smallest static
    batch that holds them."""

    def __init__(self, source: Source, segmenter: BoneSegmenter, outputs: Sequence[Output], config: RunConfig = RunConfig(), *,
                 on_result: Callable[[Result], None] | None = None, clock: StopClock | None = None) -> None:
        self._setup([Stream(source, StaticBatches.single(segmenter), outputs, config)], config, on_result, clock)

    @classmethod
    def of_streams(cls, streams: Sequence[Stream], config: RunConfig = RunConfig(), *, on_result: Callable[[Result], None] | None = None,
                   clock: StopClock | None = None) -> "Pipeline":
        if not streams:
            raise ValueError("a run needs at least one stream")
        pipeline = cls.__new__(cls)
        pipeline._setup(list(streams), config, on_result, clock)
        return pipeline

    def _setup(self, streams: list[Stream], config: RunConfig, on_result: Callable[[Result], None] | None, clock: StopClock | None) -> None:
        self.streams = streams
        self.config = config
        self.on_result = on_result
        self.clock = clock or StopClock()  # outputs that wait themselves (the lossless channel) share it
        self._in_flight: list[tuple[Stream, Frame]] = []  # the engine call under way
        self._closed = threading.Event()  # the run is closing its hand-offs
        self._taking = threading.Lock()  # a frame is taken for an engine call, or the run closes: never both at once
        self._arrivals = _Arrivals()
        self._turn = 0  # the stream the next batch starts from
        self.batches: Counter[int] = Counter()  # engine calls by frames in them (before padding)

    @property
    def summary(self) -> RunSummary:
        """The first stream's summary (the only one for a single source)."""
        return self.streams[0].summary

    @property
    def summaries(self) -> list[RunSummary]:
        return [s.summary for s in self.streams]

    def stop(self) -> None:
        """Stop reading every stream (safe from a signal handler); frames already read are still processed and
        published within the clock's grace (a few seconds, all waits together). A second call aborts: nothing is
        waited for any longer. Frames not through by then are counted as dropped, by id."""
        self.clock.stop()
        for stream in self.streams:
            if not stream.end_sent:  # a stream that already ended was not interrupted
                stream.interrupt()

    # -- the batching stage ----------------------------------------------------------------------------
    def _limit(self, taken: list[tuple[Stream, Frame]]) -> int:
        """Frames one engine call takes: the largest static batch of the batch's engine set."""
        return max(self.config.batch_size, taken[0][0].engines.largest) if taken else 1

    def _take_round(self, taken: list[tuple[Stream, Frame]]) -> bool:
        """One frame from each stream that has one (of the batch's engine set), in turn; True if any was taken."""
        n = len(self.streams)
        progress = False
        for k in range(n):
            stream = self.streams[(self._turn + k) % n]
            if stream.ended or (taken and (len(taken) >= self._limit(taken) or stream.engines is not taken[0][0].engines)):
                continue
            try:
                item = stream.to_infer.get_nowait()
            except TimeoutError:
                continue
            if item is _END:  # passed on at once, or after this batch's results (_end_streams), never ahead of them
                stream.ended = True
                if all(s is not stream for s, _ in taken):
                    self._end_streams(lambda s: s is stream)
                continue
            taken.append((stream, item))
            progress = True
        return progress

    def _gather(self) -> list[tuple[Stream, Frame]]:
        """The frames of the next engine call: rounds over the streams until the batch is full, or until a round
        finds nothing new once ``max_batch_delay_ms`` has passed since its first frame; none once every stream ended."""
        taken: list[tuple[Stream, Frame]] = []
        self._in_flight = taken  # in flight from the moment a frame leaves its hand-off: a stop accounts for it
        deadline = 0.0
        seen = self._arrivals.count
        while True:
            with self._taking:  # a frame taken is in flight before the run can close (and account for it)
                if self._closed.is_set() or self.clock.expired:  # past the grace: no further engine call
                    return taken
                had = len(taken)
                progress = self._take_round(taken)
            if taken and len(taken) >= self._limit(taken):
                break
            if taken and not had:
                deadline = time.monotonic() + self.config.max_batch_delay_ms / 1e3
            if progress:
                continue
            now = time.monotonic()
            if all(s.ended for s in self.streams) or (taken and now >= deadline):
                break
            seen = self._arrivals.wait(seen, deadline - now if taken else 0.1)
        if taken:
            self._turn = (self.streams.index(taken[-1][0]) + 1) % len(self.streams)
        return taken

    def _predict(self, batch: list[tuple[Stream, Frame]]) -> list[tuple[Stream, Frame, Prediction]]:
        """The batch through the frame path on the smallest static batch that holds it; a bad frame fails alone
        (the rest of its batch is retried without it)."""
        engines = batch[0][0].engines
        segmenter = engines.for_frames(len(batch))
        overlay = any(s.overlay for s, _ in batch)
        try:
            preds = segmenter.predict([f.image for _, f in batch], [f"{s.source.name} frame {f.id}" for s, f in batch], overlay=overlay, tensors=engines.device.type == "cuda")
            for s, _ in batch:
                s.labelled_any = True
            return [(s, f, p) for (s, f), p in zip(batch, preds)]
        except Exception as exc:
            if len(batch) == 1:
                stream, frame = batch[0]
                stream.fail(frame, "preprocess" if isinstance(exc, FrameError) else "inference", exc)
                if isinstance(exc, FrameSizeError):
                    stream.size_error = str(exc)
                    stream.size_failures += 1
                return []
        return [triple for pair in batch for triple in self._predict([pair])]

    def _infer(self) -> None:
        try:
            while batch := self._gather():
                self.batches[len(batch)] += 1
                done = self._predict(batch)
                inferred = time.monotonic_ns()
                for stream in {s for s, _ in batch}:
                    stream.summary.batches[len(batch)] = stream.summary.batches.get(len(batch), 0) + sum(1 for s, _ in batch if s is stream)
                    if not stream.labelled_any and stream.size_error and (not stream.live or stream.size_failures >= LIVE_SIZE_REFUSAL):
                        stream.refuse(stream.size_error)
                for stream, frame, prediction in done:
                    stream.to_encode.put(Result(frame, prediction, stamps={"captured": frame.capture_ns, "inferred": inferred}, model_ms=prediction.timings_ms["model_labelling"]))
                    self._in_flight = [pair for pair in self._in_flight if pair[1] is not frame]  # handed on: no longer in flight
                self._in_flight = []
                self._end_streams(lambda s: s.ended)
        except Stopped:
            pass
        finally:
            self._end_streams(lambda s: True)

    def _end_streams(self, which: Callable[[Stream], bool]) -> None:
        """Tell each stream's encode stage that no more results come (once)."""
        for stream in self.streams:
            if which(stream) and not stream.end_sent:
                stream.to_encode.put(_END, force=True)
                stream.end_sent = True

    # -- driver ----------------------------------------------------------------------------------------
    def run(self) -> RunSummary:
        """Run every stream to its end; the first stream's summary (``summaries`` has them all)."""
        started = time.monotonic()
        for stream in self.streams:
            stream.on_result = self._on_result
            stream.start_outputs(self.clock)
        named = len(self.streams) > 1
        threads = [threading.Thread(target=self._infer, name="bonestream-infer", daemon=True)]
        for i, s in enumerate(self.streams):
            suffix = f"-{i}" if named else ""
            threads.append(threading.Thread(target=s.capture, args=(self._arrivals.signal,), name=f"bonestream-capture{suffix}", daemon=True))
        encoders = [threading.Thread(target=s.encode_stage, args=(self.clock,), name=f"bonestream-encode{f'-{i}' if named else ''}", daemon=True) for i, s in enumerate(self.streams)]
        for t in threads + encoders:
            t.start()
        try:
            for t in encoders:
                while t.is_alive():  # in slices: the main thread stays free for signal handlers
                    t.join(0.2)
        finally:
            with self._taking:
                self._closed.set()  # the batching stage takes nothing more (a surviving engine call ends there)
            for stream in self.streams:
                stream.stop.set()
                for h in (stream.to_infer, stream.to_encode):
                    h.close()
            for t in threads:
                t.join(timeout=self.clock.bound(10))
            in_flight = list(self._in_flight)  # taken for an engine call the grace did not wait for, or not handed on
            for stream in self.streams:
                stream.close([f for s, f in in_flight if s is stream])
                stream.summary.wall_s = time.monotonic() - started
        return self.summary

    def _on_result(self, result: Result) -> None:
        if self.on_result is not None:
            self.on_result(result)


def _frame_id(item: Frame | Result) -> int:
    return item.id if isinstance(item, Frame) else item.frame.id
