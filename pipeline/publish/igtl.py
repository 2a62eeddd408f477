"""``run --igtl``: each labelled frame as two OpenIGTLink IMAGE messages, for 3D Slicer (OpenIGTLinkIF) or PLUS.

Per frame, back to back: ``Image`` (the source frame, uint8 gray, source resolution) and ``Prediction`` (the bone
label map, same dims and matrix: SlicerIGT aigt's naming, "Image" -> "Prediction"). The label map is 0 background,
1 bone: a label map's values are label ids, and 1 is the first coloured entry of every Slicer colour table, so
"show as label map" and Segment Editor's import give one bone segment with no window/level to set (0/255 would be
label 255, a colour few tables define). Geometry: publish/igtl_image.py.

Clocks and ids, consistent with the ZeroMQ stream: the header timestamp is the frame's capture time (the
``timestamps_ns.captured`` of the ZeroMQ header, moved to the Unix clock). Header version 1 by default, which every
OpenIGTLink reader takes; with version 2 (OpenIGTLink 3's extended header) the metadata carry ``frame_id``,
``stream_id``, ``captured_ns`` (that same monotonic ns), ``source_ts``, the weights and ``random_weights``, and the
message id is the frame id (mod 2^32). Spacing: the frame's own (DICOM PixelSpacing,
an incoming IMAGE), else ``spacing_mm`` (``--spacing``), else 1.0 mm per pixel, said once.

Like the ZeroMQ publisher this output is lossy: it runs on its own worker, and a slow or absent client never holds
back inference (publish/igtl_server.py).
"""

from __future__ import annotations

import logging
import time

import numpy as np

from models.preprocess import to_gray
from pipeline.capture.frame import Frame
from pipeline.publish.igtl_image import DEFAULT_HEADER_VERSION, image_message
from pipeline.publish.igtl_server import IgtlServer
from pipeline.run import Result

log = logging.getLogger(__name__)

IMAGE_DEVICE = "Image"
PREDICTION_DEVICE = "Prediction"
BONE_LABEL = 1
RANDOM_NOTE = "RANDOM WEIGHTS: the label map checks plumbing and says nothing about bone"


class IgtlOutput:
    """Sends ``Image`` and ``Prediction`` for every frame to the clients of ``server``."""

    name = "igtl"
    lossless = False
    overlay = None  # it sends the frame and the label map, no overlay

    def __init__(self, server: IgtlServer, *, stream_id: str, weights: str, random_weights: bool, spacing_mm: float | None = None,
                 header_version: int = DEFAULT_HEADER_VERSION) -> None:
        self.server = server
        self.spacing_mm = spacing_mm
        self.header_version = header_version
        self.fixed = {"stream_id": stream_id, "weights": weights, "random_weights": str(random_weights).lower()}
        if random_weights:
            self.fixed["note"] = RANDOM_NOTE
        self._said: set[str] = set()

    def _spacing(self, frame: Frame) -> tuple[tuple[float, float], str]:
        """(row, column) mm per pixel and where it came from: the source, --spacing, or the 1.0 default (said once)."""
        if frame.spacing_mm is not None:
            if self.spacing_mm is not None and frame.spacing_mm != (self.spacing_mm, self.spacing_mm):
                self._once("ignored", "OpenIGTLink: the source states %.6g x %.6g mm per pixel; --spacing %g ignored", *frame.spacing_mm, self.spacing_mm)
            return frame.spacing_mm, "source"
        if self.spacing_mm is not None:
            return (self.spacing_mm, self.spacing_mm), "option"
        self._once("default", "OpenIGTLink: the source states no pixel spacing and --spacing is not given: sending 1.0 mm per pixel")
        return (1.0, 1.0), "default"

    def _once(self, key: str, message: str, *args: object) -> None:
        if key not in self._said:
            self._said.add(key)
            log.warning(message, *args)

    def write(self, result: Result) -> None:
        if not self.server.clients:  # nothing is packed for no one
            return
        frame, pred = result.frame, result.prediction
        assert pred is not None
        spacing, spacing_from = self._spacing(frame)
        captured_unix_s = (time.time_ns() - (time.monotonic_ns() - frame.capture_ns)) / 1e9
        metadata = {
            **self.fixed,
            "frame_id": str(frame.id),
            "captured_ns": str(frame.capture_ns),
            "source_ts": "" if frame.source_ts is None else repr(frame.source_ts),
            "spacing_from": spacing_from,
        }
        image = np.ascontiguousarray(to_gray(frame.image, frame.name))
        label = np.where(np.asarray(pred.mask) > 0, BONE_LABEL, 0).astype(np.uint8)
        self.server.send(
            image_message(image, IMAGE_DEVICE, spacing, captured_unix_s, frame.id, metadata, self.header_version)
            + image_message(label, PREDICTION_DEVICE, spacing, captured_unix_s, frame.id, metadata, self.header_version)
        )

    def close(self) -> None:
        skipped = self.server.skipped
        self.server.close()
        if skipped:
            log.warning("OpenIGTLink: %d frames skipped for clients slower than the stream", skipped)
