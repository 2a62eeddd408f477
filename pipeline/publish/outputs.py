"""Pipeline outputs. Each runs on its own worker (``handoff.SinkWorker``) and takes a finished Result whose
message was built, and its overlay encoded, once for all of them.

Every output declares what it needs (``overlay``: None, "raw" pixels or "jpeg" bytes) so the pipeline draws,
downloads and encodes only that, and whether it is ``lossless`` (in replay it holds the run back rather than lose
a frame) or lossy (it drops its oldest queued frame and counts it).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from pipeline.handoff import StopClock
from pipeline.publish.files import results_in, write_png_atomic
from pipeline.publish.message import FrameMessage
from pipeline.publish.publisher import LosslessSender, Publisher, SendTimeout
from pipeline.publish.recorder import Recorder
from pipeline.run import Result
from pipeline.segment.segmenter import BoneSegmenter


class MessageFactory:
    """Result -> FrameMessage with the stream's fixed fields (ROI, reference, weights) filled in once."""

    def __init__(self, segmenter: BoneSegmenter, stream_id: str) -> None:
        g = segmenter.geometry
        self.fixed = dict(
            stream_id=stream_id,
            roi=tuple(g.roi),
            frame_size=tuple(g.frame_size),
            reference_id=segmenter.reference.id,
            weights=segmenter.weights.label,
            random_weights=segmenter.weights.is_random,
        )

    def __call__(self, result: Result) -> FrameMessage:
        """The message of a labelled frame, carrying its overlay as raw pixels and/or JPEG, whichever was made."""
        pred = result.prediction
        assert pred is not None
        return FrameMessage(
            frame_id=result.frame.id,
            mask=pred.mask,
            overlay=pred.overlay,
            overlay_jpeg=result.overlay_jpeg,
            timestamps_ns={k: v for k, v in result.stamps.items() if k != "published"},
            foreground_fraction=pred.foreground_fraction,
            confidence=pred.confidence,
            source_ts=result.frame.source_ts,
            dropped=result.dropped,
            **self.fixed,
        )


class _MessageOutput:
    """Sends the frame's message with its overlay in one encoding ("jpeg", "raw") or none."""

    lossless = False

    def __init__(self, encoding: str) -> None:
        if encoding not in ("jpeg", "raw", "none"):
            raise ValueError(f"overlay encoding {encoding!r} is not jpeg, raw or none")
        self.overlay = None if encoding == "none" else encoding
        self.encoding = encoding

    def message(self, result: Result) -> FrameMessage:
        msg = result.message
        assert msg is not None
        if self.overlay is None:
            return dataclasses.replace(msg, overlay=None, overlay_jpeg=None)
        return dataclasses.replace(msg, overlay_encoding=self.encoding)




class ZmqOutput(_MessageOutput):
    """Fan-out to any number of subscribers over PUB/SUB: never blocks, a slow subscriber only loses its own frames."""

    name = "zmq"

    def __init__(self, publisher: Publisher, encoding: str = "jpeg") -> None:
        super().__init__(encoding)
        self.publisher = publisher

    def write(self, result: Result) -> None:
        self.publisher.send(self.message(result))
        result.stamps["published"] = time.monotonic_ns()  # after the hand-over to ZeroMQ

    def close(self) -> None:
        self.publisher.close()


class LosslessOutput(_MessageOutput):
    """One PUSH consumer that gets every frame: in replay a slow consumer back-pressures the pipeline, for at most
    ``timeout`` s (then the frame is this output's failure and the run goes on). A consumer that let a timeout pass
    is stalled: frames fail at once, without waiting, until it takes one again, so a consumer that died or never
    came costs one timeout, not one per frame."""

    name = "lossless"
    lossless = True

    def __init__(self, sender: LosslessSender, encoding: str = "jpeg", timeout: float = 30.0, clock: StopClock | None = None) -> None:
        super().__init__(encoding)
        self.sender = sender
        self.timeout = timeout
        self.clock = clock or StopClock()  # the run's: once it stops, a send and the socket's linger end by its grace
        self.stalled = False

    def write(self, result: Result) -> None:
        try:
            self.sender.send(self.message(result), timeout=0.0 if self.stalled else self.timeout, clock=self.clock)
        except SendTimeout:
            self.stalled = True
            raise
        self.stalled = False

    def close(self) -> None:
        self.sender.close(int(self.clock.left() * 1000) if self.clock.stopping.is_set() else None)


class RecordOutput:
    """In-process recording (``run --record``): lossless by construction, finalised when the run closes."""

    name = "record"
    lossless = True
    overlay = "raw"  # the H.264 writer takes pixels

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def write(self, result: Result) -> None:
        assert result.message is not None
        self.recorder.write(result.message)

    def close(self) -> None:
        self.recorder.close()


class MaskFiles:
    """``DIR/<frame name>.png`` masks (0/255, frame resolution), each written atomically. The folder holds this run's
    masks only: a previous run's are removed when it opens (``run`` refuses them unless --overwrite)."""

    name = "masks"
    lossless = True
    overlay = None
    owned = ("*.png",)

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        for old in results_in(self.folder, self.owned):
            old.unlink()

    def write(self, result: Result) -> None:
        if result.prediction is not None:
            write_png_atomic(self.folder / f"{result.frame.name}.png", result.prediction.mask)

    def close(self) -> None:
        pass
