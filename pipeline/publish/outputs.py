"""Pipeline outputs: each takes a finished Result on the publish thread, in frame order."""

from __future__ import annotations

import time
from pathlib import Path

from pipeline.publish.files import write_png_atomic
from pipeline.publish.message import FrameMessage
from pipeline.publish.publisher import LosslessSender, Publisher
from pipeline.publish.recorder import Recorder
from pipeline.run import Result
from pipeline.segment.segmenter import BoneSegmenter


class MessageFactory:
    """Result -> FrameMessage with the stream's fixed fields (ROI, reference, weights) filled in once."""

    def __init__(self, segmenter: BoneSegmenter, stream_id: str, *, overlay_encoding: str = "jpeg") -> None:
        g = segmenter.geometry
        self.fixed = dict(
            stream_id=stream_id,
            roi=tuple(g.roi),
            frame_size=tuple(g.frame_size),
            reference_id=segmenter.reference.id,
            weights=segmenter.weights.label,
            random_weights=segmenter.weights.is_random,
            overlay_encoding="jpeg" if overlay_encoding == "none" else overlay_encoding,
        )
        self.with_overlay = overlay_encoding != "none"

    def __call__(self, result: Result) -> FrameMessage:
        pred = result.prediction
        assert pred is not None
        return FrameMessage(
            frame_id=result.frame.id,
            mask=pred.mask,
            overlay=result.overlay if self.with_overlay else None,
            timestamps_ns={k: v for k, v in result.stamps.items() if k != "published"},
            foreground_fraction=pred.foreground_fraction,
            confidence=pred.confidence,
            source_ts=result.frame.source_ts,
            dropped=result.dropped,
            **self.fixed,
        )


class ZmqOutput:
    """Fan-out to any number of subscribers over PUB/SUB: never blocks, a slow subscriber only loses its own frames."""

    name = "zmq"

    def __init__(self, publisher: Publisher, make: MessageFactory) -> None:
        self.publisher = publisher
        self.make = make

    def write(self, result: Result) -> None:
        self.publisher.send(self.make(result))
        result.stamps["published"] = time.monotonic_ns()  # after encoding and hand-over to ZeroMQ

    def close(self) -> None:
        self.publisher.close()


class LosslessOutput:
    """One PUSH consumer that gets every frame: in replay a slow consumer back-pressures the pipeline."""

    name = "lossless"

    def __init__(self, sender: LosslessSender, make: MessageFactory, timeout: float | None = None) -> None:
        self.sender = sender
        self.make = make
        self.timeout = timeout

    def write(self, result: Result) -> None:
        self.sender.send(self.make(result), timeout=self.timeout)

    def close(self) -> None:
        self.sender.close()


class RecordOutput:
    """In-process recording (``run --record``): lossless by construction, finalised when the run closes."""

    name = "record"

    def __init__(self, recorder: Recorder, make: MessageFactory) -> None:
        self.recorder = recorder
        self.make = make

    def write(self, result: Result) -> None:
        self.recorder.write(self.make(result))

    def close(self) -> None:
        self.recorder.close()


class MaskFiles:
    """``DIR/<frame name>.png`` masks (0/255, frame resolution), each written atomically."""

    name = "masks"

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def write(self, result: Result) -> None:
        if result.prediction is not None:
            write_png_atomic(self.folder / f"{result.frame.name}.png", result.prediction.mask)

    def close(self) -> None:
        pass
